"""``EmbeddingModel``: a model directory (HF + sentence-transformers layout) turned into an encoder.

The directory holds ``config.json``, the weights, tokenizer files and, as sentence-transformers writes
them, ``modules.json`` + ``1_Pooling/config.json`` (+ a ``Normalize`` module) and optionally BGE-M3's
head files ``sparse_linear.pt`` / ``colbert_linear.pt``.

Dense vectors are ``sentence_transformers.SentenceTransformer.encode``'s: the model is a SentenceTransformer of
the directory's modules, sentence-transformers' ``Transformer`` (or :class:`InMemoryTransformer` for a model
object already loaded: an ONNX graph, the backbone being trained), its ``Pooling`` (CLS or mean) and its
``Normalize`` when ``modules.json`` lists one; without ``modules.json`` the BGE-M3 default is used (CLS,
normalised). BGE-M3's sparse and colbert heads, which no library computes, read the token states of the same
pass (``encode(output_value=None)``) through :mod:`bge_pruning.models.heads`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers.base.modules import InputModule

from bge_pruning.errors import ModelDirError
from bge_pruning.models.heads import (
    COLBERT_FILE,
    SPARSE_FILE,
    ColbertHead,
    SparseHead,
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


class InMemoryTransformer(InputModule):
    """A sentence-transformers input module around a model object that is already loaded.

    sentence-transformers' ``Transformer`` always loads its model from a path; this module takes ``model`` as it
    is: anything called as ``model(input_ids, attention_mask[, token_type_ids])`` that returns the last hidden
    state (a tensor, or an output with ``last_hidden_state``), such as ``MaskedBGEM3Backbone`` or
    :class:`~bge_pruning.evaluation.onnx_model.OnnxEncoder`. It writes ``token_embeddings`` for ST's ``Pooling``.

    Args:
        model: the encoder.
        tokenizer: its Hugging Face tokenizer.
        max_seq_length: longer texts are truncated to this many tokens.
        do_lower_case: lower-case the texts first (``sentence_bert_config.json``'s flag).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_seq_length: int,
                 do_lower_case: bool = False) -> None:
        super().__init__()
        self.auto_model = model
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        self.do_lower_case = do_lower_case

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        texts = [(prompt or "") + t for t in inputs]
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                   return_tensors="pt"))

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = self.auto_model(**{k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                                 if k in features})
        features["token_embeddings"] = out if isinstance(out, torch.Tensor) else out.last_hidden_state
        return features

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("InMemoryTransformer is for evaluation only; export the model to save it")


# Texts per SentenceTransformer.encode call, in batches: the token states it returns with output_value=None stay on
# the device until the heads have read them, so a large corpus goes through in slices.
CHUNK_BATCHES = 16


