"""ONNX export of a written model directory, checked with onnxruntime, and int8 dynamic quantization.

The graph is the encoder alone (``input_ids``, ``attention_mask`` and, for BERT, ``token_type_ids`` in;
``last_hidden_state`` out; batch and sequence axes dynamic), saved as ``onnx/model.onnx``: the file and the
names sentence-transformers' ``backend="onnx"`` and optimum's ``ORTModelForFeatureExtraction`` load. Pooling
and normalisation stay in the sentence-transformers modules next to it; the BGE-M3 sparse and colbert heads stay
in their ``.pt`` files and run on the graph's hidden states (``EmbeddingModel.from_dir(..., onnx_file=...)``).

Why by hand: ``optimum`` (what ``sentence_transformers.backend`` calls to export) requires transformers <4.58,
and the project is on transformers 5. The graph is traced with torch.onnx's TorchScript exporter from the model
*as saved* (``AutoModel.from_pretrained`` of the directory, float32, eager attention), so a per-layer-width export
becomes a plain graph that needs no remote code. A half-precision export is traced from its saved weights cast
to float32 (onnxruntime's CPU kernels are float32).

Checked: onnxruntime's output against the same torch model on the export's probe batch and on a second batch of
another shape (so the dynamic axes are exercised), max |diff| over real tokens within ``ONNX_ATOL`` (1e-4).
The torch reference is computed before tracing: the exporter leaves the traced module in a state whose later
outputs differ (measured 4.8 on all-MiniLM-L6-v2), so it traces a copy that is thrown away afterwards.

``quantize="int8"``: onnxruntime's ``quantize_dynamic`` (weights signed int8 per tensor, activations quantized
at run time), as ``onnx/model_qint8_avx512_vnni.onnx`` (sentence-transformers' name for this scheme; load it with
``model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"}``). Quantization changes results by design:
its max |diff| and the smallest cosine between pooled float32 and int8 embeddings of the probe texts are
recorded, not bounded; its retention on tasks is measured with ``scripts/evaluate_model.py --onnx``.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .verify import ExportError

ONNX_DIR = "onnx"
ONNX_FILE = "onnx/model.onnx"
QUANTIZED_FILES = {"int8": "onnx/model_qint8_avx512_vnni.onnx"}
QUANTIZE_CHOICES = tuple(QUANTIZED_FILES)
ONNX_ATOL = 1e-4
ONNX_OPSET = 17
OUTPUT_NAME = "last_hidden_state"


def onnx_input_names(model: torch.nn.Module) -> list[str]:
    """The graph's inputs: ``input_ids`` and ``attention_mask``, plus ``token_type_ids`` where the model has more
    than one token type (BERT; not XLM-R, whose single type is always 0, nor MPNet, which has none)."""
    names = ["input_ids", "attention_mask"]
    if int(getattr(model.config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


class _HiddenStates(torch.nn.Module):
    """Positional inputs in ``names`` order -> ``last_hidden_state`` (what the exporter traces)."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).last_hidden_state


def check_quantize(quantize: str | None) -> str | None:
    """``quantize`` (None or one of ``QUANTIZE_CHOICES``); ``ExportError`` naming the choices otherwise."""
    if quantize is None or quantize in QUANTIZE_CHOICES:
        return quantize
    raise ExportError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)} (or none), got {quantize!r}")


