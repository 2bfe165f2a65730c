"""Plan an export: check the arguments and masks, prune a float32 copy, choose the layout, build the state dict
and config. Pure: nothing here touches the filesystem.

``make_plan`` computes the masked backbone's output on a probe batch (the reference every later check compares
with), prunes a deep copy with the validated ``Masks`` and requires its plain forward to equal that reference, then
chooses one of three layouts:

* nothing pruned inside the kept layers (all heads, one intermediate size): the stock
  ``BertModel`` / ``XLMRobertaModel`` / ``MPNetModel`` config, loadable without remote code;
* pruned heads or per-layer intermediate sizes: ``modeling_pruned.py`` classes, named in ``config.json``'s
  ``auto_map`` under the stock ``model_type`` (load with ``trust_remote_code=True``);
* ``vanilla=True``: pruned heads are zero-padded back to full width and intermediate sizes to the
  largest kept one (exactly the same outputs), so the stock class loads it. MPNet's kept heads go back to their
  base slots, because a head's slot is the column of the shared relative-position bias it adds. A removed
  attention / FFN sublayer has no such representation (post-LayerNorm: zero weights give LayerNorm(x), not x),
  so a vanilla export of one is refused.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.families import family_of
from ..models.heads import COLBERT_FILE, POOLING_MODES, SPARSE_FILE
from ..models.masks import Masks
from ..shapes import EncoderShape
from ..trust import MODELING_FILE
from . import modeling_pruned
from .verify import ExportError, check_close, max_abs_diff_on_tokens

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


# Config keys that describe the source model/checkpoint rather than the exported one.
_CONFIG_DROP = ("architectures", "auto_map", "model_type", "_name_or_path", "name_or_path", "transformers_version",
                "heads_per_layer", "intermediate_per_layer", "attention_head_size", "has_pooler", "pruned_heads",
                "attention_kept_per_layer", "ffn_kept_per_layer",
                "dtype", "torch_dtype", "_commit_hash", "_attn_implementation_autoset",
                "relative_attention_heads_per_layer")


@dataclass
class ExportPlan:
    """Everything an export writes and checks, computed before anything is written.

    Args:
        probe: the tokenized probe batch (``input_ids``, ``attention_mask``, ``token_type_ids``) on the backbone's
            device.
        reference: the masked float32 backbone's ``last_hidden_state`` on it (what every check compares with).
        kept: ``prune_params``' record of the kept layers and heads (base indices).
        pruned_diff: max |pruned copy - reference| on the real tokens (checked against ``atol`` already).
        base_shape / pruned_shape / exported_shape: before pruning, after it, and as saved (``vanilla`` pads).
        layout: ``family``, ``custom`` (ships ``modeling_pruned.py``), ``vanilla``, ``full_heads``,
            ``config_class``, ``model_class``, ``source_dtype`` and ``dtype`` (the saved weights').
        state: the HF-named state dict to save, in ``dtype``.
        config: the transformers config to save.
        dtype: the torch dtype the weights are saved in.
        base_config: the (pruned copy's) source config, for the sentence-transformers files.
    """

    probe: dict[str, torch.Tensor]
    reference: torch.Tensor
    kept: dict[str, Any]
    pruned_diff: float
    base_shape: EncoderShape
    pruned_shape: EncoderShape
    exported_shape: EncoderShape
    layout: dict[str, Any]
    state: dict[str, torch.Tensor] | None
    config: Any
    dtype: torch.dtype
    base_config: Any

    @property
    def state_bytes(self) -> int:
        """Bytes of the weights to save (the free-space check)."""
        return sum(t.numel() * t.element_size() for t in (self.state or {}).values())


def make_plan(backbone, tokenizer, masks: Masks | None, probe_texts: Sequence[str] | None, vanilla: bool,
              atol: float, dtype: str = "float32") -> ExportPlan:
    """Reference output, pruned copy (checked against it within ``atol``), export layout, state dict and config.

    Everything is computed on a float32 copy (the backbone itself is never touched): folding soft mask
    values into half-precision weights would round them twice, and a half-precision reference would hide
    real differences behind rounding noise. Only the finished state dict is cast to ``dtype`` (the saved
    weights are then the float32 pruned weights rounded once).
    """
    torch_dtype = EXPORT_DTYPES[dtype]
    texts = list(probe_texts) if probe_texts is not None else list(DEFAULT_PROBE_TEXTS)
    probe = probe_batch(tokenizer, backbone, texts)
    source_dtype = next(backbone.parameters()).dtype
    work = copy.deepcopy(backbone).float()
    base_shape = work.shape
    # Reference: the masked (unpruned) model in eval mode.
    reference = forward_masked(work, probe, masks)

    # Prune and check the plain forward against the reference before anything is written.
    try:
        if masks is not None:
            kept = work.prune_params(masks)
        else:
            kept = {"kept_layers": list(range(len(work.encoder.layer))),
                    "kept_heads": [list(range(h)) for h in work.shape.heads_per_layer]}
    except (ValueError, RuntimeError, IndexError) as exc:
        raise ExportError(f"prune_params failed: {exc}") from exc
    pruned_diff = max_abs_diff_on_tokens(forward_masked(work, probe, None), reference, probe["attention_mask"])
    check_close("pruned-forward check (physically pruned copy vs masked backbone)", pruned_diff, atol)

    layout = choose_layout(work, vanilla)
    layout["source_dtype"] = str(source_dtype).replace("torch.", "")
    layout["dtype"] = dtype
    state, exported_shape = export_state_dict(work, vanilla)
    if torch_dtype != torch.float32:
        state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    return ExportPlan(probe=probe, reference=reference, kept=kept, pruned_diff=pruned_diff, base_shape=base_shape,
                      pruned_shape=work.shape, exported_shape=exported_shape, layout=layout, state=state,
                      config=build_config(work, exported_shape, layout, torch_dtype), dtype=torch_dtype,
                      base_config=work.config)


# ====================================================================== argument checks
def export_dtype_name(dtype: Any) -> str:
    """``dtype`` (a name of ``EXPORT_DTYPES`` or the torch dtype) as its name; ``ExportError`` listing the choices
    for anything else."""
    for name, value in EXPORT_DTYPES.items():
        if dtype == name or dtype is value:
            return name
    raise ExportError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")


def check_arguments(backbone, tokenizer, pooling, sparse_head, colbert_head, atol) -> None:
    """``ExportError`` for an argument the export cannot use (checked before anything is computed)."""
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


def jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON (tensors, paths, numpy scalars, ``to_dict`` objects converted); ``ExportError`` naming
    ``where`` for anything else."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict(), where)
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


def probe_batch(tokenizer, backbone, texts: list[str]) -> dict[str, torch.Tensor]:
    """``texts`` tokenized (padded, at most 128 tokens) on the backbone's device: the input of every check."""
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ExportError("probe_texts must be a non-empty list of non-empty strings")
    batch = tokenizer(texts, padding=True, truncation=True, max_length=_max_tokens(backbone), return_tensors="pt")
    device = next(backbone.parameters()).device
    probe = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if int(probe["input_ids"].max()) >= backbone.embeddings.word_embeddings.num_embeddings:
        raise ExportError("the tokenizer produces ids beyond the backbone's vocabulary: wrong tokenizer?")
    return probe


@torch.no_grad()
def forward_masked(backbone, probe: Mapping[str, torch.Tensor], masks: Masks | None) -> torch.Tensor:
    """``last_hidden_state`` of ``backbone`` in eval mode on ``probe`` with ``masks`` (None: the plain forward)."""
    was_training = backbone.training
    backbone.eval()
    try:
        return backbone(probe["input_ids"], probe["attention_mask"], token_type_ids=probe.get("token_type_ids"),
                        **(masks or Masks()).as_kwargs()).detach()
    finally:
        backbone.train(was_training)


# ====================================================================== config and weights
def choose_layout(pruned, vanilla: bool) -> dict[str, Any]:
    """Stock classes when they fit the pruned shape (or ``vanilla`` pads it to one), else ``modeling_pruned``'s."""
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


def export_state_dict(pruned, vanilla: bool) -> tuple[dict[str, torch.Tensor], EncoderShape]:
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


def build_config(pruned, shape: EncoderShape, layout: Mapping[str, Any], dtype: torch.dtype = torch.float32):
    """The transformers config of the export: the source's settings with the exported shape, and for the custom
    layout the per-layer widths and ``auto_map``."""
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
