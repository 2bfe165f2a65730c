"""Structurally pruned BERT / XLM-RoBERTa encoders for ``transformers`` (loaded with ``trust_remote_code=True``).

This file is copied next to ``config.json`` by the pruning export. It is self-contained (imports only
torch and transformers) so an export directory works without the pruning package installed.

A pruned layer keeps the stock layout and parameter names but may have fewer attention heads (of
unchanged head size) and a smaller intermediate size than its neighbours. The per-layer widths are
read from the config:

* ``heads_per_layer``: number of attention heads of each layer (0 is allowed: the attention block
  then adds only the output bias before its LayerNorm);
* ``intermediate_per_layer``: intermediate (FFN) size of each layer (0 is allowed);
* ``attention_head_size``: head size, unchanged by pruning;
* ``has_pooler``: whether the model has the (unused by embedders) CLS pooler;
* ``attention_kept_per_layer`` / ``ffn_kept_per_layer`` (optional, all true when absent): false where the
  layer's whole attention (FFN) sublayer was removed. The layers are post-LayerNorm, and a removed sublayer
  is an exact identity with no parameters at all (no weights, biases or LayerNorm): its width is 0.

The classes subclass the stock ``BertModel`` / ``XLMRobertaModel`` and only resize each layer's
Linear modules and the attention modules' head bookkeeping (``num_attention_heads``,
``attention_head_size``, ``all_head_size``, ``scaling``), so the stock forward, attention kernels
and weight loading are used unchanged.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel


def kept_sublayers(config) -> tuple[list[bool], list[bool]]:
    """``(attention_kept_per_layer, ffn_kept_per_layer)`` of a config (all true when absent), validated."""
    n_layers = int(config.num_hidden_layers)
    out = []
    for name in ("attention_kept_per_layer", "ffn_kept_per_layer"):
        flags = getattr(config, name, None)
        flags = [True] * n_layers if flags is None else [bool(f) for f in flags]
        if len(flags) != n_layers:
            raise ValueError(f"config.{name} has {len(flags)} entries but num_hidden_layers is {n_layers}")
        out.append(flags)
    return out[0], out[1]


def pruned_widths(config) -> tuple[int, list[int], list[int]]:
    """``(head_size, heads_per_layer, intermediate_per_layer)`` of a (pruned or stock) config, validated."""
    n_layers = int(config.num_hidden_layers)
    head_size = getattr(config, "attention_head_size", None) or config.hidden_size // config.num_attention_heads
    heads = getattr(config, "heads_per_layer", None)
    inter = getattr(config, "intermediate_per_layer", None)
    heads = [int(h) for h in heads] if heads is not None else [int(config.num_attention_heads)] * n_layers
    inter = [int(i) for i in inter] if inter is not None else [int(config.intermediate_size)] * n_layers
    for name, widths in (("heads_per_layer", heads), ("intermediate_per_layer", inter)):
        if len(widths) != n_layers:
            raise ValueError(f"config.{name} has {len(widths)} entries but num_hidden_layers is {n_layers}")
        if any(w < 0 for w in widths):
            raise ValueError(f"config.{name} has a negative width: {widths}")
    if int(head_size) <= 0:
        raise ValueError(f"config.attention_head_size must be positive, got {head_size}")
    return int(head_size), heads, inter


class NoHeadSelfAttention(nn.Module):
    """Self-attention of a layer whose heads were all pruned: its context is empty (width 0).

    ``query``/``key``/``value`` are kept as 0-row Linear layers so the parameter names (and the
    state dict) are the same as in every other layer.
    """

    def __init__(self, hidden_size: int, head_size: int) -> None:
        super().__init__()
        self.num_attention_heads = 0
        self.attention_head_size = head_size
        self.all_head_size = 0
        self.scaling = head_size ** -0.5
        self.query = _new_linear(hidden_size, 0)
        self.key = _new_linear(hidden_size, 0)
        self.value = _new_linear(hidden_size, 0)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


class RemovedAttention(nn.Module):
    """A removed attention sublayer (residual and LayerNorm included): returns its input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states, None


