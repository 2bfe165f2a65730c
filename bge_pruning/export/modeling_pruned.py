"""Structurally pruned BERT / XLM-RoBERTa / MPNet encoders for ``transformers``.

Loaded with ``trust_remote_code=True``.

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
* ``relative_attention_heads_per_layer`` (MPNet): for each layer, the base-model index of each kept head.
  ``encoder.relative_attention_bias`` keeps one column per base head and is shared by all layers; a kept
  head adds the column of the head it was, so layers that kept different heads read different columns.
* ``attention_kept_per_layer`` / ``ffn_kept_per_layer`` (optional, all true when absent): false where the
  layer's whole attention (FFN) sublayer was removed. The layers are post-LayerNorm, and a removed sublayer
  is an exact identity with no parameters at all (no weights, biases or LayerNorm): its width is 0.

The classes subclass the stock ``BertModel`` / ``XLMRobertaModel`` / ``MPNetModel``. BERT and XLM-R layers
only get resized Linear modules and head bookkeeping (``num_attention_heads``, ``attention_head_size``,
``all_head_size``, ``scaling``), so the stock forward, attention kernels and weight loading are used
unchanged. An MPNet layer's ``attention.attn`` is replaced by :class:`PrunedMPNetSelfAttention` (same
parameter names ``q``, ``k``, ``v``, ``o``), which selects its heads' columns of the shared position bias.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel, XLMRobertaConfig, XLMRobertaModel


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

    # The stock model type, so AutoConfig and AutoTokenizer (which loads the config first) resolve this directory
    # with no remote code and no trust prompt; only AutoModel's auto_map entry runs this file, and without
    # trust_remote_code a stock class refuses the per-layer weights (size mismatch), so nothing loads silently wrong.
    model_type = "bert"


class PrunedXLMRobertaConfig(XLMRobertaConfig):
    """``XLMRobertaConfig`` plus per-layer widths."""

    # The stock model type, so AutoConfig and AutoTokenizer (which loads the config first) resolve this directory
    # with no remote code and no trust prompt; only AutoModel's auto_map entry runs this file, and without
    # trust_remote_code a stock class refuses the per-layer weights (size mismatch), so nothing loads silently wrong.
    model_type = "xlm-roberta"


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


class PrunedMPNetSelfAttention(nn.Module):
    """MPNet's ``attention.attn`` for ``len(bias_heads)`` heads (0 allowed) of ``head_size`` each.

    ``bias_heads[j]`` is the base-model index of head j: the column of the encoder's relative position
    bias (computed once for all base heads by the stock ``MPNetEncoder``) that this head adds to its
    scores. The computation is the stock ``MPNetSelfAttention``'s; with 0 heads the block is ``o``'s bias.
    """

    def __init__(self, hidden_size: int, head_size: int, bias_heads: list[int], dropout: float) -> None:
        super().__init__()
        n_heads = len(bias_heads)
        self.num_attention_heads = n_heads
        self.attention_head_size = head_size
        self.all_head_size = n_heads * head_size
        # A plain list, not a buffer: transformers builds models on the meta device and would leave a
        # non-persistent buffer uninitialised.
        self.bias_heads = [int(h) for h in bias_heads]
        self.q = _new_linear(hidden_size, self.all_head_size)
        self.k = _new_linear(hidden_size, self.all_head_size)
        self.v = _new_linear(hidden_size, self.all_head_size)
        self.o = _new_linear(self.all_head_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, *args, output_attentions: bool = False,
                **kwargs):
        # transformers 5 calls attn(h, mask, position_bias, ...); transformers 4 attn(h, mask, head_mask,
        # position_bias, ...): the position bias is the last positional argument either way.
        position_bias = args[-1] if args else kwargs.get("position_bias")
        b, t, _ = hidden_states.shape
        if self.num_attention_heads == 0:
            out = self.o(hidden_states.new_zeros(b, t, 0))
            return (out, hidden_states.new_zeros(b, 0, t, t)) if output_attentions else (out,)

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(hidden_states).view(b, t, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

        q, k, v = split(self.q), split(self.k), split(self.v)
        scores = torch.matmul(q, k.transpose(-1, -2)) / (self.attention_head_size ** 0.5)
        if position_bias is not None:
            index = torch.tensor(self.bias_heads, dtype=torch.long, device=position_bias.device)
            scores = scores + position_bias.index_select(1, index)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, t, self.all_head_size)
        out = self.o(context)
        return (out, probs) if output_attentions else (out,)


def resize_mpnet_layers(model: nn.Module) -> None:
    """Give every layer of a stock ``MPNetModel`` the widths and bias columns its config asks for (idempotent)."""
    config = model.config
    head_size, heads, inter = pruned_widths(config)
    d = config.hidden_size
    n_base = int(config.num_attention_heads)
    per_layer = getattr(config, "relative_attention_heads_per_layer", None)
    per_layer = [list(range(h)) for h in heads] if per_layer is None else [[int(c) for c in row] for row in per_layer]
    layers = model.encoder.layer
    if not len(layers) == len(heads) == len(per_layer):
        raise ValueError(f"model has {len(layers)} layers, config.heads_per_layer has {len(heads)} entries and "
                         f"config.relative_attention_heads_per_layer {len(per_layer)}")
    attention_kept, ffn_kept = kept_sublayers(config)
    for i, (layer, n_heads, size, cols) in enumerate(zip(layers, heads, inter, per_layer)):
        if len(cols) != n_heads or any(not 0 <= c < n_base for c in cols):
            raise ValueError(f"config.relative_attention_heads_per_layer[{i}] = {cols} does not fit layer {i} "
                             f"({n_heads} heads, bias columns 0..{n_base - 1})")
        if ffn_kept[i]:
            layer.intermediate.dense = _linear(layer.intermediate.dense, d, size)
            layer.output.dense = _linear(layer.output.dense, size, d)
        else:
            layer.intermediate, layer.output = RemovedIntermediate(), RemovedOutput()
        if not attention_kept[i]:
            layer.attention = RemovedAttention()
            continue
        attn = layer.attention.attn
        if not (isinstance(attn, PrunedMPNetSelfAttention) and attn.bias_heads == cols
                and attn.attention_head_size == head_size):
            layer.attention.attn = PrunedMPNetSelfAttention(d, head_size, cols, config.attention_probs_dropout_prob)


class PrunedMPNetConfig(MPNetConfig):
    """``MPNetConfig`` plus per-layer widths and ``relative_attention_heads_per_layer``."""

    model_type = "mpnet"  # the stock type: see PrunedBertConfig


class PrunedMPNetModel(MPNetModel):
    config_class = PrunedMPNetConfig

    def __init__(self, config, add_pooling_layer: bool | None = None) -> None:
        if add_pooling_layer is None:
            add_pooling_layer = bool(getattr(config, "has_pooler", True))
        super().__init__(config, add_pooling_layer=add_pooling_layer)

    def post_init(self) -> None:
        resize_mpnet_layers(self)
        super().post_init()


__all__ = ["PrunedBertConfig", "PrunedBertModel", "PrunedXLMRobertaConfig", "PrunedXLMRobertaModel",
           "PrunedMPNetConfig", "PrunedMPNetModel", "PrunedMPNetSelfAttention", "NoHeadSelfAttention",
           "RemovedAttention", "RemovedIntermediate", "RemovedOutput", "kept_sublayers", "pruned_widths",
           "resize_layers", "resize_mpnet_layers"]
