"""The export's ``README.md``: a Hugging Face model card in sentence-transformers' style.

Front matter as the Hub reads it (``library_name``, ``base_model`` as a Hub id, the base's ``license`` and
``language`` carried over, ``pipeline_tag``, tags), then the pruned shape, parameter counts, what was kept, and
how to load it. sentence-transformers' own card generator needs a training run of its own to fill in, so the
card is written here from ``pruning_info.json``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The embedded offline models and the Hub ids they are copies of.
EMBEDDED_HUB_IDS = {"embedded:all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                    "embedded:all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2"}
CARRIED_KEYS = ("license", "language")


def hub_id(base_model: str | None) -> str | None:
    """``embedded:NAME`` -> its Hub id; a Hub id stays; a local path has none (unless its own card names one)."""
    if not base_model:
        return None
    if base_model in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[base_model]
    path = Path(base_model)
    if path.exists():
        return source_front_matter(path).get("base_model") if path.is_dir() else None
    parts = base_model.split("/")
    return base_model if len(parts) == 2 and all(parts) and not base_model.startswith((".", "/")) else None


def source_front_matter(model_dir: Path) -> dict[str, Any]:
    """The simple ``key: value`` lines of a model card's YAML front matter (lists are skipped)."""
    card = model_dir / "README.md"
    try:
        text = card.read_text(encoding="utf-8")
    except OSError:
        return {}
    m = re.match(r"^---\n(.*?)\n---", text, re.S)
    if not m:
        return {}
    out: dict[str, Any] = {}
    for line in m.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "-")) and value.strip():
            out[key.strip()] = value.strip()
    return out


