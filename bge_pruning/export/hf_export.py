"""Export a (masked) pruned backbone as a HuggingFace / sentence-transformers / FlagEmbedding directory.

The pipeline, one module per step:

1. plan (``export.plan``): check the arguments, validate the masks once (``models.masks.validate_masks``), prune a
   float32 copy and check it against the masked backbone, choose the layout, build the state dict and config;
   nothing is written;
2. write (``export.write``) into a temporary directory beside the target: model files, tokenizer, head files,
   sentence-transformers files, the optional ONNX graph, ``pruning_info.json`` and the model card;
3. verify (``export.verify``): reload with ``transformers.AutoModel`` and require that nothing is missing,
   unexpected or mismatched and that ``last_hidden_state`` equals the masked backbone's on the real tokens of a
   probe batch; reload the head files;
4. install (``export.install``): move the directory into place (an atomic swap over an existing export).

A failure removes the temporary directory, leaves the target untouched and raises ``ExportError`` naming the failed
check. ``dtype`` (``float32`` by default, ``float16``, ``bfloat16``) is the dtype the weights and head files are
saved in: pruning, mask folding and the reference stay float32, and the reload check compares the saved file, in its
own dtype, with that float32 reference within the dtype's tolerance (``DEFAULT_ATOL``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import MaskError
from ..models.heads import COLBERT_FILE, SPARSE_FILE
from ..models.masks import validate_masks
from ..pruning_info import PRUNING_INFO_FILE
from ..trust import MODELING_FILE
from ..vocab import write_wordpiece_vocab_txt
from .install import (
    TempExportDir,
    apply_umask,
    check_export_target,
    check_free_space,
    check_target,
    install,
    make_parents,
)
from .onnx_export import check_quantize, write_onnx
from .plan import (
    DEFAULT_ATOL,
    DEFAULT_PROBE_TEXTS,
    EXPORT_DTYPES,
    check_arguments,
    export_dtype_name,
    jsonable,
    make_plan,
)
from .verify import ExportError, check_head_file, verify_reload
from .write import (
    build_pruning_info,
    check_info_keys,
    check_param_count,
    export_max_seq_length,
    modeling_source,
    onnx_probes,
    write_heads,
    write_info_and_card,
    write_model_files,
    write_sentence_transformers,
)

__all__ = ["DEFAULT_ATOL", "DEFAULT_PROBE_TEXTS", "EXPORT_DTYPES", "MODELING_FILE", "PRUNING_INFO_FILE",
           "ExportError", "check_export_target", "export_composer_model", "export_pruned_model", "modeling_source"]


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

    Args:
        backbone: a ``MaskedBGEM3Backbone`` (not modified).
        out_dir: the export directory (missing, empty, or an earlier export with ``overwrite``).
        tokenizer: the HF tokenizer saved with it.
        zs: deterministic masks (``head_z`` [L, H], ``intermediate_z`` [L, I], ``layer_z`` [L], ``head_layer_z`` /
            ``mlp_z`` [L]), as a dict or ``Masks``; None exports the backbone as it is.
        pooling / normalize: the sentence embedding (``cls`` / ``mean``; L2-normalised or not).
        sparse_head / colbert_head: BGE-M3's heads, saved as ``sparse_linear.pt`` / ``colbert_linear.pt``.
        vanilla: zero-pad pruned heads and FFN widths back to a stock shape (no remote code).
        overwrite: replace an existing export.
        info: fields added to ``pruning_info.json`` (``PruningInfo``); it may set ``base_model`` / ``target_shape``.
        probe_texts: the texts of the checks (default ``DEFAULT_PROBE_TEXTS``).
        atol: the reload check's tolerance against the float32 masked model (default ``DEFAULT_ATOL[dtype]``; the
            pruned-forward check, float32 on both sides, always uses the float32 one).
        max_seq_length: the source model's sentence-transformers limit (all-MiniLM-L6-v2's 256), kept so the export
            embeds long texts as the base did; without it, the tokenizer's and the position embeddings' limit.
        dtype: the dtype the weights and head files are saved in (``EXPORT_DTYPES``).
        onnx / quantize: add ``onnx/model.onnx`` checked with onnxruntime, and its ``int8`` dynamic quantization
            (:mod:`bge_pruning.export.onnx_export`).

    Returns:
        The final directory.

    Raises:
        ExportError: an argument or mask is invalid or a check fails; the target is untouched and no temporary
            directory is left.
    """
    out_dir = Path(os.path.abspath(os.fspath(out_dir)))
    dtype = export_dtype_name(dtype)
    quantize = check_quantize(quantize)
    if quantize is not None and not onnx:
        raise ExportError(f"quantize={quantize!r} quantizes the ONNX model: it needs onnx=True")
    if atol is None:
        atol = DEFAULT_ATOL[dtype]
    check_arguments(backbone, tokenizer, pooling, sparse_head, colbert_head, atol)
    info_json = jsonable(dict(info or {}), "info")
    check_info_keys(info_json, pooling, normalize)
    check_target(out_dir, overwrite)
    try:
        masks = validate_masks(zs, backbone)
    except MaskError as exc:
        raise ExportError(str(exc)) from exc

    stage = "preparing the export"
    try:
        plan = make_plan(backbone, tokenizer, masks, probe_texts, vanilla,
                         atol if dtype == "float32" else DEFAULT_ATOL["float32"], dtype)
    except ExportError:
        raise
    except Exception as exc:  # an unexpected failure before anything is written
        raise ExportError(f"export to {out_dir} failed while {stage}: {type(exc).__name__}: {exc}") from exc

    created_parents = make_parents(out_dir.parent)
    held: TempExportDir | None = None
    stage = "creating the temporary directory"
    try:
        check_free_space(out_dir.parent, plan.state_bytes)
        held = TempExportDir(out_dir)
        tmp = held.path
        apply_umask(tmp)

        stage = "writing the model files"
        write_model_files(tmp, plan)
        plan.state = None  # the weights are on disk: free them before the reloads
        stage = "writing the tokenizer"
        tokenizer.save_pretrained(str(tmp))
        stage = "writing the head files"
        heads_info = write_heads(tmp, sparse_head, colbert_head, dtype)
        stage = "writing the sentence-transformers files"
        write_sentence_transformers(tmp, pooling, normalize, export_max_seq_length(plan.base_config, tokenizer,
                                                                                max_seq_length),
                                    trust_remote_code=plan.layout["custom"])
        write_wordpiece_vocab_txt(tmp)

        stage = "reloading the export"
        reload_diff, n_reloaded = verify_reload(tmp, plan.layout, plan.probe, plan.reference, plan.dtype,
                                                next(backbone.parameters()).device, plan.exported_shape, atol)
        stage = "checking the head files"
        if sparse_head is not None:
            check_head_file(tmp / SPARSE_FILE, sparse_head, "sparse head", dtype)
        if colbert_head is not None:
            check_head_file(tmp / COLBERT_FILE, colbert_head, "colbert head", dtype)

        onnx_info = None
        if onnx:
            stage = "writing the ONNX model"
            onnx_info = write_onnx(tmp, onnx_probes(plan.probe), trust_remote_code=plan.layout["custom"],
                                   quantize=quantize)

        stage = "writing pruning_info.json"
        verification = {"dtype": dtype, "max_abs_diff": reload_diff, "pruned_forward_max_abs_diff": plan.pruned_diff,
                        "atol": atol, "probe_texts": len(plan.probe["input_ids"]),
                        "real_tokens": int(plan.probe["attention_mask"].sum())}
        pruning_info = build_pruning_info(
            plan, base_model=getattr(backbone.config, "_name_or_path", None) or None, pooling=pooling,
            normalize=normalize, heads_info=heads_info, verification=verification, info=info_json,
            onnx_info=onnx_info)
        check_param_count(pruning_info, n_reloaded)
        stage = "writing the model card"
        write_info_and_card(tmp, pruning_info)
        apply_umask(tmp)

        stage = "moving the export into place"
        install(held, out_dir, overwrite)
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
