"""Encoder shapes and parameter accounting: the one source of truth for parameter counts.

Everything that counts parameters (the L0 module's expected size, the target configs, pruning_info.json,
benchmarks) goes through this module, so a count can never disagree with ``sum(p.numel())``.

A BERT-family encoder layer (BERT, XLM-RoBERTa) is, with d = hidden size and dh = head size:

* per attention head: Q, K, V rows (3·d·dh weights + 3·dh biases) and the head's d·dh columns of
  ``attention.output.dense``;
* per intermediate unit: one row of ``intermediate.dense`` (d weights + 1 bias) and one column of
  ``output.dense`` (d weights);
* per attention sublayer, whatever its width: ``attention.output.dense.bias`` and
  ``attention.output.LayerNorm`` (weight + bias) = 3·d;
* per FFN sublayer, whatever its width: ``output.dense.bias`` and ``output.LayerNorm`` = 3·d;
  so a layer with both sublayers has 6·d parameters that no head or unit owns.

A sublayer can also be *removed* (the sublayer gates ``head_layer`` / ``mlp`` of the L0 module): a removed
sublayer is an exact identity and has no parameters at all, which is not the same as a kept sublayer with
0 heads (or 0 FFN units): that one still adds its output bias and applies its LayerNorm. ``EncoderShape``
records this per layer in ``attention_kept_per_layer`` / ``ffn_kept_per_layer`` (all True by default).

MPNet's layer has the same parameters under other names (``attention.attn.{q,k,v,o}``,
``attention.LayerNorm``), so the per-head, per-unit and per-layer counts are the same. MPNet adds one
table shared by all layers, ``encoder.relative_attention_bias`` (buckets x base heads, 32 x 12 in
all-mpnet-base-v2). It is counted once, with the embeddings (it is a position table that no head, unit
or layer owns, so the L0 module's encoder-layer count does not include it). A pruned MPNet keeps the whole
table: each kept head reads the bias column of the head it was in the base model, and different layers
keep different heads, so no column can be dropped unless no layer uses it (the table is 384 parameters,
and keeping it whole keeps the state dict loadable by the stock ``MPNetModel``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def params_per_head(hidden_size: int, head_dim: int) -> int:
    """Parameters that belong to one attention head (removed with it)."""
    return 4 * hidden_size * head_dim + 3 * head_dim


def params_per_intermediate_unit(hidden_size: int) -> int:
    """Parameters that belong to one intermediate (FFN) unit (removed with it)."""
    return 2 * hidden_size + 1


def params_per_attention_fixed(hidden_size: int) -> int:
    """Parameters of a kept attention sublayer that no head owns: its output bias and its LayerNorm."""
    return 3 * hidden_size


def params_per_ffn_fixed(hidden_size: int) -> int:
    """Parameters of a kept FFN sublayer that no unit owns: its output bias and its LayerNorm."""
    return 3 * hidden_size


def params_per_layer_fixed(hidden_size: int) -> int:
    """Parameters of a layer (both sublayers kept) that no head or unit owns: two output biases, two LayerNorms."""
    return params_per_attention_fixed(hidden_size) + params_per_ffn_fixed(hidden_size)


@dataclass(frozen=True)
class EncoderShape:
    """Dimensions of a BERT-family encoder; per-layer widths allow non-uniformly pruned models."""

    hidden_size: int
    head_dim: int
    heads_per_layer: tuple[int, ...]
    intermediate_per_layer: tuple[int, ...]
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    has_pooler: bool = True
    # MPNet's shared relative-attention bias table (buckets x heads); 0 for families without one.
    relative_attention_buckets: int = 0
    relative_attention_heads: int = 0
    # Per layer: is the attention (FFN) sublayer there at all? None = every one is (a stock layer). A removed
    # sublayer has width 0 and no parameters; it is an exact identity.
    attention_kept_per_layer: tuple[bool, ...] | None = None
    ffn_kept_per_layer: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads_per_layer", tuple(int(h) for h in self.heads_per_layer))
        object.__setattr__(self, "intermediate_per_layer", tuple(int(i) for i in self.intermediate_per_layer))
        if len(self.heads_per_layer) != len(self.intermediate_per_layer):
            raise ValueError("heads_per_layer and intermediate_per_layer must have one entry per layer")
        n = len(self.heads_per_layer)
        for name, widths in (("attention_kept_per_layer", self.heads_per_layer),
                             ("ffn_kept_per_layer", self.intermediate_per_layer)):
            flags = getattr(self, name)
            flags = (True,) * n if flags is None else tuple(bool(f) for f in flags)
            if len(flags) != n:
                raise ValueError(f"{name} has {len(flags)} entries, the shape has {n} layers")
            if any(w and not kept for w, kept in zip(widths, flags)):
                raise ValueError(f"{name}: a removed sublayer must have width 0, got widths {list(widths)} "
                                 f"for flags {list(flags)}")
            object.__setattr__(self, name, flags)

    @classmethod
    def uniform(
        cls,
        n_layers: int,
        n_heads: int,
        hidden_size: int,
        intermediate_size: int,
        vocab_size: int,
        max_position_embeddings: int,
        type_vocab_size: int,
        head_dim: int | None = None,
        has_pooler: bool = True,
    ) -> EncoderShape:
        return cls(
            hidden_size=hidden_size,
            head_dim=head_dim if head_dim is not None else hidden_size // n_heads,
            heads_per_layer=(n_heads,) * n_layers,
            intermediate_per_layer=(intermediate_size,) * n_layers,
            vocab_size=vocab_size,
            max_position_embeddings=max_position_embeddings,
            type_vocab_size=type_vocab_size,
            has_pooler=has_pooler,
        )

    @classmethod
    def from_hf_config(cls, config: Any, has_pooler: bool = True) -> EncoderShape:
        """Shape of a stock or pruned HF config (pruned configs carry per-layer widths)."""
        from .models.families import find_family

        family = find_family(config)
        bias = family is not None and family.relative_attention_bias
        n_layers = config.num_hidden_layers
        head_dim = getattr(config, "attention_head_size", None) or config.hidden_size // config.num_attention_heads
        heads = getattr(config, "heads_per_layer", None) or [config.num_attention_heads] * n_layers
        inter = getattr(config, "intermediate_per_layer", None) or [config.intermediate_size] * n_layers
        return cls(
            attention_kept_per_layer=getattr(config, "attention_kept_per_layer", None),
            ffn_kept_per_layer=getattr(config, "ffn_kept_per_layer", None),
            hidden_size=config.hidden_size,
            head_dim=head_dim,
            heads_per_layer=tuple(heads),
            intermediate_per_layer=tuple(inter),
            vocab_size=config.vocab_size,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size if family is None or family.token_types else 0,
            has_pooler=has_pooler,
            relative_attention_buckets=int(config.relative_attention_num_buckets) if bias else 0,
            relative_attention_heads=int(config.num_attention_heads) if bias else 0,
        )

    @property
    def n_layers(self) -> int:
        return len(self.heads_per_layer)

    @property
    def is_uniform(self) -> bool:
        return (len(set(self.heads_per_layer)) <= 1 and len(set(self.intermediate_per_layer)) <= 1
                and not self.has_removed_sublayers)

    @property
    def has_removed_sublayers(self) -> bool:
        return not (all(self.attention_kept_per_layer) and all(self.ffn_kept_per_layer))

    def with_target(self, n_layers: int, n_heads: int, intermediate_size: int) -> EncoderShape:
        """The uniform shape this encoder is pruned to (same hidden size, head size, vocabulary, bias table)."""
        return EncoderShape(
            hidden_size=self.hidden_size,
            head_dim=self.head_dim,
            heads_per_layer=(n_heads,) * n_layers,
            intermediate_per_layer=(intermediate_size,) * n_layers,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            has_pooler=self.has_pooler,
            relative_attention_buckets=self.relative_attention_buckets,
            relative_attention_heads=self.relative_attention_heads,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "head_dim": self.head_dim,
            "heads_per_layer": list(self.heads_per_layer),
            "intermediate_per_layer": list(self.intermediate_per_layer),
        }
        if self.has_removed_sublayers:  # stock layers only: the dict stays as it always was
            out["attention_kept_per_layer"] = list(self.attention_kept_per_layer)
            out["ffn_kept_per_layer"] = list(self.ffn_kept_per_layer)
        return out


@dataclass(frozen=True)
class ParamCount:
    embeddings: int
    encoder_layers: int
    pooler: int
    total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", self.embeddings + self.encoder_layers + self.pooler)

    def to_dict(self) -> dict[str, int]:
        return {"embeddings": self.embeddings, "encoder_layers": self.encoder_layers,
                "pooler": self.pooler, "total": self.total}


def layer_params(hidden_size: int, head_dim: int, n_heads: int, intermediate_size: int,
                 attention: bool = True, ffn: bool = True) -> int:
    """Parameters of one encoder layer with the given width (``attention`` / ``ffn``: is that sublayer there)."""
    att = n_heads * params_per_head(hidden_size, head_dim) + params_per_attention_fixed(hidden_size)
    mlp = intermediate_size * params_per_intermediate_unit(hidden_size) + params_per_ffn_fixed(hidden_size)
    return (att if attention else 0) + (mlp if ffn else 0)


def count_params(shape: EncoderShape) -> ParamCount:
    """Exact parameter count of an encoder of this shape (embeddings, encoder layers, pooler).

    ``embeddings`` includes MPNet's shared relative-attention bias table (see the module docstring).
    """
    d = shape.hidden_size
    embeddings = ((shape.vocab_size + shape.max_position_embeddings + shape.type_vocab_size) * d + 2 * d
                  + shape.relative_attention_buckets * shape.relative_attention_heads)
    encoder = sum(layer_params(d, shape.head_dim, h, i, a, f)
                  for h, i, a, f in zip(shape.heads_per_layer, shape.intermediate_per_layer,
                                        shape.attention_kept_per_layer, shape.ffn_kept_per_layer))
    pooler = d * d + d if shape.has_pooler else 0
    return ParamCount(embeddings=embeddings, encoder_layers=encoder, pooler=pooler)


def kept_share(base: EncoderShape, pruned: EncoderShape) -> float:
    """Share of the base model's encoder-layer parameters that the pruned shape keeps."""
    return count_params(pruned).encoder_layers / count_params(base).encoder_layers