def render(info: Mapping[str, Any], source_dir: Path | None) -> str:
    """The card's text for an export described by ``info`` (its pruning_info.json)."""
    base = info.get("base_model")
    base_id = info.get("base_model_hub_id")
    carried = {k: v for k, v in source_front_matter(source_dir).items() if k in CARRIED_KEYS} if source_dir else {}
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity"]
    if base_id:
        front.append(f"base_model: {base_id}")
    front += [f"{k}: {v}" for k, v in carried.items()]
    front += ["tags:", "- sentence-transformers", "- feature-extraction", "- sentence-similarity", "- pruned",
              "- bge-pruning", "---"]
    shape, params = info["achieved_shape"], info["params"]
    heads = shape["heads_per_layer"]
    inter = shape["intermediate_per_layer"]
    width = (f"{heads[0]} heads and {inter[0]} FFN units per layer" if len(set(heads)) <= 1 and len(set(inter)) <= 1
             else f"heads per layer {heads}, FFN units per layer {inter}")
    before, after = params["before"], params["after"]
    vocab = info.get("vocabulary") if isinstance(info.get("vocabulary"), Mapping) else {}
    # A vocabulary trimmed before training: "before" is the trimmed model; the base had the full vocabulary.
    base_total = int(vocab.get("params_before") or before["total"])
    trc = info["export"]["trust_remote_code"]
    lines = front + [
        "", f"# {(base_id or str(base or 'model')).split('/')[-1].split(':')[-1]} (pruned)", "",
        f"A structurally pruned copy of `{base_id or base}` made with bge_pruning (LLM-Shearing-style L0 "
        "masks on layers, heads and FFN units, physically removed and verified against the masked model).", "",
        "| | base | pruned |", "|---|---:|---:|",
        f"| layers | {info['base_shape']['n_layers']} | {shape['n_layers']} |",
        f"| encoder-layer parameters | {before['encoder_layers']:,} | {after['encoder_layers']:,} |",
        f"| total parameters | {base_total:,} | {after['total']:,} |", "",
        f"Kept layers {info['kept_layers']} of the base, {width}; pooling `{info['pooling']}`"
        f"{', normalized' if info['normalize'] else ''}.",
    ]
    if vocab.get("kept_size"):
        lines += ["", f"Vocabulary trimmed to {vocab['kept_size']:,} of {vocab['base_size']:,} tokens (the tokens of "
                  f"{', '.join(map(str, vocab.get('corpus', [])))}); other text is split into smaller pieces or UNK."]
    lines += ["", "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer",
              f"model = SentenceTransformer(\"PATH\"{', trust_remote_code=True' if trc else ''})",
              "embeddings = model.encode([\"a sentence\"])", "```", ""]
    if trc:
        lines += ["This export keeps fewer heads in some layers and ships `modeling_pruned.py`, which "
                  "`trust_remote_code=True` executes. A `--vanilla` export loads with stock classes instead.", ""]
    dtype = info["export"].get("dtype", "float32")
    if dtype != "float32":
        ver = info.get("verification") or {}
        measured = (f" (max abs diff of the last hidden states {ver['max_abs_diff']:.1e}, tolerance {ver['atol']:g})"
                    if isinstance(ver.get("max_abs_diff"), (int, float)) and isinstance(ver.get("atol"), (int, float))
                    else "")
        lines += [f"The weights are stored in {dtype} (half the size of float32) and load as {dtype} by default; "
                  f"pass `model_kwargs={{\"dtype\": torch.float32}}` (SentenceTransformer) or `dtype=torch.float32` "
                  f"(AutoModel) to compute in float32. The {dtype} model was checked against the float32 pruned "
                  f"model{measured}.", ""]
    onnx = info.get("onnx") if isinstance(info.get("onnx"), Mapping) else None
    if onnx:
        lines += ["## ONNX", "", f"`{onnx['file']}`: the encoder ({', '.join(onnx['inputs'])} -> {onnx['output']}), "
                  f"float32, opset {onnx['opset']}; checked with onnxruntime against the torch model (max abs diff "
                  f"{onnx['max_abs_diff']:.1e}). It needs no remote code. Pooling and normalisation are the "
                  "sentence-transformers modules beside it."]
        for kind, q in (onnx.get("quantized") or {}).items():
            lines += ["", f"`{q['file']}`: {kind} dynamic quantization ({q['scheme']}), "
                      f"{q['size_bytes'] / 2**20:.1f} MiB; smallest cosine of its embeddings to float32's on the "
                      f"probe texts {q['min_cosine_mean_pooled']:.3f}."]
        lines += [""]
    evaluation = info.get("evaluation") if isinstance(info.get("evaluation"), Mapping) else None
    if evaluation:
        lines += ["## Evaluation", "", f"Scored by the training run (x100; {evaluation.get('source', 'the run')}):",
                  "", "| task | metric | base | pruned | retention |", "|---|---|---:|---:|---:|"]
        for row in evaluation.get("rows", []):
            lines.append(f"| {row['task']} | {row['metric']} | {row['base']:.2f} | {row['pruned']:.2f} | "
                         f"{100 * row['pruned'] / row['base']:.1f}% |")
        lines += [""]
    lines += [f"FlagEmbedding: `{info['usage']['flag_embedding']}`.", "",
              "Details (kept heads per layer, verification, parameter counts): `pruning_info.json`.", ""]
    return "\n".join(lines)


def source_dir(base_model: str | None) -> Path | None:
    """The base model's local directory (for the license its card states), or None."""
    from ..models.loading import ModelLoadError, resolve_model_path

    if not base_model:
        return None
    try:
        path = Path(resolve_model_path(str(base_model)))
    except ModelLoadError:
        return None
    return path if path.is_dir() else None


def record_evaluation(export_dir: str | Path, rows: list[Mapping[str, Any]], source: str) -> None:
    """Add evaluation figures (``{"task", "metric", "base", "pruned"}`` rows, x100) to an export's
    ``pruning_info.json`` (``evaluation``) and re-render its model card. Each file is replaced atomically (written
    beside it, then renamed), so a reader never sees half a file."""
    import os

    from ..errors import ModelDirError
    from ..pruning_info import PRUNING_INFO_FILE, PruningInfo

    export_dir = Path(export_dir)
    info = PruningInfo.load(export_dir)
    if info is None:
        raise ModelDirError(f"{export_dir / PRUNING_INFO_FILE}: not an export of this project")
    info.evaluation = {"source": source, "rows": [dict(r) for r in rows]}
    info.write(export_dir)
    card = export_dir / "README.md"
    tmp = card.with_name(f".{card.name}.tmp")
    tmp.write_text(render(info.to_json(), source_dir(info.base_model)), encoding="utf-8")
    os.replace(tmp, card)
