"""Export a (masked) pruned backbone as a HuggingFace / sentence-transformers / FlagEmbedding directory.

``export_pruned_model`` prunes a copy of the backbone with the deterministic masks, writes everything
into a temporary directory next to the target, reloads it with ``transformers.AutoModel`` and
requires that nothing is missing, unexpected or mismatched and that ``last_hidden_state`` equals the
masked backbone's on the real tokens of a probe batch; only then is the directory moved into place.
A failure removes the temporary directory, leaves the target untouched and raises ``ExportError``
naming the failed check.

Three layouts:

* nothing pruned inside the kept layers (all heads, one intermediate size): the stock
  ``BertModel`` / ``XLMRobertaModel`` / ``MPNetModel`` config, loadable without remote code;
* pruned heads or per-layer intermediate sizes: ``modeling_pruned.py`` is copied into the directory
  and ``config.json`` has the stock ``model_type`` with an ``auto_map`` (load with ``trust_remote_code=True``);
* ``vanilla=True``: pruned heads are zero-padded back to full width and intermediate sizes to the
  largest kept one (exactly the same outputs), so the stock class loads it; the padded parameters
  are counted in ``pruning_info.json``. MPNet's kept heads go back to their base slots, because a head's
  slot is the column of the shared relative-position bias it adds.
  A removed attention / FFN sublayer (``head_layer_z`` / ``mlp_z``
  = 0) has no such representation: the layers are post-LayerNorm, so a sublayer with zero weights computes
  LayerNorm(x), not x. Vanilla export of such a model is refused (``ExportError``); the custom layout
  (``attention_kept_per_layer`` / ``ffn_kept_per_layer`` in ``config.json``) exports it exactly.

``dtype`` (``float32`` by default, ``float16``, ``bfloat16``) is the dtype the weights and head files are saved
in. Pruning, mask folding and the reference stay float32; the reload check loads the saved file in its own
dtype and compares it with that float32 reference within the dtype's tolerance (``DEFAULT_ATOL``).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.families import family_of
from ..models.heads import COLBERT_FILE, POOLING_MODES, SPARSE_FILE
from ..paths import too_little_space, unwritable
from ..shapes import EncoderShape, count_params, kept_share
from ..vocab import write_wordpiece_vocab_txt
from . import modeling_pruned
from .install import OLD_MARK, TempExportDir, recover_leftovers, swap_into_place
from .model_card import hub_id
from .model_card import render as render_card
from .onnx_export import check_quantize, write_onnx
from .verify import (
    ExportError,
    check_close,
    check_head_file,
    check_loading_info,
    count_module_params,
    max_abs_diff_on_tokens,
)

MODELING_FILE = "modeling_pruned.py"
PRUNING_INFO_FILE = "pruning_info.json"
WEIGHTS_FILE = "model.safetensors"
ZS_KEYS = ("head_z", "intermediate_z", "layer_z", "head_layer_z", "mlp_z")
GATE_KEYS = ("layer_z", "head_layer_z", "mlp_z")  # binary per-layer gates around post-LN blocks

# The dtypes an export can be saved in (``export.dtype`` / ``--dtype``).
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Reload-check tolerance per saved dtype: max |hidden state - float32 reference| on the real tokens of the probe
# batch, the reloaded model computing in the saved dtype. The hidden states are post-LayerNorm outputs, O(1)
# (max |h| 6.7 on MiniLM, 3.9 on the tiny XLM-R); float32 differs only by summation order (<= 3.3e-6 measured).
# Measured on CPU (torch 2.7), default / vanilla layouts: float16 6.9e-3 / 8.4e-3 (MiniLM), 7.1e-3 (tiny XLM-R);
# bfloat16 6.6e-2 (MiniLM), 6.2e-2 (tiny XLM-R), i.e. one to two units of the dtype's rounding (2^-10, 2^-7)
# times the hidden-state scale. The tolerances are 3x the worst of these, and stay well below a real error:
# dropping any one kept layer moves the hidden states by >= 0.65 (3x the bfloat16, 26x the float16 tolerance),
# dropping one MiniLM head by >= 0.15 (caught in float16; bfloat16 is too coarse to see one head).
DEFAULT_ATOL = {"float32": 1e-4, "float16": 2.5e-2, "bfloat16": 2e-1}

DEFAULT_PROBE_TEXTS = (
    "Hello world.",
    "A man is playing a guitar on the street while people walk by.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "short",
    "The quick brown fox jumps over the lazy dog near the river bank in the early morning light, "
    "while the city slowly wakes up and the first buses leave the station.",
)

# Keys of pruning_info.json computed here; ``info`` may only add others (or override these two).
_INFO_OVERRIDABLE = ("base_model", "target_shape")

# Config keys that describe the source model/checkpoint rather than the exported one.
_CONFIG_DROP = ("architectures", "auto_map", "model_type", "_name_or_path", "name_or_path", "transformers_version",
                "heads_per_layer", "intermediate_per_layer", "attention_head_size", "has_pooler", "pruned_heads",
                "attention_kept_per_layer", "ffn_kept_per_layer",
                "dtype", "torch_dtype", "_commit_hash", "_attn_implementation_autoset",
                "relative_attention_heads_per_layer")


# ====================================================================== public API
def export_pruned_model(
    backbone: nn.Module,
    out_dir: str | Path,
    tokenizer: Any,
    zs: Mapping[str, Any] | None = None,
    *,
    pooling: str = "cls",
    normalize: bool = True,
    sparse_head: nn.Module | None = None,
    colbert_head: nn.Module | None = None,
    vanilla: bool = False,
    overwrite: bool = False,
    info: Mapping[str, Any] | None = None,
    probe_texts: Sequence[str] | None = None,
    atol: float | None = None,
    max_seq_length: int | None = None,
    dtype: str = "float32",
    onnx: bool = False,
    quantize: str | None = None,
) -> Path:
    """Prune a copy of ``backbone`` with ``zs`` and write a verified model directory to ``out_dir``.

    ``backbone`` is a ``MaskedBGEM3Backbone`` (not modified). ``zs`` holds deterministic masks
    (``head_z`` [L, H], ``intermediate_z`` [L, I], ``layer_z`` [L]); ``None`` exports the backbone as
    it is. ``max_seq_length`` is the source model's sentence-transformers limit (all-MiniLM-L6-v2's 256):
    kept so the export embeds long texts as the base did; without it, the tokenizer's and the position
    embeddings' limit. ``dtype`` (``EXPORT_DTYPES``) is the dtype the weights and head files are saved in;
    ``atol`` is the reload check's tolerance against the float32 masked model (default: ``DEFAULT_ATOL[dtype]``;
    the pruned-forward check, float32 on both sides, always uses the float32 one). ``onnx`` adds
    ``onnx/model.onnx`` checked with onnxruntime, ``quantize="int8"`` its int8 dynamic quantization
    (:mod:`bge_pruning.export.onnx_export`). Returns the final directory.
    Raises ``ExportError`` (target untouched, no temporary directory left) when an argument is invalid or any
    check fails.
    """
    out_dir = Path(os.path.abspath(os.fspath(out_dir)))
    dtype = export_dtype_name(dtype)
    quantize = check_quantize(quantize)
    if quantize is not None and not onnx:
        raise ExportError(f"quantize={quantize!r} quantizes the ONNX model: it needs onnx=True")
    if atol is None:
        atol = DEFAULT_ATOL[dtype]
    _check_arguments(backbone, tokenizer, pooling, sparse_head, colbert_head, atol)
    info_json = _jsonable(dict(info or {}), "info")
    _check_info_keys(info_json, pooling, normalize)
    _check_target(out_dir, overwrite)

    zs_rows = _validate_zs(zs, backbone)
    stage = "preparing the export"
    try:
        prepared = _prepare(backbone, tokenizer, zs_rows, probe_texts, vanilla,
                            atol if dtype == "float32" else DEFAULT_ATOL["float32"], EXPORT_DTYPES[dtype])
    except ExportError:
        raise
    except Exception as exc:  # an unexpected failure before anything is written
        raise ExportError(f"export to {out_dir} failed while {stage}: {type(exc).__name__}: {exc}") from exc
    probe, reference, kept, pruned_diff = (prepared["probe"], prepared["reference"], prepared["kept"],
                                           prepared["pruned_diff"])
    base_shape, pruned_shape, exported_shape = (prepared["base_shape"], prepared["pruned_shape"],
                                                prepared["exported_shape"])
    layout, state, config, torch_dtype, base_config = (prepared["layout"], prepared["state"], prepared["config"],
                                                       prepared["dtype"], prepared["base_config"])
    layout["source_dtype"] = str(prepared["source_dtype"]).replace("torch.", "")
    layout["dtype"] = dtype
    needed = sum(t.numel() * t.element_size() for t in state.values())
    del prepared

    created_parents = _make_parents(out_dir.parent)
    held: TempExportDir | None = None
    tmp: Path | None = None
    stage = "creating the temporary directory"
    try:
        _check_free_space(out_dir.parent, needed)
        held = TempExportDir(out_dir)
        tmp = held.path
        _apply_umask(tmp)

        stage = "writing the model files"
        _write_model_files(tmp, config, state, layout)
        state = None
        stage = "writing the tokenizer"
        tokenizer.save_pretrained(str(tmp))
        write_wordpiece_vocab_txt(tmp)
        stage = "writing the head files"
        heads_info = _write_heads(tmp, sparse_head, colbert_head, dtype)
        stage = "writing the sentence-transformers files"
        _write_sentence_transformers(tmp, base_config, tokenizer, pooling, normalize, max_seq_length)

        stage = "reloading the export"
        reload_diff, n_reloaded = _verify_reload(tmp, layout, probe, reference, torch_dtype,
                                                 next(backbone.parameters()).device, exported_shape, atol)
        stage = "checking the head files"
        if sparse_head is not None:
            check_head_file(tmp / SPARSE_FILE, sparse_head, "sparse head", dtype)
        if colbert_head is not None:
            check_head_file(tmp / COLBERT_FILE, colbert_head, "colbert head", dtype)

        onnx_info = None
        if onnx:
            stage = "writing the ONNX model"
            onnx_info = write_onnx(tmp, _onnx_probes(probe), trust_remote_code=layout["custom"], quantize=quantize)

        stage = "writing pruning_info.json"
        pruning_info = _pruning_info(
            backbone=backbone, base_shape=base_shape, pruned_shape=pruned_shape, exported_shape=exported_shape,
            kept=kept, layout=layout, pooling=pooling, normalize=normalize, heads_info=heads_info,
            verification={"dtype": dtype, "max_abs_diff": reload_diff, "pruned_forward_max_abs_diff": pruned_diff,
                          "atol": atol,
                          "probe_texts": len(probe["input_ids"]),
                          "real_tokens": int(probe["attention_mask"].sum())},
            info=info_json)
        counts = pruning_info["params"]
        if counts["exported"]["total"] != n_reloaded:
            raise ExportError(f"parameter count check failed: count_params says {counts['exported']['total']}, "
                              f"the reloaded model has {n_reloaded}")
        pruning_info["base_model_hub_id"] = hub_id(pruning_info.get("base_model"))
        if onnx_info is not None:
            pruning_info["onnx"] = onnx_info
        (tmp / PRUNING_INFO_FILE).write_text(json.dumps(pruning_info, indent=2) + "\n")
        stage = "writing the model card"
        (tmp / "README.md").write_text(render_card(pruning_info, _source_dir(pruning_info.get("base_model"))),
                                       encoding="utf-8")
        _apply_umask(tmp)

        stage = "moving the export into place"
        _install(held, out_dir, overwrite)
        held = None
    except BaseException as exc:
        if held is not None:
            held.release(remove=True)
        for parent in reversed(created_parents):
            try:
                parent.rmdir()
            except OSError:
                pass
        if isinstance(exc, ExportError) or not isinstance(exc, Exception):
            raise
        raise ExportError(f"export to {out_dir} failed while {stage}: {type(exc).__name__}: {exc}") from exc
    return out_dir


def _prepare(backbone, tokenizer, zs_rows, probe_texts, vanilla: bool, atol: float,
             dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Reference output, pruned copy (checked against it), export layout, state dict and config.

    Everything is computed on a float32 copy (the backbone itself is never touched): folding soft mask
    values into half-precision weights would round them twice, and a half-precision reference would hide
    real differences behind rounding noise. Only the finished state dict is cast to ``dtype`` (the saved
    weights are then the float32 pruned weights rounded once).
    """
    texts = list(probe_texts) if probe_texts is not None else list(DEFAULT_PROBE_TEXTS)
    probe = _probe_batch(tokenizer, backbone, texts)
    source_dtype = next(backbone.parameters()).dtype
    work = copy.deepcopy(backbone).float()
    base_shape = work.shape
    # Reference: the masked (unpruned) model in eval mode.
    reference = _forward_masked(work, probe, zs_rows)

    # Prune and check the plain forward against the reference before anything is written.
    try:
        if zs_rows is not None:
            kept = work.prune_params(zs_rows)
        else:
            kept = {"kept_layers": list(range(len(work.encoder.layer))),
                    "kept_heads": [list(range(h)) for h in work.shape.heads_per_layer]}
    except (ValueError, RuntimeError, IndexError) as exc:
        raise ExportError(f"prune_params failed: {exc}") from exc
    pruned_diff = max_abs_diff_on_tokens(_forward_masked(work, probe, None), reference, probe["attention_mask"])
    check_close("pruned-forward check (physically pruned copy vs masked backbone)", pruned_diff, atol)

    layout = _choose_layout(work, vanilla)
    state, exported_shape = _export_state_dict(work, vanilla)
    if dtype != torch.float32:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return {"probe": probe, "reference": reference, "kept": kept, "pruned_diff": pruned_diff,
            "base_shape": base_shape, "pruned_shape": work.shape, "exported_shape": exported_shape,
            "layout": layout, "state": state, "config": _build_config(work, exported_shape, layout, dtype),
            "dtype": dtype, "source_dtype": source_dtype, "base_config": work.config}


