"""``train.py CONFIG --print-config``: the resolved config and what it will train, without loading weights.

The base shape comes from the model's ``config.json`` only (``AutoConfig``: a local directory, an embedded
model, or the hub's cache), the counts from ``bge_pruning.shapes.count_params`` (the one source of parameter
counts), the target from ``bge_pruning.models.l0_module.parse_target`` (the same check the run makes).
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from .shapes import EncoderShape, count_params

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MB = 1e6


def base_shape(cfg: DictConfig) -> EncoderShape:
    """The shape of ``model.name_or_path`` from its config (no weights); ModelLoadError when it cannot be read."""
    from transformers import AutoConfig

    from .models.loading import ModelLoadError, resolve_model_path
    from .trust import is_own_export

    path = resolve_model_path(str(cfg.model.name_or_path))
    try:
        trust = bool(cfg.model.trust_remote_code) or is_own_export(path)
        hf = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"model.name_or_path: cannot read the config of {cfg.model.name_or_path} "
                             f"({first})") from None
    return EncoderShape.from_hf_config(hf)


def _label(shape: EncoderShape) -> str:
    heads, inter = sorted(set(shape.heads_per_layer)), sorted(set(shape.intermediate_per_layer))
    if len(heads) == 1 and len(inter) == 1:
        return f"{shape.n_layers}L/{heads[0]}H/{inter[0]}I"
    return f"{shape.n_layers}L, heads {list(shape.heads_per_layer)}, FFN {list(shape.intermediate_per_layer)}"


def checkpoint_bytes(cfg: DictConfig, base: EncoderShape) -> int:
    """An estimate of one Composer checkpoint of this run (float32): the model's weights (backbone at the base
    size, BGE-M3 heads, the layer-distillation map) plus DecoupledAdamW's two moments for each trained weight
    (the frozen pooler has none). The L0 module's few log-alphas and multipliers, the RNG and the clock are left
    out (under 0.1% for MiniLM); the teacher is outside the module tree and not saved."""
    counts = count_params(base)
    d = base.hidden_size
    extra = (d + 1 if cfg.model.heads.sparse else 0) + (d * d + d if cfg.model.heads.colbert else 0)
    extra += d * d + d if float(cfg.loss.distill_layers) > 0 else 0
    weights = counts.total + extra
    trained = weights - (counts.pooler if base.has_pooler else 0)
    return 4 * weights + 8 * trained


def describe(cfg: DictConfig) -> str:
    """The report: base -> target shape, parameter counts, export and checkpoint sizes (lines of text)."""
    from .models.l0_module import GlobalTarget, parse_target

    base = base_shape(cfg)
    b = count_params(base)
    lines = [f"model: {cfg.model.name_or_path}, base {_label(base)} (hidden {base.hidden_size}, "
             f"vocabulary {base.vocab_size:,})"]
    if cfg.model.vocab.corpus:
        lines.append("model.vocab: the vocabulary is trimmed before training; the counts below are before the trim")
    target_layers: int | None
    if cfg.stage == "finetune":
        lines.append("stage finetune: no masks, the shape stays the base's")
        target_label, target_layers = _label(base), b.encoder_layers
    else:
        target = parse_target(dict(cfg.model.l0_module.target_model), base, key="model.l0_module.target_model")
        if isinstance(target, GlobalTarget):
            target_label, target_layers = f"global target {target.n_params:,} encoder-layer params", target.n_params
            lines.append("global target: depth and each layer's heads and FFN units are learned; the export keeps "
                         "at most this many encoder-layer parameters")
        else:
            modules = set(cfg.model.l0_module.pruning_modules)
            shape = base.with_target(target.n_layers if "layer" in modules else base.n_layers,
                                     target.n_heads if "head" in modules else base.heads_per_layer[0],
                                     target.intermediate_size if "intermediate" in modules
                                     else base.intermediate_per_layer[0])
            target_label, target_layers = _label(shape), count_params(shape).encoder_layers
    target_total = b.total - b.encoder_layers + target_layers
    lines.append(f"shape: {_label(base)} -> {target_label}")
    width = max(len(f"{b.total:,}"), 12)
    lines.append(f"{'':22}{'base':>{width}}  {'target':>{width}}  target/base")
    for name, x, y in (("encoder-layer params", b.encoder_layers, target_layers), ("total params", b.total,
                                                                                 target_total)):
        lines.append(f"{name:22}{x:>{width},}  {y:>{width},}  {100 * y / x:10.1f}%")
    dtype = str(cfg.export.dtype)
    lines.append(f"export ({dtype}): model.safetensors about {DTYPE_BYTES[dtype] * target_total / MB:,.1f} MB")
    lines.append("training checkpoint (float32 weights + Adam moments): "
                 f"about {checkpoint_bytes(cfg, base) / MB:,.1f} MB each, keeping {_kept(cfg)}")
    return "\n".join(lines)


def _kept(cfg: DictConfig) -> str:
    n = int(cfg.train.save_num_checkpoints_to_keep)
    return "all" if n < 0 else str(n)


def print_config(cfg: DictConfig) -> str:
    """The resolved config as YAML, then ``describe`` as YAML comments (the whole output loads as a config). Paths
    with the older ``{run_name}`` placeholder are shown filled in, as the run will use them."""
    from .config import fill_run_name

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            return fill_run_name(node, str(cfg.run_name))
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    text = OmegaConf.to_yaml(OmegaConf.create(fill(OmegaConf.to_container(cfg, resolve=True))))
    return text + "\n" + "\n".join("# " + line for line in describe(cfg).splitlines()) + "\n"