class EmbeddingModel:
    """Dense (+ sparse / colbert when the head files exist) encoder of a model directory.

    Args:
        st: the SentenceTransformer that computes the dense vectors (and the token states the heads read).
        path: the model directory, when there is one.
        pooling: ``cls`` or ``mean``, the Pooling module's mode (for reports).
        normalize: whether the dense vectors are L2-normalised (a Normalize module).
        sparse_head, colbert_head: BGE-M3's heads, on the SentenceTransformer's device.
    """

    def __init__(self, st: Any, *, path: Path | str | None = None, pooling: str = "cls", normalize: bool = True,
                 sparse_head: SparseHead | None = None, colbert_head: ColbertHead | None = None) -> None:
        self.st = st.eval()
        self.model = st[0].auto_model
        self.tokenizer = st.tokenizer
        self.path = Path(path) if path is not None else None
        self.pooling = pooling
        self.normalize = normalize
        self.sparse_head = sparse_head.eval() if sparse_head is not None else None
        self.colbert_head = colbert_head.eval() if colbert_head is not None else None
        self._unused_ids = special_token_ids(self.tokenizer)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, *, pooling: str = "cls", normalize: bool = True,
                   max_length: int = 512, device: str | torch.device = "cpu") -> EmbeddingModel:
        """A dense encoder of a model object already loaded (see :class:`InMemoryTransformer`), e.g. the backbone
        during training."""
        first = InMemoryTransformer(model, tokenizer, max_length)
        return cls(_sentence_transformer(first, int(model.config.hidden_size), pooling, normalize, device),
                   pooling=pooling, normalize=normalize)

    @classmethod
    def from_dir(cls, path: str | Path, device: str = "cpu", max_length: int = 512, *,
                 trust_remote_code: bool = False, onnx_file: str | None = None) -> EmbeddingModel:
        """Load ``path``. Its modeling code runs only when it is this project's export (``bge_pruning.trust``)
        or ``trust_remote_code`` is given; otherwise a directory asking for remote code is refused.

        ``max_length`` is capped by ``sentence_bert_config.json``'s ``max_seq_length`` and the tokenizer's
        ``model_max_length``, as sentence-transformers does. ``onnx_file`` (relative to ``path``, e.g.
        ``onnx/model.onnx``) encodes with that ONNX graph on onnxruntime's CPU provider instead of the torch
        weights (no modeling code runs); the tokenizer, pooling and head files are the directory's as for torch.
        """
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
        pooling = st_pooling or "cls"
        normalize = True if st_normalize is None else st_normalize

        from ..trust import resolve_trust

        trust = resolve_trust(str(model_dir), trust_remote_code, str(path), "pass --trust-remote-code")
        if onnx_file is not None:
            first = _onnx_input(model_dir, onnx_file, device, trust, int(max_length), max_seq, lower)
        else:
            from sentence_transformers.base.modules import Transformer

            remote = {"trust_remote_code": trust}
            try:
                first = Transformer(str(model_dir), model_kwargs=remote, processor_kwargs=dict(remote),
                                    config_kwargs=dict(remote), max_seq_length=max_seq, do_lower_case=lower)
            except Exception as e:
                raise ModelDirError(f"{model_dir}: cannot load the model ({type(e).__name__}: {e})") from None
            # ST's own limit (sentence_bert_config.json, else the tokenizer's capped by the position embeddings)
            first.max_seq_length = min(int(max_length), first.max_seq_length)
        hidden = int(first.auto_model.config.hidden_size)

        sparse = colbert = None
        if (model_dir / SPARSE_FILE).is_file():
            sparse = SparseHead(hidden)
            _load_linear_state(model_dir / SPARSE_FILE, sparse)
        if (model_dir / COLBERT_FILE).is_file():
            state_shape = _weight_shape(model_dir / COLBERT_FILE)
            colbert = ColbertHead(hidden, state_shape[0] if state_shape else None)
            _load_linear_state(model_dir / COLBERT_FILE, colbert)

        st = _sentence_transformer(first, hidden, pooling, normalize, device)
        # An OnnxEncoder has no parameters: its heads compute in float32, the dtype of the graph's output.
        dtype = next((p.dtype for p in first.auto_model.parameters()), torch.float32)
        for head in (sparse, colbert):
            if head is not None:
                head.to(st.device, dtype=dtype)
        logger.info("loaded %s: pooling=%s normalize=%s max_length=%d sparse=%s colbert=%s",
                    model_dir, pooling, normalize, st.max_seq_length, sparse is not None, colbert is not None)
        return cls(st, path=model_dir, pooling=pooling, normalize=normalize, sparse_head=sparse, colbert_head=colbert)

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
    def max_length(self) -> int:
        return int(self.st.max_seq_length)

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
        """Every requested output from one ``SentenceTransformer.encode`` pass.

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
        # Longest first, ST's own order, kept across the slices so that every batch is the one ST would make.
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        dense_out = np.zeros((n, self.dim), dtype=np.float32)
        sparse_out: list = [None] * n
        colbert_out: list = [None] * n
        step = batch_size * CHUNK_BATCHES
        bar = tqdm(total=n, desc=f"encoding ({self.name})", unit="text", disable=not show_progress or n == 0,
                   leave=False)
        for start in range(0, n, step):
            idx = order[start:start + step]
            chunk = [texts[i] for i in idx]
            if not (sparse or colbert):
                dense_out[idx] = self.st.encode(chunk, batch_size=batch_size, show_progress_bar=False)
                bar.update(len(idx))
                continue
            rows = self.st.encode(chunk, batch_size=batch_size, show_progress_bar=False, output_value=None)
            with torch.inference_mode():
                for i, row in zip(idx, rows):
                    dense_out[i] = row["sentence_embedding"].float().cpu().numpy()
                    real = int(row["attention_mask"].sum())  # right padding: the real tokens come first
                    hidden = row["token_embeddings"][None, :real]
                    if sparse:
                        sparse_out[i] = lexical_weights(self.sparse_head(hidden), row["input_ids"][None, :real],
                                                        self._unused_ids)[0]
                    if colbert:
                        vecs = self.colbert_head(hidden, row["attention_mask"][None, :real])
                        colbert_out[i] = vecs[0].float().cpu().numpy()
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


def _sentence_transformer(first: InputModule, hidden: int, pooling: str, normalize: bool,
                          device: str | torch.device) -> Any:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling

    modules = [first, Pooling(hidden, pooling_mode=pooling)] + ([Normalize()] if normalize else [])
    return SentenceTransformer(modules=modules, device=str(device))


def _onnx_input(model_dir: Path, onnx_file: str, device: str | torch.device, trust: bool, max_length: int,
                max_seq: int | None, lower: bool) -> InMemoryTransformer:
    """The directory's tokenizer and ONNX graph as a SentenceTransformer's first module (sentence-transformers'
    own ``backend="onnx"`` loads through optimum, which this stack cannot install)."""
    from transformers import AutoTokenizer

    from .onnx_model import OnnxEncoder

    if torch.device(device).type != "cpu":
        raise ModelDirError(f"{model_dir / onnx_file}: ONNX models run on onnxruntime's CPU provider; use --device cpu")
    path = model_dir / onnx_file
    if not path.is_file():
        found = sorted(str(p.relative_to(model_dir)) for p in model_dir.glob("onnx/*.onnx"))
        raise ModelDirError(f"{path}: no such ONNX file" + (f" (the directory has {', '.join(found)})" if found
                                                           else "; export with --onnx first"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust)
    except Exception as e:
        raise ModelDirError(f"{model_dir}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    hidden = _read_json(model_dir / "config.json").get("hidden_size")
    try:
        graph = OnnxEncoder(path, int(hidden))
    except Exception as e:
        raise ModelDirError(f"{path}: cannot load the ONNX model ({type(e).__name__}: {e})") from None
    return InMemoryTransformer(graph, tokenizer, min(max_length, max_seq or max_length, tokenizer.model_max_length),
                               lower)


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
