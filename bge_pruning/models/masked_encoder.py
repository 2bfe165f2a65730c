"""A BERT-family encoder (BERT, XLM-RoBERTa, MPNet) that accepts L0 masks and can be physically pruned.

Module and parameter names are exactly HF's (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, MPNet's ``encoder.layer.N.attention.attn.q``, ...), so an HF
state dict loads with no missing or unexpected keys and export is an identity mapping of names. Each layer
keeps its own number of heads and intermediate units, so a pruned model is just this module with narrower
Linear layers. What differs between families (``models/families.py``) lives in the embeddings, the
attention module of a layer and ``Encoder.attention_mask``; ``Layer`` and the backbone's forward and
pruning are shared.

MPNet: ``encoder.relative_attention_bias`` (buckets x base heads) is shared by all layers and added to the
attention scores. Each layer's attention keeps ``bias_heads``, the base-model head index of each of its
heads, and reads those columns, so a layer pruned to heads {0, 5, 7} still adds the bias those heads had.

Masks (LLM-Shearing's names):
  * ``head_z`` [L, H]: scales each head's context vector before ``attention.output.dense``;
  * ``intermediate_z`` [L, I]: scales the activations before ``output.dense``;
  * ``layer_z`` [L]: BERT/XLM-R are post-LayerNorm, so a layer is mixed with its input,
    ``z * layer(x) + (1 - z) * x``; z = 0 is an exact identity and the layer can be dropped;
  * ``head_layer_z`` / ``mlp_z`` [L] (CoFi's sublayer gates): the same interpolation around each whole
    post-LN sublayer, residual and LayerNorm included: ``a = z_att * Attention(x) + (1 - z_att) * x``,
    ``y = z_mlp * FFN_block(a) + (1 - z_mlp) * a``. z = 0 is an exact identity, so the sublayer (weights,
    biases, LayerNorm) is removed on pruning. (CoFi scales the sublayer's output before its residual +
    LayerNorm instead, which at z = 0 still applies the LayerNorm and so is not removable.)
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from ..shapes import EncoderShape
from .families import family_of
from .masks import Masks, validate_masks

MaskRows = torch.Tensor | Sequence[torch.Tensor] | None


class Embeddings(nn.Module):
    """Word + position (+ token-type) embeddings, LayerNorm, dropout (BERT, XLM-R and MPNet flavours)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        family = family_of(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        # MPNet has no token types.
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, config.hidden_size)
                                      if family.token_types else None)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # XLM-RoBERTa and MPNet number positions from padding_idx + 1 and give padding the padding position.
        self.roberta_positions = family.positions == "padding"
        self.padding_idx = family.position_padding_idx(config)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.roberta_positions:
            not_pad = input_ids.ne(self.padding_idx).int()
            return (torch.cumsum(not_pad, dim=1) * not_pad).long() + self.padding_idx
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids(input_ids))
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Q/K/V projections for ``num_heads`` heads of ``head_dim`` each; SDPA; optional head mask."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.query = nn.Linear(hidden_size, num_heads * head_dim)
        self.key = nn.Linear(hidden_size, num_heads * head_dim)
        self.value = nn.Linear(hidden_size, num_heads * head_dim)
        self.dropout_p = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, head_z: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        if self.num_heads == 0:
            return x.new_zeros(b, t, 0)

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            split(self.query), split(self.key), split(self.value),
            attn_mask=attn_mask, dropout_p=self.dropout_p if self.training else 0.0)
        if head_z is not None:
            ctx = ctx * head_z.to(ctx.dtype).view(1, -1, 1, 1)
        return ctx.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)


