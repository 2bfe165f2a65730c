"""Export a pruning/finetuning Composer checkpoint as a verified HuggingFace model directory.

    python scripts/extract_pruned_model.py CHECKPOINT OUT_DIR [--vanilla] [--overwrite] [--dtype float16]
        [--onnx [--quantize int8]]

The directory loads with ``transformers.AutoModel`` (``trust_remote_code=True`` unless --vanilla or
nothing inside the kept layers was pruned), ``sentence_transformers.SentenceTransformer`` and
FlagEmbedding's ``BGEM3FlagModel``; ``pruning_info.json`` records what was kept and the parameter
counts. ``--dtype float16|bfloat16`` saves the weights (and BGE-M3 head files) at half the size; the reloaded
half-precision model is checked against the float32 masked model within that dtype's tolerance (recorded in
``pruning_info.json``). ``--onnx`` adds ``onnx/model.onnx`` (the layout sentence-transformers' ``backend="onnx"``
reads), checked with onnxruntime against torch within 1e-4; ``--quantize int8`` adds its int8 dynamic quantization
``onnx/model_qint8_avx512_vnni.onnx``. The export is checked against the masked model before it is moved into
OUT_DIR; an existing non-empty OUT_DIR is only replaced with --overwrite.

The checkpoint file is enough, alone in any folder: it holds the run config and the base model's HF config and
tokenizer (its run record). A checkpoint written before the record existed needs the ``config.yaml`` and
``base_model/`` that training wrote beside it.

Checkpoints are pickles. This tool loads them with ``torch.load(weights_only=True)`` and an allow-list of
the few non-tensor types a Composer checkpoint holds, so a crafted file is refused before it can run
code; Composer itself (``train.autoresume``, ``train.load_path``) unpickles fully, so resume only from
checkpoints you wrote. Exit status: 0 on success, 2 on bad input (one ``error:`` line), 1 on a failed export.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="Composer checkpoint file written by training (e.g. .../latest-rank0.pt)")
    p.add_argument("out_dir", help="directory to write the model to")
    p.add_argument("--vanilla", action="store_true",
                   help="zero-pad pruned heads / intermediate units back to a stock BertModel/XLMRobertaModel "
                        "shape (no remote code needed; a few more parameters, same outputs)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it already holds a model")
    # Checked in main() rather than with choices=, so a bad value is one error: line (argparse adds a usage line).
    p.add_argument("--dtype", default="float32", metavar="{" + ",".join(EXPORT_DTYPES) + "}",
                   help="dtype of the saved weights (default float32); float16/bfloat16 halve the files and are "
                        "verified against the float32 model within the dtype's tolerance")
    p.add_argument("--onnx", action="store_true",
                   help="also write onnx/model.onnx (encoder to last_hidden_state, checked with onnxruntime)")
    p.add_argument("--quantize", default=None, metavar="{" + ",".join(QUANTIZE_CHOICES) + "}",
                   help="with --onnx: also write the int8 dynamically quantized ONNX model")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the base model's modeling code stored in the checkpoint (or, for an older checkpoint, "
                        "in the run's base_model/) even when it is not this project's own")
    return p


EXPORT_DTYPES = ("float32", "float16", "bfloat16")  # bge_pruning.config.EXPORT_DTYPES (not imported: see main)
QUANTIZE_CHOICES = ("int8",)  # bge_pruning.export.onnx_export.QUANTIZE_CHOICES (not imported: it imports torch)


def _error(message: str, code: int = 2) -> int:
    print(f"extract_pruned_model: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.dtype not in EXPORT_DTYPES:  # before torch and the checkpoint load
        return _error(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {args.dtype!r}")
    if args.quantize is not None and args.quantize not in QUANTIZE_CHOICES:
        return _error(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {args.quantize!r}")
    if args.quantize is not None and not args.onnx:
        return _error("--quantize quantizes the ONNX model: add --onnx")
    from bge_pruning.export import ExportError, export_composer_model
    from bge_pruning.export.hf_export import check_export_target

    out_dir = Path(os.path.abspath(args.out_dir))
    if "://" in args.checkpoint:
        return _error(f"{args.checkpoint}: remote checkpoints are not read directly; copy the file to a local "
                      "folder first (it holds its run config and base model files; an older checkpoint also needs "
                      "the config.yaml and base_model/ beside it)")
    ckpt = Path(args.checkpoint)
    if ckpt.is_dir():
        latest = ckpt / "latest-rank0.pt"
        hint = f" such as {latest}" if latest.exists() else " (ep*-ba*-rank0.pt or latest-rank0.pt)"
        return _error(f"{ckpt} is a directory; give a checkpoint file{hint}")
    if not ckpt.exists():
        return _error(f"checkpoint not found: {ckpt}")
    real_ckpt, real_out = ckpt.resolve(), out_dir.resolve()
    if real_ckpt == real_out or real_out in real_ckpt.parents:
        return _error(f"the checkpoint {ckpt} is inside OUT_DIR {out_dir}; exporting there could replace it. "
                      "Choose another OUT_DIR")
    try:  # fail before loading a large checkpoint when the target cannot be written
        check_export_target(out_dir, overwrite=args.overwrite)
    except ExportError as exc:
        return _error(str(exc))

    try:
        from bge_pruning.training.checkpoint import load_composer_model
    except ImportError as exc:
        return _error(f"cannot import bge_pruning.training.checkpoint.load_composer_model: {exc}")
    from bge_pruning.errors import UserError

    try:
        model = load_composer_model(args.checkpoint, trust_remote_code=args.trust_remote_code)
    except UserError as exc:  # CheckpointError, RemoteCodeError, ...: the message names the file
        return _error(str(exc))
    except Exception as exc:  # noqa: BLE001 - report any loading failure with the path
        return _error(f"could not load the checkpoint {args.checkpoint}: {type(exc).__name__}: {exc}")

    try:
        path = export_composer_model(model, out_dir, vanilla=args.vanilla, overwrite=args.overwrite, dtype=args.dtype,
                                     onnx=args.onnx, quantize=args.quantize)
    except ExportError as exc:
        return _error(f"export failed, {out_dir} was not changed: {exc}", 1)

    from bge_pruning.pruning_info import PruningInfo

    info = PruningInfo.load(path)
    shape, params, export = info.achieved_shape, info.params, info.export
    print(f"exported {args.checkpoint} -> {path}")
    print(f"  layers kept: {info.kept_layers}  heads per layer: {shape['heads_per_layer']}  "
          f"intermediate per layer: {shape['intermediate_per_layer']}")
    print(f"  parameters: {params['before']['total']:,} -> {params['after']['total']:,} "
          f"(encoder layers {params['before']['encoder_layers']:,} -> {params['after']['encoder_layers']:,})"
          + (f", {export['padded_params']:,} zero padding" if export["padded_params"] else ""))
    print(f"  class: {export['class']}  trust_remote_code: {export['trust_remote_code']}  "
          f"max abs diff vs masked model: {info.verification['max_abs_diff']:.2e}"
          + (f" (saved in {args.dtype}, atol {info.verification['atol']:.1e})" if args.dtype != "float32" else ""))
    if info.onnx is not None:
        onnx = info.onnx
        print(f"  onnx: {onnx['file']} ({onnx['size_bytes'] / 2**20:.1f} MiB), max abs diff vs torch "
              f"{onnx['max_abs_diff']:.2e}")
        for kind, q in onnx["quantized"].items():
            print(f"  onnx {kind}: {q['file']} ({q['size_bytes'] / 2**20:.1f} MiB), max abs diff vs float32 "
                  f"{q['max_abs_diff']:.2e}, min cosine of mean-pooled vectors {q['min_cosine_mean_pooled']:.4f}")
    return 0