def _onnx_probes(probe: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The probe batch (padded: traced) and its first text alone at its real length (another shape, no
    padding), so the ONNX check runs both sides of the mask code's branches and both dynamic axes."""
    n = int(probe["attention_mask"][0].sum())
    return [dict(probe), {k: v[:1, :n] for k, v in probe.items()}]


def export_composer_model(model: Any, out_dir: str | Path, vanilla: bool = False, overwrite: bool = False,
                          dtype: str = "float32", onnx: bool = False, quantize: str | None = None) -> Path:
    """Export a trained ``ComposerBGEM3`` (backbone, L0 masks, heads, pooling, tokenizer, export_info), its weights
    saved in ``dtype`` (``EXPORT_DTYPES``), with the ONNX model when ``onnx`` (int8 too with ``quantize``)."""
    missing = [a for a in ("backbone", "l0_module", "sparse_head", "colbert_head", "pooling", "normalize",
                           "tokenizer", "export_info") if not hasattr(model, a)]
    if missing:
        raise ExportError(f"the model to export lacks attributes {missing} (expected a ComposerBGEM3)")
    zs = model.l0_module.deterministic_zs() if model.l0_module is not None else None
    info = model.export_info() or {}
    if not isinstance(info, Mapping):
        raise ExportError(f"model.export_info() must return a dict, got {type(info).__name__}")
    return export_pruned_model(
        model.backbone, out_dir, model.tokenizer, zs,
        pooling=model.pooling, normalize=bool(model.normalize),
        sparse_head=model.sparse_head, colbert_head=model.colbert_head,
        vanilla=vanilla, overwrite=overwrite, info=info, max_seq_length=getattr(model, "max_seq_length", None),
        dtype=dtype, onnx=onnx, quantize=quantize)


def check_export_target(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Raise ``ExportError`` now if ``out_dir`` could not be written (e.g. before loading a large checkpoint)."""
    out_dir = Path(os.path.abspath(os.fspath(out_dir)))
    _check_target(out_dir, overwrite)
    _check_writable(out_dir.parent)
    return out_dir


def export_dtype_name(dtype: Any) -> str:
    """``dtype`` (a name of ``EXPORT_DTYPES`` or the torch dtype) as its name; ``ExportError`` listing the choices
    for anything else."""
    for name, value in EXPORT_DTYPES.items():
        if dtype == name or dtype is value:
            return name
    raise ExportError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")


def modeling_source() -> str:
    """Text of the modeling file copied into custom-class exports."""
    return Path(modeling_pruned.__file__).read_text()


# ====================================================================== argument checks
def _check_arguments(backbone, tokenizer, pooling, sparse_head, colbert_head, atol) -> None:
    for attr in ("prune_params", "shape", "encoder", "config"):
        if not hasattr(backbone, attr):
            raise ExportError(f"backbone must be a MaskedBGEM3Backbone (no attribute {attr!r})")
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        raise ExportError("tokenizer must be a HuggingFace tokenizer (it is saved into the export)")
    if pooling not in POOLING_MODES:
        raise ExportError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if not (isinstance(atol, (int, float)) and atol > 0):
        raise ExportError(f"atol must be a positive number, got {atol!r}")
    d = backbone.config.hidden_size
    for name, head, out in (("sparse_head", sparse_head, 1), ("colbert_head", colbert_head, None)):
        if head is None:
            continue
        linear = getattr(head, "linear", None)
        if not isinstance(linear, nn.Linear) or linear.bias is None:
            raise ExportError(f"{name} must have a .linear nn.Linear with bias (FlagEmbedding's layout)")
        if linear.in_features != d:
            raise ExportError(f"{name}.linear takes {linear.in_features} features, the backbone's hidden size is {d}")
        if out is not None and linear.out_features != out:
            raise ExportError(f"{name}.linear must have {out} output, has {linear.out_features}")
    if (sparse_head is None) != (colbert_head is None):
        warnings.warn("only one of sparse_head / colbert_head is exported: FlagEmbedding's BGEM3FlagModel loads "
                      f"{SPARSE_FILE} and {COLBERT_FILE} only when BOTH exist and otherwise initialises both "
                      "randomly", stacklevel=3)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse targets whose replacement could lose data; called before any work is done. First restores or
    removes what an interrupted export left beside ``out_dir`` (and says so)."""
    for message in recover_leftovers(out_dir):
        warnings.warn(f"export recovery: {message}", stacklevel=3)
    if out_dir.is_symlink():
        raise ExportError(f"output path {out_dir} is a symlink; pass the real directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a directory")
    if out_dir.parent == out_dir:
        raise ExportError(f"output path {out_dir} is a filesystem root")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"output directory {out_dir} exists and is not empty; pass --overwrite "
                          "(overwrite=True) to replace it, or choose another directory")
    if not ((out_dir / "config.json").is_file() or (out_dir / PRUNING_INFO_FILE).is_file()):
        raise ExportError(f"refusing to replace {out_dir}: it does not look like a model directory "
                          "(no config.json or pruning_info.json); remove it yourself if that is intended")
    cwd = Path(os.path.abspath(os.getcwd()))
    home = Path(os.path.abspath(os.path.expanduser("~")))
    if out_dir in (cwd, home) or out_dir in cwd.parents or out_dir in home.parents:
        raise ExportError(f"refusing to replace {out_dir}: it is or contains the working or home directory")


def _validate_zs(zs: Mapping[str, Any] | None, backbone) -> dict[str, Any] | None:
    """Masks as per-layer rows on the backbone's device, checked against the backbone's shape."""
    if zs is None:
        return None
    if not isinstance(zs, Mapping):
        raise ExportError(f"zs must be a dict of masks {ZS_KEYS}, got {type(zs).__name__}")
    unknown = sorted(set(zs) - set(ZS_KEYS))
    if unknown:
        raise ExportError(f"zs has unsupported masks {unknown}; supported: {list(ZS_KEYS)}")
    layers = list(backbone.encoder.layer)
    n = len(layers)
    device = next(backbone.parameters()).device
    widths = {"head_z": [layer.num_heads for layer in layers],
              "intermediate_z": [layer.intermediate_size for layer in layers]}
    out: dict[str, Any] = {}
    for key in ("head_z", "intermediate_z"):
        z = zs.get(key)
        if z is None:
            continue
        try:
            rows = [torch.as_tensor(r).detach().float().flatten().to(device) for r in z]
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ExportError(f"zs[{key!r}] is not a list of per-layer masks: {exc}") from exc
        if len(rows) != n:
            raise ExportError(f"zs[{key!r}] has {len(rows)} rows, the backbone has {n} layers")
        for i, (row, width) in enumerate(zip(rows, widths[key])):
            if row.numel() != width:
                unit = "heads" if key == "head_z" else "intermediate units"
                raise ExportError(f"zs[{key!r}][{i}] has {row.numel()} entries, layer {i} has {width} {unit}")
            if not torch.isfinite(row).all():
                raise ExportError(f"zs[{key!r}][{i}] has non-finite values")
        out[key] = rows
    for key in GATE_KEYS:
        if zs.get(key) is None:
            continue
        gate = torch.as_tensor(zs[key]).detach().float().flatten().to(device)
        if gate.numel() != n:
            raise ExportError(f"zs[{key!r}] has {gate.numel()} entries, the backbone has {n} layers")
        bad = sorted({v for v in gate.tolist() if v not in (0.0, 1.0)})
        if bad:
            what = "layer" if key == "layer_z" else "sublayer"
            raise ExportError(f"zs[{key!r}] must be 0 or 1 (a post-LayerNorm {what} cannot fold a soft "
                              f"{what} mask); got {bad}")
        out[key] = gate
    if "layer_z" in out and not out["layer_z"].any():
        raise ExportError("zs['layer_z'] removes every layer")
    ones = torch.ones(n, device=device)
    att = out.get("layer_z", ones) * out.get("head_layer_z", ones) * torch.tensor(
        [float(layer.has_attention) for layer in layers], device=device)
    ffn = out.get("layer_z", ones) * out.get("mlp_z", ones) * torch.tensor(
        [float(layer.has_ffn) for layer in layers], device=device)
    if not (att.any() or ffn.any()):
        raise ExportError("the masks remove every layer (every attention and FFN sublayer)")
    return out


def _check_info_keys(info: Mapping[str, Any], pooling: str, normalize: bool) -> None:
    """``info`` may add fields and set base_model/target_shape, but not contradict what the export computes."""
    agreed = {"pooling": pooling, "normalize": bool(normalize)}
    clash = sorted(k for k in info if k in _computed_info_keys() and k not in _INFO_OVERRIDABLE
                   and not (k in agreed and info[k] == agreed[k]))
    if clash:
        raise ExportError(f"info keys {clash} clash with fields the export computes "
                          f"(pooling={pooling!r}, normalize={bool(normalize)}, ...); rename them")


def _jsonable(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict(), where)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return obj.item()
    raise ExportError(f"{where} is not JSON-serializable ({type(obj).__name__})")


# ====================================================================== forward passes
def _max_tokens(backbone) -> int:
    return max(2, min(128, family_of(backbone.config).max_sequence_length(backbone.config)))


def _probe_batch(tokenizer, backbone, texts: list[str]) -> dict[str, torch.Tensor]:
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ExportError("probe_texts must be a non-empty list of non-empty strings")
    batch = tokenizer(texts, padding=True, truncation=True, max_length=_max_tokens(backbone), return_tensors="pt")
    device = next(backbone.parameters()).device
    probe = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if int(probe["input_ids"].max()) >= backbone.embeddings.word_embeddings.num_embeddings:
        raise ExportError("the tokenizer produces ids beyond the backbone's vocabulary: wrong tokenizer?")
    return probe


@torch.no_grad()
def _forward_masked(backbone, probe: Mapping[str, torch.Tensor], zs: Mapping[str, Any] | None) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    try:
        zs = zs or {}
        return backbone(probe["input_ids"], probe["attention_mask"], token_type_ids=probe.get("token_type_ids"),
                        head_z=zs.get("head_z"), intermediate_z=zs.get("intermediate_z"),
                        layer_z=zs.get("layer_z"), head_layer_z=zs.get("head_layer_z"),
                        mlp_z=zs.get("mlp_z")).detach()
    finally:
        backbone.train(was_training)


# ====================================================================== config and weights
def _choose_layout(pruned, vanilla: bool) -> dict[str, Any]:
    shape = pruned.shape
    cfg = pruned.config
    if shape.hidden_size % shape.head_dim:
        raise ExportError(f"hidden size {shape.hidden_size} is not a multiple of the head size {shape.head_dim}")
    full_heads = shape.hidden_size // shape.head_dim
    stock_fits = (all(h == full_heads for h in shape.heads_per_layer) and len(set(shape.intermediate_per_layer)) <= 1
                  and shape.has_pooler and not shape.has_removed_sublayers)
    if vanilla and not shape.has_pooler:
        raise ExportError("vanilla export needs the pooler (the stock BertModel/XLMRobertaModel/MPNetModel always "
                          "has one); export without vanilla=True")
    if vanilla and shape.has_removed_sublayers:
        raise ExportError("vanilla export cannot represent a removed attention / FFN sublayer (post-LayerNorm: zero "
                          "weights give LayerNorm(x), not x); export without vanilla=True (modeling_pruned.py)")
    custom = not (vanilla or stock_fits)
    fam = family_of(cfg)
    config_class, model_class = ((fam.pruned_config_class, fam.pruned_model_class) if custom
                                 else (fam.config_class, fam.model_class))
    return {"family": fam.model_type, "custom": custom, "vanilla": vanilla, "full_heads": full_heads,
            "config_class": config_class, "model_class": model_class}


def _export_state_dict(pruned, vanilla: bool) -> tuple[dict[str, torch.Tensor], EncoderShape]:
    """HF-named state dict (zero-padded to a stock shape when ``vanilla``) and the shape it has."""
    state = {k: v.detach().contiguous() for k, v in pruned.state_dict().items()}
    shape = pruned.shape
    if not vanilla:
        return state, shape
    d, dh = shape.hidden_size, shape.head_dim
    full = (d // dh) * dh
    inter_max = max(shape.intermediate_per_layer)
    keys = family_of(pruned.config).keys
    for i, layer in enumerate(pruned.encoder.layer):
        p = f"encoder.layer.{i}."
        # Rows of the full-width projections that the kept heads fill (the rest stay zero).
        slots = torch.as_tensor(layer.attention.head_slots(), dtype=torch.long)
        rows = (slots.unsqueeze(1) * dh + torch.arange(dh)).flatten()
        for name in ("query", "key", "value"):  # zero rows: the padded heads' context is exactly 0
            for part in ("weight", "bias"):
                key = f"{p}{keys[name]}.{part}"
                state[key] = _place(state[key], 0, full, rows)
        key = f"{p}{keys['attention_output']}.weight"
        state[key] = _place(state[key], 1, full, rows)
        state[p + "intermediate.dense.weight"] = _pad(state[p + "intermediate.dense.weight"], 0, inter_max)
        state[p + "intermediate.dense.bias"] = _pad(state[p + "intermediate.dense.bias"], 0, inter_max)
        state[p + "output.dense.weight"] = _pad(state[p + "output.dense.weight"], 1, inter_max)
    padded = shape.with_target(shape.n_layers, d // dh, inter_max)
    return state, padded


def _place(t: torch.Tensor, dim: int, size: int, index: torch.Tensor) -> torch.Tensor:
    """``t`` written at positions ``index`` along ``dim`` of a zero tensor ``size`` long there."""
    if t.shape[dim] == size and torch.equal(index, torch.arange(size)):
        return t
    new_shape = list(t.shape)
    new_shape[dim] = size
    return t.new_zeros(new_shape).index_copy_(dim, index.to(t.device), t)


def _pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if t.shape[dim] == size:
        return t
    new_shape = list(t.shape)
    new_shape[dim] = size
    out = t.new_zeros(new_shape)
    out.narrow(dim, 0, t.shape[dim]).copy_(t)
    return out


def _build_config(pruned, shape: EncoderShape, layout: Mapping[str, Any], dtype: torch.dtype = torch.float32):
    base = pruned.config
    values = base.to_dict() if hasattr(base, "to_dict") else dict(vars(base))
    for key in _CONFIG_DROP:
        values.pop(key, None)
    values.update(
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=layout["full_heads"],
        intermediate_size=max(shape.intermediate_per_layer) if shape.n_layers else 0,
        vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings,
        architectures=[layout["model_class"]],
    )
    if family_of(base).token_types:
        values["type_vocab_size"] = shape.type_vocab_size
    if layout["custom"]:
        values.update(
            heads_per_layer=list(shape.heads_per_layer),
            intermediate_per_layer=list(shape.intermediate_per_layer),
            attention_head_size=shape.head_dim,
            has_pooler=shape.has_pooler,
            **({"attention_kept_per_layer": list(shape.attention_kept_per_layer),
                "ffn_kept_per_layer": list(shape.ffn_kept_per_layer)} if shape.has_removed_sublayers else {}),
            auto_map={"AutoConfig": f"{MODELING_FILE[:-3]}.{layout['config_class']}",
                      "AutoModel": f"{MODELING_FILE[:-3]}.{layout['model_class']}"},
        )
        bias_heads = pruned.encoder.relative_attention_heads()
        if bias_heads is not None:  # MPNet: which column of the shared position bias each kept head reads
            values["relative_attention_heads_per_layer"] = bias_heads
        config_cls = getattr(modeling_pruned, layout["config_class"])
    else:
        import transformers

        config_cls = getattr(transformers, layout["config_class"])
    config = config_cls(**values)
    config.dtype = dtype  # written to config.json as transformers writes it; dtype="auto" loads the file's dtype
    return config


# ====================================================================== writing
def _write_model_files(tmp: Path, config, state: Mapping[str, torch.Tensor], layout: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    config.save_pretrained(str(tmp))
    save_file({k: v.cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    if layout["custom"]:
        (tmp / MODELING_FILE).write_text(modeling_source())


def _write_heads(tmp: Path, sparse_head, colbert_head, dtype: str = "float32") -> dict[str, Any]:
    """The BGE-M3 head files, in the export's dtype (FlagEmbedding's ``load_state_dict`` casts them to the dtype
    it computes in)."""
    out: dict[str, Any] = {"sparse": sparse_head is not None, "colbert": colbert_head is not None}
    to = EXPORT_DTYPES[dtype]
    for head, name in ((sparse_head, SPARSE_FILE), (colbert_head, COLBERT_FILE)):
        if head is not None:
            torch.save({k: v.detach().cpu().to(to).clone() for k, v in head.linear.state_dict().items()}, tmp / name)
    if colbert_head is not None:
        out["colbert_dim"] = colbert_head.linear.out_features
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_sentence_transformers(tmp: Path, config, tokenizer, pooling: str, normalize: bool,
                                 max_seq_length: int | None = None) -> None:
    """modules.json, sentence_bert_config.json, config_sentence_transformers.json, 1_Pooling/, 2_Normalize/.

    The long-standing module layout (``sentence_transformers.models.*`` and ``pooling_mode_*`` flags):
    every sentence-transformers release from 2.x to 6.x loads it.
    """
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    _write_json(tmp / "modules.json", modules)
    max_len = family_of(config).max_sequence_length(config)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_len:
        max_len = tok_max
    if max_seq_length is not None and 0 < int(max_seq_length) < max_len:
        max_len = int(max_seq_length)
    _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": int(max_len), "do_lower_case": False})
    _write_json(tmp / "config_sentence_transformers.json", {
        "__version__": _versions(), "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    _write_json(tmp / "1_Pooling" / "config.json", {
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    if normalize:
        (tmp / "2_Normalize").mkdir()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sentence_transformers", "transformers", "pytorch"):
        try:
            out[name] = version("torch" if name == "pytorch" else name.replace("_", "-"))
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


# ====================================================================== verification
def _verify_reload(tmp: Path, layout, probe, reference, dtype, device, exported_shape: EncoderShape,
                   atol: float) -> tuple[float, int]:
    from transformers import AutoModel

    try:
        model, loading = AutoModel.from_pretrained(str(tmp), output_loading_info=True,
                                                   trust_remote_code=layout["custom"], dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any failure to load is a failed check
        raise ExportError(f"reload check failed: AutoModel.from_pretrained could not load the export "
                          f"({type(exc).__name__}: {exc})") from exc
    try:
        check_loading_info(loading, "the export")
        if type(model).__name__ != layout["model_class"]:
            raise ExportError(f"reload check failed: AutoModel built {type(model).__name__}, "
                              f"expected {layout['model_class']}")
        has_pooler = getattr(model, "pooler", None) is not None
        reloaded_shape = EncoderShape.from_hf_config(model.config, has_pooler=has_pooler)
        if reloaded_shape != exported_shape:
            raise ExportError(f"reload check failed: the reloaded config describes {reloaded_shape.to_dict()}, "
                              f"the export has {exported_shape.to_dict()}")
        n_params = count_module_params(model)
        model.to(device).eval()
        with torch.no_grad():
            out = model(**probe).last_hidden_state
        diff = max_abs_diff_on_tokens(out, reference, probe["attention_mask"])
        what = "" if dtype == torch.float32 else f" ({str(dtype).replace('torch.', '')}) vs the float32"
        check_close(f"reload check (AutoModel last_hidden_state{what or ' vs'} masked backbone)", diff, atol)
        return diff, n_params
    finally:
        del model


def _source_dir(base_model: str | None) -> Path | None:
    """The base model's local directory (for the license its card states), or None."""
    from ..models.loading import ModelLoadError, resolve_model_path

    if not base_model:
        return None
    try:
        path = Path(resolve_model_path(str(base_model)))
    except ModelLoadError:
        return None
    return path if path.is_dir() else None


def _computed_info_keys() -> set[str]:
    return {"format_version", "base_model", "base_model_hub_id", "family", "export", "pooling", "normalize", "heads",
            "base_shape", "target_shape", "achieved_shape", "exported_shape", "kept_layers", "kept_heads",
            "kept_sublayers", "params", "kept_encoder_share", "verification", "usage", "onnx", "evaluation"}


def _pruning_info(*, backbone, base_shape, pruned_shape, exported_shape, kept, layout, pooling, normalize,
                  heads_info, verification, info) -> dict[str, Any]:
    before, after, exported = count_params(base_shape), count_params(pruned_shape), count_params(exported_shape)
    custom = layout["custom"]
    trc = ", trust_remote_code=True" if custom else ""
    flag_args = f"pooling_method={pooling!r}, normalize_embeddings={bool(normalize)}{trc}"
    dtype = layout.get("dtype", "float32")
    # transformers 5 loads with dtype="auto" (config.json's dtype), so a half-precision export loads as such;
    # FlagEmbedding instead casts to what use_fp16 / use_bf16 say (its default use_fp16=True).
    flag_args += {"float32": "", "float16": ", use_fp16=True", "bfloat16": ", use_fp16=False, use_bf16=True"}[dtype]
    half = ("" if dtype == "float32" else
            f"  # loads in {dtype} (config.json's dtype); dtype=torch.float32 to compute in float32")
    if heads_info.get("colbert") and heads_info.get("colbert_dim") != pruned_shape.hidden_size:
        flag_args += f", colbert_dim={heads_info['colbert_dim']}"
    result: dict[str, Any] = {
        "format_version": 1,
        "base_model": getattr(backbone.config, "_name_or_path", None) or None,
        "family": layout["family"],
        "export": {"class": layout["model_class"], "config_class": layout["config_class"],
                   "model_type": layout["family"],
                   "trust_remote_code": custom, "vanilla": layout["vanilla"], "dtype": layout["dtype"],
                   "source_dtype": layout.get("source_dtype"),
                   "padded_params": exported.total - after.total},
        "pooling": pooling,
        "normalize": bool(normalize),
        "heads": heads_info,
        "base_shape": base_shape.to_dict(),
        "target_shape": None,
        "achieved_shape": pruned_shape.to_dict(),
        "exported_shape": exported_shape.to_dict(),
        "kept_layers": list(kept["kept_layers"]),
        "kept_heads": [list(h) for h in kept["kept_heads"]],
        **({"kept_sublayers": {"attention": list(kept["attention_kept"]), "ffn": list(kept["ffn_kept"])}}
           if "attention_kept" in kept else {}),
        "params": {"before": before.to_dict(), "after": after.to_dict(), "exported": exported.to_dict()},
        "kept_encoder_share": kept_share(base_shape, pruned_shape) if before.encoder_layers else None,
        "verification": verification,
        "usage": {
            "transformers": f"AutoModel.from_pretrained(path{trc}){half}",
            "sentence_transformers": f"SentenceTransformer(path{trc})" + (
                f"  # computes in {dtype}; model_kwargs={{'dtype': torch.float32}} for float32" if half else ""),
            "flag_embedding": (f"BGEM3FlagModel(path, {flag_args})"
                               + ("" if heads_info.get("sparse") and heads_info.get("colbert") else
                                  "; dense only: this export has no sparse/colbert head files, and FlagEmbedding "
                                  "would score with randomly initialised heads")),
        },
    }
    result.update(info)
    return result


# ====================================================================== filesystem
def _make_parents(parent: Path) -> list[Path]:
    """Create missing parent directories; return those created (outermost first) so a failure can remove them."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    missing.reverse()
    for p in missing:
        try:
            p.mkdir()
        except OSError as exc:
            raise ExportError(f"cannot create the output's parent directory {p}: {exc}") from exc
    return missing


def _check_writable(directory: Path) -> None:
    """A file can be created in ``directory`` (or its nearest existing ancestor): a read-only filesystem is
    reported as such, not as a lack of free space."""
    problem = unwritable(directory)
    if problem:
        raise ExportError(problem)


def _check_free_space(parent: Path, needed: int) -> None:
    _check_writable(parent)
    problem = too_little_space(parent, needed)
    if problem:
        raise ExportError(f"not enough free space in {parent}: {problem}")


def _apply_umask(root: Path) -> None:
    """mkdtemp (and safetensors) create private files; give the export the modes a normal write would."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _install(held: TempExportDir, out_dir: Path, overwrite: bool) -> None:
    """Move the verified export into place. An existing export is swapped out in one atomic exchange where the
    system has one; otherwise it is moved aside first and deleted only afterwards (``export.install``)."""
    tmp = held.path
    old: Path | None = None
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:  # something appeared since the first check
            raise ExportError(f"output directory {out_dir} became non-empty during the export; nothing was changed")
        _check_target(out_dir, overwrite)
        if swap_into_place(held, out_dir):
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{OLD_MARK}", dir=out_dir.parent))
        os.replace(out_dir, old)  # replaces the empty placeholder directory
    try:
        os.replace(tmp, out_dir)  # replaces out_dir only if it is an empty directory
        held.release(remove=False)
    except OSError as exc:
        if old is not None:
            try:
                os.replace(old, out_dir)
            except OSError as exc2:
                raise ExportError(f"could not move the export into {out_dir} ({exc}) nor move the previous "
                                  f"contents back ({exc2}); they are intact in {old}") from exc
        raise ExportError(f"could not move the export into {out_dir}: {exc}; the previous contents are intact") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            warnings.warn(f"the previous export was replaced but {old} could not be fully removed", stacklevel=3)