class SelfOutput(nn.Module):
    """``dense`` (heads -> hidden), dropout, residual, post-LayerNorm."""

    def __init__(self, in_features: int, hidden_size: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    """BERT / XLM-R attention block: ``self.{query,key,value}``, ``output.{dense,LayerNorm}``."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, config: Any) -> None:
        super().__init__()
        self.self = SelfAttention(hidden_size, num_heads, head_dim, config.attention_probs_dropout_prob)
        self.output = SelfOutput(num_heads * head_dim, hidden_size, config.layer_norm_eps, config.hidden_dropout_prob)

    @property
    def num_heads(self) -> int:
        return self.self.num_heads

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, head_z: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, attn_mask, head_z), x)

    def projections(self) -> tuple[tuple[nn.Module, str], ...]:
        """(module, attribute) of the Q/K/V projections (rows per head) and the output projection (columns)."""
        return (self.self, "query"), (self.self, "key"), (self.self, "value"), (self.output, "dense")

    def head_slots(self) -> list[int]:
        """Where each head goes when padded back to the base width (``--vanilla``): BERT heads are
        interchangeable, so kept heads come first."""
        return list(range(self.num_heads))

    def keep_heads(self, keep: torch.Tensor) -> None:
        self.self.num_heads = int(keep.numel())


class MPNetSelfAttention(nn.Module):
    """MPNet's ``attention.attn``: Q/K/V, SDPA with the relative position bias, optional head mask, ``o``.

    ``attn_mask`` is ``Encoder.attention_mask``'s [B, H_base, T, T] float tensor (bias of every base head
    plus the padding mask); this layer reads the columns of its own heads (``bias_heads``). The head mask
    scales each head's context before ``o``, exactly as BERT's before ``attention.output.dense``.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.q = nn.Linear(hidden_size, num_heads * head_dim)
        self.k = nn.Linear(hidden_size, num_heads * head_dim)
        self.v = nn.Linear(hidden_size, num_heads * head_dim)
        self.o = nn.Linear(num_heads * head_dim, hidden_size)
        self.dropout_p = dropout
        # Not in the state dict (HF has no such key): rebuilt from config.relative_attention_heads_per_layer.
        self.register_buffer("bias_heads", torch.arange(num_heads), persistent=False)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, head_z: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        if self.num_heads == 0:
            return self.o(x.new_zeros(b, t, 0))

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q = split(self.q)
        mask = attn_mask.index_select(1, self.bias_heads).to(q.dtype)
        ctx = F.scaled_dot_product_attention(q, split(self.k), split(self.v), attn_mask=mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        if head_z is not None:
            ctx = ctx * head_z.to(ctx.dtype).view(1, -1, 1, 1)
        return self.o(ctx.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class MPNetAttention(nn.Module):
    """MPNet attention block: ``attn.{q,k,v,o}``, dropout, residual, ``LayerNorm`` (post-LN)."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, config: Any) -> None:
        super().__init__()
        self.attn = MPNetSelfAttention(hidden_size, num_heads, head_dim, config.attention_probs_dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    @property
    def num_heads(self) -> int:
        return self.attn.num_heads

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, head_z: torch.Tensor | None) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.attn(x, attn_mask, head_z)) + x)

    def projections(self) -> tuple[tuple[nn.Module, str], ...]:
        return (self.attn, "q"), (self.attn, "k"), (self.attn, "v"), (self.attn, "o")

    def head_slots(self) -> list[int]:
        """A head padded back to the stock layout must sit at its base index: that column of the bias is its."""
        return self.attn.bias_heads.tolist()

    def keep_heads(self, keep: torch.Tensor) -> None:
        self.attn.num_heads = int(keep.numel())
        self.attn.bias_heads = self.attn.bias_heads[keep.to(self.attn.bias_heads.device)]


_ATTENTION = {"bert": Attention, "mpnet": MPNetAttention}


class Intermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class Layer(nn.Module):
    """One post-LN encoder layer; ``attention=False`` / ``ffn=False`` build it with that sublayer removed
    (``None``: no parameters, an identity in forward)."""

    def __init__(self, config: Any, num_heads: int, head_dim: int, intermediate_size: int,
                 attention: bool = True, ffn: bool = True) -> None:
        super().__init__()
        d = config.hidden_size
        self.attention = _ATTENTION[family_of(config).attention](d, num_heads, head_dim, config) if attention else None
        self.intermediate = Intermediate(d, intermediate_size, config.hidden_act) if ffn else None
        self.output = (SelfOutput(intermediate_size, d, config.layer_norm_eps, config.hidden_dropout_prob)
                       if ffn else None)

    @property
    def has_attention(self) -> bool:
        return self.attention is not None

    @property
    def has_ffn(self) -> bool:
        return self.output is not None

    @property
    def num_heads(self) -> int:
        return self.attention.num_heads if self.attention is not None else 0

    @property
    def head_dim(self) -> int:
        return self.attention.projections()[0][0].head_dim

    @property
    def intermediate_size(self) -> int:
        return self.intermediate.dense.out_features if self.intermediate is not None else 0

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, head_z: torch.Tensor | None = None,
                intermediate_z: torch.Tensor | None = None, head_layer_z: torch.Tensor | None = None,
                mlp_z: torch.Tensor | None = None) -> torch.Tensor:
        if self.attention is None:  # removed: an identity
            a = x
        else:
            a = self.attention(x, attn_mask, head_z)
            if head_layer_z is not None:
                z = head_layer_z.to(a.dtype)
                a = z * a + (1 - z) * x
        if self.output is None:
            return a
        h = self.intermediate(a)
        if intermediate_z is not None:
            h = h * intermediate_z.to(h.dtype)
        y = self.output(h, a)
        if mlp_z is not None:
            z = mlp_z.to(y.dtype)
            y = z * y + (1 - z) * a
        return y


class Encoder(nn.Module):
    def __init__(self, config: Any, shape: EncoderShape) -> None:
        super().__init__()
        with warnings.catch_warnings():  # a layer pruned to 0 heads/units has 0-row Linears; torch warns on init
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.layer = nn.ModuleList(Layer(config, h, shape.head_dim, i, a, f) for h, i, a, f in zip(
                shape.heads_per_layer, shape.intermediate_per_layer, shape.attention_kept_per_layer,
                shape.ffn_kept_per_layer))
        self.relative_attention_bias = None
        if family_of(config).relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(shape.relative_attention_buckets,
                                                        shape.relative_attention_heads)
            # A pruned export says which base heads each layer kept; a stock config keeps them all.
            per_layer = getattr(config, "relative_attention_heads_per_layer", None) or [
                list(range(h)) for h in shape.heads_per_layer]
            if len(per_layer) != len(self.layer):
                raise ValueError(f"config.relative_attention_heads_per_layer has {len(per_layer)} rows, "
                                 f"the model has {len(self.layer)} layers")
            for i, (layer, heads) in enumerate(zip(self.layer, per_layer)):
                heads = torch.as_tensor(list(heads), dtype=torch.long)
                if heads.numel() != layer.num_heads or (heads.numel() and (
                        heads.min() < 0 or heads.max() >= shape.relative_attention_heads)):
                    raise ValueError(f"config.relative_attention_heads_per_layer[{i}] = {heads.tolist()} does not "
                                     f"fit layer {i} ({layer.num_heads} heads of {shape.relative_attention_heads})")
                if layer.attention is not None:  # a removed attention sublayer has no heads and reads no bias
                    layer.attention.attn.bias_heads = heads

    def attention_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """What every layer's attention adds to its scores: BERT/XLM-R a boolean SDPA mask [B, 1, 1, T]
        (True = attend); MPNet a float [B, H_base, T, T] = relative position bias of every base head plus
        the padding mask (the dtype's minimum on padded keys, as HF's extended attention mask)."""
        keep = attention_mask.bool()[:, None, None, :]
        if self.relative_attention_bias is None:
            return keep
        t = attention_mask.shape[1]
        position = torch.arange(t, device=attention_mask.device)
        buckets = relative_position_bucket(position[None, :] - position[:, None])
        bias = self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, H, T, T]
        return bias.masked_fill(~keep, torch.finfo(bias.dtype).min)

    def relative_attention_heads(self) -> list[list[int]] | None:
        """The base head index of each kept head, per layer (MPNet), or None."""
        if self.relative_attention_bias is None:
            return None
        return [layer.attention.attn.bias_heads.tolist() if layer.attention is not None else []
                for layer in self.layer]


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """MPNet's (T5's bidirectional) bucket of each key-minus-query offset.

    Half of the buckets are for keys before the query, half for keys after; within a half, offsets below
    ``num_buckets / 4`` get one bucket each and larger ones share log-spaced buckets up to
    ``max_distance``. HF's MPNet always calls it with 32 buckets and distance 128 (whatever
    ``config.relative_attention_num_buckets`` says), so do we. Reference: Raffel et al. 2020 (T5), and
    ``MPNetEncoder.relative_position_bucket`` in transformers.
    """
    half = num_buckets // 2
    n = -relative_position
    ret = (n < 0).long() * half
    n = n.abs()
    max_exact = half // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).long()
    large = large.clamp(max=half - 1)
    return ret + torch.where(n < max_exact, n, large)


class Pooler(nn.Module):
    """HF's pooler (tanh(dense(CLS))): kept so checkpoints and exports map one-to-one; BGE-M3 does not use it."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


