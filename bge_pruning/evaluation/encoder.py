"""``EmbeddingModel``: a model directory (HF + sentence-transformers layout) turned into an encoder.

The directory holds ``config.json``, the weights, tokenizer files and, as sentence-transformers writes
them, ``modules.json`` + ``1_Pooling/config.json`` (+ a ``Normalize`` module) and optionally BGE-M3's
head files ``sparse_linear.pt`` / ``colbert_linear.pt``. The dense vector follows the Pooling config
(CLS or mean) and is L2-normalised when ``modules.json`` lists a Normalize module; without
``modules.json`` the BGE-M3 default is used (CLS, normalised). Every head computation goes through
:mod:`bge_pruning.models.heads`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from bge_pruning.errors import ModelDirError
from bge_pruning.models.heads import (
    COLBERT_FILE,
    SPARSE_FILE,
    ColbertHead,
    SparseHead,
    dense_embedding,
    lexical_weights,
    special_token_ids,
)

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model",
                   "spiece.model", "vocab.json")
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
UNSUPPORTED_POOLING = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path}: cannot read JSON ({e})") from None


def read_st_layout(model_dir: Path) -> tuple[str | None, bool | None, int | None, bool]:
    """(pooling, normalize, max_seq_length, do_lower_case) from the sentence-transformers files.

    ``pooling``/``normalize`` are None when the directory has no ``modules.json``.
    """
    pooling = normalize = None
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        modules = _read_json(modules_path)
        if not isinstance(modules, list):
            raise ModelDirError(f"{modules_path}: expected a list of modules")
        normalize = False
        for m in modules:
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            if kind not in SUPPORTED_MODULES:
                raise ModelDirError(f"{modules_path}: module {m.get('type')!r} is not supported; "
                                    f"supported: {', '.join(SUPPORTED_MODULES)}")
            if kind == "Normalize":
                normalize = True
            elif kind == "Pooling":
                cfg_path = model_dir / str(m.get("path", "")) / "config.json"
                if not cfg_path.is_file():
                    raise ModelDirError(f"{cfg_path}: pooling config listed in {modules_path} is missing")
                pooling = _pooling_mode(cfg_path, _read_json(cfg_path))
    max_seq_length = None
    do_lower_case = False
    sbert_path = model_dir / "sentence_bert_config.json"
    if sbert_path.is_file():
        sbert = _read_json(sbert_path)
        max_seq_length = sbert.get("max_seq_length")
        do_lower_case = bool(sbert.get("do_lower_case", False))
        if max_seq_length is None and "modality_config" in sbert:
            # sentence-transformers 6 keeps the limit as the tokenizer's model_max_length.
            tok_path = model_dir / "tokenizer_config.json"
            limit = _read_json(tok_path).get("model_max_length") if tok_path.is_file() else None
            max_seq_length = limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None
    return pooling, normalize, max_seq_length, do_lower_case


def _pooling_mode(path: Path, cfg: dict) -> str:
    if "pooling_mode" in cfg:  # sentence-transformers 6: one string instead of the pooling_mode_* flags
        mode = cfg["pooling_mode"]
        if mode not in ("cls", "mean"):
            raise ModelDirError(f"{path}: pooling_mode must be 'cls' or 'mean', got {mode!r}")
        return mode
    cls_ = bool(cfg.get("pooling_mode_cls_token", False))
    mean = bool(cfg.get("pooling_mode_mean_tokens", False))
    others = [k for k in UNSUPPORTED_POOLING if cfg.get(k)]
    if others or cls_ == mean:
        raise ModelDirError(f"{path}: exactly one of pooling_mode_cls_token / pooling_mode_mean_tokens must be "
                            f"true (and no other mode); got cls={cls_}, mean={mean}, others={others}")
    return "cls" if cls_ else "mean"


def _load_linear_state(path: Path, head: torch.nn.Module) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / not a state dict
        raise ModelDirError(f"{path}: cannot load head weights ({type(e).__name__}: {e})") from None
    try:
        head.linear.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelDirError(f"{path}: head weights do not fit Linear{tuple(head.linear.weight.shape[::-1])}: "
                            f"{e}") from None


def resolve_model_dir(name: str) -> str:
    """A local directory for ``name``: a path, ``embedded:all-MiniLM-L6-v2``, or a hub id (downloaded)."""
    from bge_pruning.models.loading import is_hub_id, resolve_model_path

    name = resolve_model_path(name)
    if is_hub_id(name):
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(name)
        except Exception as e:  # offline, unknown repo, ...
            raise ModelDirError(f"{name}: not a local directory, and it could not be downloaded from the Hugging "
                                f"Face hub ({str(e).splitlines()[0]})") from None
    return name


class EmbeddingModel:
    """Dense (+ sparse / colbert when the head files exist) encoder of a model directory."""

    def __init__(self, model, tokenizer, *, path: Path | str | None = None, pooling: str = "cls",
                 normalize: bool = True, max_length: int = 512, do_lower_case: bool = False,
                 sparse_head: SparseHead | None = None, colbert_head: ColbertHead | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.path = Path(path) if path is not None else None
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = int(max_length)
        self.do_lower_case = do_lower_case
        self.device = torch.device(device)
        self.sparse_head = sparse_head.eval() if sparse_head is not None else None
        self.colbert_head = colbert_head.eval() if colbert_head is not None else None
        self._unused_ids = special_token_ids(tokenizer)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, path: str | Path, device: str = "cpu", max_length: int = 512, *,
                 pooling: str | None = None, normalize: bool | None = None,
                 torch_dtype: torch.dtype | None = None, trust_remote_code: bool = False,
                 opt_in: str = "pass --trust-remote-code", onnx_file: str | None = None) -> EmbeddingModel:
        """Load ``path``. Its modeling code runs only when it is this project's export (``bge_pruning.trust``)
        or ``trust_remote_code`` is given; otherwise a directory asking for remote code is refused.

        ``max_length`` is capped by ``sentence_bert_config.json``'s ``max_seq_length`` and the tokenizer's
        ``model_max_length``, as sentence-transformers does. ``pooling``/``normalize`` override the
        directory's sentence-transformers config. ``onnx_file`` (relative to ``path``, e.g. ``onnx/model.onnx``)
        encodes with that ONNX graph on onnxruntime's CPU provider instead of the torch weights (no modeling code
        runs); the tokenizer, pooling and head files are the directory's as for torch.
        """
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(resolve_model_dir(str(path))).expanduser()
        if not model_dir.exists():
            raise ModelDirError(f"{model_dir}: model directory not found")
        if not model_dir.is_dir():
            raise ModelDirError(f"{model_dir}: not a directory (expected a model directory with config.json)")
        if not (model_dir / "config.json").is_file():
            raise ModelDirError(f"{model_dir}: no config.json; not a Hugging Face model directory")
        if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
            raise ModelDirError(f"{model_dir}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")

        st_pooling, st_normalize, max_seq, lower = read_st_layout(model_dir)
        pooling = pooling or st_pooling or "cls"
        normalize = normalize if normalize is not None else (True if st_normalize is None else st_normalize)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")

        from ..trust import resolve_trust

        trust = resolve_trust(str(model_dir), trust_remote_code, str(path), opt_in)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust)
        except Exception as e:
            raise ModelDirError(f"{model_dir}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
        kwargs: dict = {"trust_remote_code": trust}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        if onnx_file is not None:
            model = _load_onnx(model_dir, onnx_file, device)
        else:
            try:
                model = AutoModel.from_pretrained(str(model_dir), **kwargs)
            except Exception as e:
                raise ModelDirError(f"{model_dir}: cannot load the model ({type(e).__name__}: {e})") from None

        limit = int(max_length)
        if max_seq:
            limit = min(limit, int(max_seq))
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limit = min(limit, tok_max)

        hidden = int(model.config.hidden_size)
        sparse = colbert = None
        if (model_dir / SPARSE_FILE).is_file():
            sparse = SparseHead(hidden)
            _load_linear_state(model_dir / SPARSE_FILE, sparse)
        if (model_dir / COLBERT_FILE).is_file():
            state_shape = _weight_shape(model_dir / COLBERT_FILE)
            colbert = ColbertHead(hidden, state_shape[0] if state_shape else None)
            _load_linear_state(model_dir / COLBERT_FILE, colbert)

        dev = torch.device(device)
        model.to(dev)
        # An OnnxEncoder has no parameters: its heads compute in float32, the dtype of the graph's output.
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        for head in (sparse, colbert):
            if head is not None:
                head.to(dev, dtype=dtype)
        logger.info("loaded %s: pooling=%s normalize=%s max_length=%d sparse=%s colbert=%s",
                    model_dir, pooling, normalize, limit, sparse is not None, colbert is not None)
        return cls(model, tokenizer, path=model_dir, pooling=pooling, normalize=normalize, max_length=limit,
                   do_lower_case=lower, sparse_head=sparse, colbert_head=colbert, device=dev)

    # ------------------------------------------------------------------ properties
    @property
    def has_sparse(self) -> bool:
        return self.sparse_head is not None

    @property
    def has_colbert(self) -> bool:
        return self.colbert_head is not None

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else type(self.model).__name__

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
        """Dense sentence vectors, float32 [N, d]."""
        return self.encode_all(texts, batch_size, show_progress, sparse=False, colbert=False)["dense"]

    def encode_sparse(self, texts: Sequence[str], batch_size: int = 32,
                      show_progress: bool = True) -> list[dict[int, float]]:
        """Lexical weights ``{token_id: weight}`` per text (needs ``sparse_linear.pt``)."""
        if not self.has_sparse:
            raise ValueError(f"{self.path}: no {SPARSE_FILE}; this model has no sparse head")
        return self.encode_all(texts, batch_size, show_progress, dense=False, colbert=False)["sparse"]

    def encode_colbert(self, texts: Sequence[str], batch_size: int = 32,
                       show_progress: bool = True) -> list[np.ndarray]:
        """Per-text multi-vectors [T_real - 1, d] (CLS dropped, L2-normalised; needs ``colbert_linear.pt``)."""
        if not self.has_colbert:
            raise ValueError(f"{self.path}: no {COLBERT_FILE}; this model has no colbert head")
        return self.encode_all(texts, batch_size, show_progress, dense=False, sparse=False)["colbert"]

    def encode_all(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = True, *,
                   dense: bool = True, sparse: bool | None = None, colbert: bool | None = None) -> dict:
        """Every requested output in one forward pass per batch.

        ``sparse``/``colbert`` default to "when the head exists". Returns a dict with keys among
        ``dense`` (np.ndarray [N, d]), ``sparse`` (list of dicts), ``colbert`` (list of arrays).
        """
        from tqdm.auto import tqdm

        texts = _check_texts(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        sparse = self.has_sparse if sparse is None else sparse
        colbert = self.has_colbert if colbert is None else colbert
        if sparse and not self.has_sparse:
            raise ValueError(f"{self.path}: no {SPARSE_FILE}; this model has no sparse head")
        if colbert and not self.has_colbert:
            raise ValueError(f"{self.path}: no {COLBERT_FILE}; this model has no colbert head")

        n = len(texts)
        # Longest first (as sentence-transformers): less padding per batch; results put back in input order.
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        dense_out = np.zeros((n, self.dim), dtype=np.float32) if dense else None
        sparse_out: list = [None] * n if sparse else None
        colbert_out: list = [None] * n if colbert else None

        bar = tqdm(total=n, desc=f"encoding ({self.name})", unit="text", disable=not show_progress or n == 0,
                   leave=False)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                hidden, mask, input_ids = self._forward([texts[i] for i in idx])
                if dense:
                    vecs = dense_embedding(hidden, mask, self.pooling, self.normalize)
                    dense_out[idx] = vecs.float().cpu().numpy()
                if sparse:
                    weights = self.sparse_head(hidden)
                    for i, d in zip(idx, lexical_weights(weights, input_ids, self._unused_ids)):
                        sparse_out[i] = d
                if colbert:
                    vecs = self.colbert_head(hidden, mask).float().cpu().numpy()
                    lengths = mask[:, 1:].sum(-1).cpu().tolist()
                    for row, (i, t) in enumerate(zip(idx, lengths)):
                        colbert_out[i] = vecs[row, : int(t)].copy()
                bar.update(len(idx))
        bar.close()
        out: dict = {}
        if dense:
            out["dense"] = dense_out
        if sparse:
            out["sparse"] = sparse_out
        if colbert:
            out["colbert"] = colbert_out
        return out

    def _forward(self, batch: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.do_lower_case:
            batch = [t.lower() for t in batch]
        enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.model(**enc)
        if isinstance(out, torch.Tensor):  # a module that returns the last hidden state (the masked backbone)
            hidden = out
        else:
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden, enc["attention_mask"], enc["input_ids"]


def _load_onnx(model_dir: Path, onnx_file: str, device: str | torch.device):
    from .onnx_model import OnnxEncoder

    if torch.device(device).type != "cpu":
        raise ModelDirError(f"{model_dir / onnx_file}: ONNX models run on onnxruntime's CPU provider; use --device cpu")
    path = model_dir / onnx_file
    if not path.is_file():
        found = sorted(str(p.relative_to(model_dir)) for p in model_dir.glob("onnx/*.onnx"))
        raise ModelDirError(f"{path}: no such ONNX file" + (f" (the directory has {', '.join(found)})" if found
                                                           else "; export with --onnx first"))
    hidden = _read_json(model_dir / "config.json").get("hidden_size")
    try:
        return OnnxEncoder(path, int(hidden))
    except Exception as e:
        raise ModelDirError(f"{path}: cannot load the ONNX model ({type(e).__name__}: {e})") from None


def _weight_shape(path: Path) -> tuple[int, ...] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return tuple(state["weight"].shape)
    except Exception:
        return None  # _load_linear_state reports the problem with the file's path


def _check_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string (wrap it: [text])")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(t).__name__}")
    return texts