def _load_float32(model_dir: Path, trust_remote_code: bool) -> torch.nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code, dtype=torch.float32,
                                      attn_implementation="eager")
    return model.eval()


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of ``path`` (the export's check, ``OnnxEncoder``, the efficiency benchmark);
    ``threads`` sets the intra-op thread count (inter-op 1), None keeps onnxruntime's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the CPU provider's notes on unused initializers are noise here
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, names: list[str], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``last_hidden_state`` of ``session`` for a tokenized ``batch`` (only the graph's inputs are passed)."""
    feeds = {}
    for name in names:
        value = batch.get(name)
        if value is None and name == "token_type_ids":
            value = torch.zeros_like(batch["input_ids"])
        feeds[name] = value.detach().cpu().numpy().astype("int64", copy=False)
    return torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    keep = mask.bool()
    return float((a.float() - b.float()).abs()[keep].max()) if bool(keep.any()) else 0.0


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


@contextlib.contextmanager
def _quiet_root_warning(fragment: str):
    """Drop the one root-logger warning ``quantize_dynamic`` prints ("Please consider to run pre-processing"):
    the graph is already shape-inferred by the exporter, and a user reading it would think the export skipped a
    step."""
    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return fragment not in record.getMessage()

    root = logging.getLogger()
    drop = _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def write_onnx(model_dir: str | Path, probes: list[Mapping[str, torch.Tensor]], *, trust_remote_code: bool,
               quantize: str | None = None, atol: float = ONNX_ATOL) -> dict[str, Any]:
    """Write ``onnx/model.onnx`` (and the quantized file) into ``model_dir`` and check it; returns what
    ``pruning_info.json`` records under ``onnx``.

    Args:
        model_dir: a written model directory (config, weights, tokenizer); the files are added to it.
        probes: tokenized batches (``input_ids``, ``attention_mask``[, ``token_type_ids``]) of different shapes;
            the first is traced, all are compared.
        trust_remote_code: load the directory's modeling file (this project's per-layer-width exports).
        quantize: ``None`` or ``"int8"`` (dynamic quantization, ``QUANTIZED_FILES``).
        atol: the largest max |onnxruntime - torch| over real tokens accepted for the float32 graph.

    Raises ``ExportError`` when onnx / onnxruntime are missing, the exporter fails, or a check fails.
    """
    quantize = check_quantize(quantize)
    try:
        import onnx  # noqa: F401  (the exporter and the quantizer need it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"the ONNX export needs onnx and onnxruntime ({exc}); install the 'onnx' extra: "
                          f"pip install 'bge_pruning[onnx]'") from None
    model_dir = Path(model_dir)
    probes = [{k: v.detach().cpu() for k, v in p.items()} for p in probes]
    model = _load_float32(model_dir, trust_remote_code)
    names = onnx_input_names(model)
    with torch.inference_mode():
        references = [model(**{k: v for k, v in p.items() if k in names}).last_hidden_state for p in probes]

    out = model_dir / ONNX_FILE
    out.parent.mkdir(exist_ok=True)
    traced = _HiddenStates(model, names)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names + [OUTPUT_NAME]}
    try:
        with torch.no_grad(), warnings_suppressed():
            torch.onnx.export(traced, tuple(probes[0][n] if n in probes[0] else torch.zeros_like(probes[0]["input_ids"])
                                            for n in names),
                              str(out), input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is a failed export
        raise ExportError(f"ONNX export failed: torch.onnx.export: {type(exc).__name__}: {exc}") from exc
    finally:
        del traced, model  # the traced module is not reusable (see the module docstring)

    session = onnx_session(out)
    diffs = [_max_diff(run_session(session, names, p), ref, p["attention_mask"]) for p, ref in zip(probes, references)]
    diff = max(diffs)
    if not math.isfinite(diff) or diff > atol:
        raise ExportError(f"ONNX check failed: max |onnxruntime - torch| = {diff:.3g} over real tokens, "
                          f"above the tolerance {atol:g}")
    info: dict[str, Any] = {
        "file": ONNX_FILE, "opset": ONNX_OPSET, "inputs": names, "output": OUTPUT_NAME, "dtype": "float32",
        "max_abs_diff": diff, "atol": atol, "probe_batches": [list(p["input_ids"].shape) for p in probes],
        "size_bytes": out.stat().st_size, "quantized": {},
    }
    if quantize is not None:
        info["quantized"][quantize] = _quantize(out, model_dir / QUANTIZED_FILES[quantize], names, probes, references)
    return info


def _quantize(source: Path, target: Path, names: list[str], probes, references) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet_root_warning("pre-processing before quantization"):
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=False,
                             reduce_range=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    session = onnx_session(target)
    diff, cosine = 0.0, 1.0
    for p, ref in zip(probes, references):
        hidden = run_session(session, names, p)
        diff = max(diff, _max_diff(hidden, ref, p["attention_mask"]))
        cos = torch.nn.functional.cosine_similarity(_mean_pool(hidden, p["attention_mask"]),
                                                    _mean_pool(ref, p["attention_mask"]), dim=-1)
        cosine = min(cosine, float(cos.min()))
    if not (math.isfinite(diff) and math.isfinite(cosine)):
        raise ExportError(f"int8 check failed: the quantized model's outputs are not finite ({target.name})")
    return {"file": str(target.relative_to(source.parent.parent)),
            "scheme": "weights int8 per tensor, activations uint8 at run time",
            "max_abs_diff": diff, "min_cosine_mean_pooled": cosine, "size_bytes": target.stat().st_size}


@contextlib.contextmanager
def warnings_suppressed():
    """The TorchScript exporter warns about every traced Python conditional of transformers' mask code (the
    graph is checked against torch on two shapes instead)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