@dataclass(frozen=True)
class ShapeCandidate:
    """A uniform target shape, its share of the base's encoder-layer parameters and how evenly it shrinks."""

    n_layers: int
    n_heads: int
    intermediate_size: int
    share: float
    balance: float  # max - min of the per-dimension ratios (layers, heads, FFN units): 0 = shrunk evenly
    shape: EncoderShape

    @property
    def label(self) -> str:
        return f"{self.n_layers}L/{self.n_heads}H/{self.intermediate_size}I"


def candidate_shapes(base: EncoderShape, share: float, *, min_layers: int = 1, step: int = 64) -> list[ShapeCandidate]:
    """Uniform shapes of ``base`` ranked for a target ``share`` of its encoder-layer parameters.

    Ranked by distance to the share (rounded to 0.01, so shapes within a point tie), then by balance: shapes that
    shrink depth, heads and FFN width by similar ratios first, as Sheared-LLaMA's targets do. ``step`` is the FFN
    width granularity. ``scripts/target_shapes.py`` prints this list; the quality benchmark takes the first.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if not base.is_uniform:
        raise ValueError("candidate_shapes needs a uniform base shape")
    total = count_params(base).encoder_layers
    L, H, I = base.n_layers, base.heads_per_layer[0], base.intermediate_per_layer[0]
    out = []
    for n_layers in range(max(1, min_layers), L + 1):
        for n_heads in range(1, H + 1):
            for inter in range(step, I + 1, step):
                shape = base.with_target(n_layers, n_heads, inter)
                s = count_params(shape).encoder_layers / total
                ratios = (n_layers / L, n_heads / H, inter / I)
                out.append(ShapeCandidate(n_layers, n_heads, inter, s, max(ratios) - min(ratios), shape))
    out.sort(key=lambda c: (round(abs(c.share - share), 2), c.balance))
    return out