class RemovedIntermediate(nn.Module):
    """The intermediate half of a removed FFN sublayer: passes its input on to ``RemovedOutput``."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


class RemovedOutput(nn.Module):
    """The output half of a removed FFN sublayer (dense, residual, LayerNorm): returns the attention output."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return input_tensor


def _new_linear(in_features: int, out_features: int, **kwargs) -> nn.Linear:
    # A layer with no head / intermediate unit left has 0-row Linear layers; initialising them is a
    # harmless no-op that torch warns about.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features, **kwargs)


def _linear(module: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    if module.in_features == in_features and module.out_features == out_features:
        return module
    return _new_linear(in_features, out_features, device=module.weight.device, dtype=module.weight.dtype)


def resize_layers(model: nn.Module) -> None:
    """Give every encoder layer of a stock BERT-family model the widths its config asks for (idempotent)."""
    config = model.config
    head_size, heads, inter = pruned_widths(config)
    attention_kept, ffn_kept = kept_sublayers(config)
    d = config.hidden_size
    layers = model.encoder.layer
    if len(layers) != len(heads):
        raise ValueError(f"model has {len(layers)} layers, config.heads_per_layer has {len(heads)} entries")
    for layer, n_heads, size, has_attention, has_ffn in zip(layers, heads, inter, attention_kept, ffn_kept):
        if has_ffn:
            layer.intermediate.dense = _linear(layer.intermediate.dense, d, size)
            layer.output.dense = _linear(layer.output.dense, size, d)
        else:
            layer.intermediate, layer.output = RemovedIntermediate(), RemovedOutput()
        if not has_attention:
            layer.attention = RemovedAttention()
            continue
        attention = layer.attention
        width = n_heads * head_size
        if n_heads == 0:
            if not isinstance(attention.self, NoHeadSelfAttention):
                attention.self = NoHeadSelfAttention(d, head_size)
        else:
            sa = attention.self
            sa.query = _linear(sa.query, d, width)
            sa.key = _linear(sa.key, d, width)
            sa.value = _linear(sa.value, d, width)
            sa.num_attention_heads = n_heads
            sa.attention_head_size = head_size
            sa.all_head_size = width
            sa.scaling = head_size ** -0.5
        attention.output.dense = _linear(attention.output.dense, width, d)


class PrunedBertConfig(BertConfig):
    """``BertConfig`` plus per-layer widths (``heads_per_layer``, ``intermediate_per_layer``, ...)."""

    model_type = "pruned-bert"


class PrunedXLMRobertaConfig(XLMRobertaConfig):
    """``XLMRobertaConfig`` plus per-layer widths; the model type keeps "roberta" (XLM-R position ids)."""

    model_type = "pruned-xlm-roberta"


class PrunedBertModel(BertModel):
    config_class = PrunedBertConfig

    def __init__(self, config, add_pooling_layer: bool | None = None) -> None:
        if add_pooling_layer is None:
            add_pooling_layer = bool(getattr(config, "has_pooler", True))
        super().__init__(config, add_pooling_layer=add_pooling_layer)

    def post_init(self) -> None:
        # Resize before the stock post_init so weight init and bookkeeping see the final modules.
        resize_layers(self)
        super().post_init()


class PrunedXLMRobertaModel(XLMRobertaModel):
    config_class = PrunedXLMRobertaConfig

    def __init__(self, config, add_pooling_layer: bool | None = None) -> None:
        if add_pooling_layer is None:
            add_pooling_layer = bool(getattr(config, "has_pooler", True))
        super().__init__(config, add_pooling_layer=add_pooling_layer)

    def post_init(self) -> None:
        resize_layers(self)
        super().post_init()


__all__ = ["PrunedBertConfig", "PrunedBertModel", "PrunedXLMRobertaConfig", "PrunedXLMRobertaModel",
           "NoHeadSelfAttention", "RemovedAttention", "RemovedIntermediate", "RemovedOutput", "kept_sublayers",
           "pruned_widths", "resize_layers"]