def _row(z: MaskRows, i: int) -> torch.Tensor | None:
    return None if z is None else z[i]


class MaskedBGEM3Backbone(nn.Module):
    """BERT-family encoder with L0 masks in forward and ``prune_params`` for physical pruning."""

    def __init__(self, config: Any, shape: EncoderShape | None = None) -> None:
        super().__init__()
        self.config = config
        shape = shape or EncoderShape.from_hf_config(config, has_pooler=True)
        self.head_dim = shape.head_dim
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config, shape)
        self.pooler = Pooler(config.hidden_size) if shape.has_pooler else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_hf_model(cls, hf_model: nn.Module) -> MaskedBGEM3Backbone:
        """Copy an HF ``BertModel``/``XLMRobertaModel``/``MPNetModel`` (or a pruned export) into a masked backbone.

        Raises if any key is missing or unexpected: a silent partial load is how models get
        re-initialised without anyone noticing.
        """
        config = hf_model.config
        has_pooler = getattr(hf_model, "pooler", None) is not None
        model = cls(config, EncoderShape.from_hf_config(config, has_pooler=has_pooler))
        state = {k: v for k, v in hf_model.state_dict().items() if not _is_buffer_key(k)}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(f"HF state dict does not match the masked backbone: missing={result.missing_keys} "
                               f"unexpected={result.unexpected_keys}")
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> MaskedBGEM3Backbone:
        """Load a BERT-family checkpoint (hub id or local directory) through ``transformers.AutoModel``."""
        from transformers import AutoModel

        hf_model = AutoModel.from_pretrained(name_or_path, **kwargs)
        return cls.from_hf_model(hf_model)

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> EncoderShape:
        bias = self.encoder.relative_attention_bias
        return EncoderShape(
            hidden_size=self.config.hidden_size,
            head_dim=self.head_dim,
            heads_per_layer=tuple(layer.num_heads for layer in self.encoder.layer),
            intermediate_per_layer=tuple(layer.intermediate_size for layer in self.encoder.layer),
            vocab_size=self.embeddings.word_embeddings.num_embeddings,
            max_position_embeddings=self.embeddings.position_embeddings.num_embeddings,
            type_vocab_size=(self.embeddings.token_type_embeddings.num_embeddings
                             if self.embeddings.token_type_embeddings is not None else 0),
            has_pooler=self.pooler is not None,
            relative_attention_buckets=bias.num_embeddings if bias is not None else 0,
            relative_attention_heads=bias.embedding_dim if bias is not None else 0,
            attention_kept_per_layer=tuple(layer.has_attention for layer in self.encoder.layer),
            ffn_kept_per_layer=tuple(layer.has_ffn for layer in self.encoder.layer),
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        head_z: MaskRows = None,
        intermediate_z: MaskRows = None,
        layer_z: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        head_layer_z: torch.Tensor | None = None,
        mlp_z: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``last_hidden_state`` [B, T, d] (and every layer's output if asked)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # SDPA mask: boolean, broadcast over heads and queries (True = attend), or MPNet's position bias + mask.
        attn_mask = self.encoder.attention_mask(attention_mask)
        x = self.embeddings(input_ids, token_type_ids)
        hidden_states = [x]
        for i, layer in enumerate(self.encoder.layer):
            y = layer(x, attn_mask, _row(head_z, i), _row(intermediate_z, i), _row(head_layer_z, i), _row(mlp_z, i))
            if layer_z is not None:
                z = layer_z[i].to(y.dtype)
                y = z * y + (1 - z) * x
            x = y
            hidden_states.append(x)
        return (x, hidden_states) if output_hidden_states else x

    # ------------------------------------------------------------------ physical pruning
    @torch.no_grad()
    def prune_params(self, zs: Masks | Mapping[str, Any]) -> dict[str, Any]:
        """Remove masked-out heads, intermediate units and layers; fold kept mask values into weights.

        ``zs`` holds deterministic masks (``head_z``, ``intermediate_z``, ``layer_z``, ``head_layer_z``,
        ``mlp_z``; any may be absent): a ``Masks`` from ``validate_masks``, or a dict that is validated here
        (``MaskError`` naming the bad key, before anything is modified). After this call the plain forward equals
        the masked forward with these masks. Layer and sublayer mask values must be exactly 0 or 1: in a post-LN
        block ``z*block(x) + (1-z)*x`` cannot be folded into weights for 0 < z < 1 (the L0 module's deterministic
        layer and sublayer masks are binary). A sublayer with z = 0 is removed (weights, biases, LayerNorm);
        a layer with both sublayers removed is an identity and is dropped like a layer with ``layer_z`` 0.
        Returns what was kept: ``{"kept_layers": [...], "kept_heads": [[...], ...]}`` (base indices), plus
        ``attention_kept`` / ``ffn_kept`` (one flag per kept layer) when sublayer masks were given.
        """
        masks = validate_masks(zs, self) or Masks()
        layers = list(self.encoder.layer)
        head_z, int_z = masks.head_z, masks.intermediate_z
        layer_z, att_z, mlp_z = masks.layer_z, masks.head_layer_z, masks.mlp_z

        kept_layers, kept_heads, new_layers = [], [], []
        for i, layer in enumerate(layers):
            if layer_z is not None and layer_z[i] == 0:
                continue
            if att_z is not None and att_z[i] == 0:
                layer.attention = None
            if mlp_z is not None and mlp_z[i] == 0:
                layer.intermediate = layer.output = None
            if not (layer.has_attention or layer.has_ffn):
                continue  # nothing left: the layer is an identity
            heads = (_prune_heads(layer, None if head_z is None else head_z[i])
                     if layer.has_attention else [])
            if int_z is not None and layer.has_ffn:
                _prune_intermediate(layer, int_z[i])
            kept_layers.append(i)
            kept_heads.append(heads)
            new_layers.append(layer)
        self.encoder.layer = nn.ModuleList(new_layers)
        kept: dict[str, Any] = {"kept_layers": kept_layers, "kept_heads": kept_heads}
        if att_z is not None or mlp_z is not None:
            kept["attention_kept"] = [layer.has_attention for layer in new_layers]
            kept["ffn_kept"] = [layer.has_ffn for layer in new_layers]
        return kept


def _is_buffer_key(key: str) -> bool:
    # HF registers position_ids / token_type_ids as (non-persistent) buffers in some versions.
    return key.endswith("embeddings.position_ids") or key.endswith("embeddings.token_type_ids")


def _select_linear(linear: nn.Linear, index: torch.Tensor, dim: int, scale: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0 = output rows, 1 = input columns)."""
    weight = linear.weight.index_select(dim, index).clone()
    if scale is not None:  # fold mask values into the input columns
        weight = weight * scale.to(weight.dtype).unsqueeze(0)
    bias = linear.bias
    if dim == 0:
        bias = bias.index_select(0, index)
    with warnings.catch_warnings():  # 0 kept rows/columns is legal (a layer pruned to no heads)
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    new.bias.copy_(bias)
    return new


def _prune_heads(layer: Layer, z: torch.Tensor | None) -> list[int]:
    attention = layer.attention
    if z is None:
        return list(range(attention.num_heads))
    (*qkv, (out, out_name)) = attention.projections()
    dh = layer.head_dim
    keep = torch.nonzero(z != 0).flatten()
    dims = (keep.unsqueeze(1) * dh + torch.arange(dh)).flatten().to(getattr(out, out_name).weight.device)
    for module, name in qkv:
        setattr(module, name, _select_linear(getattr(module, name), dims, dim=0))
    scale = z[keep].repeat_interleave(dh)
    setattr(out, out_name, _select_linear(getattr(out, out_name), dims, dim=1, scale=scale.to(dims.device)))
    attention.keep_heads(keep)
    return keep.tolist()


def _prune_intermediate(layer: Layer, z: torch.Tensor) -> None:
    keep = torch.nonzero(z != 0).flatten().to(layer.intermediate.dense.weight.device)
    layer.intermediate.dense = _select_linear(layer.intermediate.dense, keep, dim=0)
    layer.output.dense = _select_linear(layer.output.dense, keep, dim=1, scale=z.to(keep.device)[keep])
