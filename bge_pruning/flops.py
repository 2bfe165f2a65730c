"""Analytic forward FLOPs of a BERT-family encoder, built on :class:`bge_pruning.shapes.EncoderShape`.

A multiply-add counts as 2 FLOPs. Per encoder layer with hidden size d, head size dh, H heads,
I intermediate units and a sequence of T tokens (no padding), the counted terms are:

* Q, K, V projections:            2 · T · d · (3 · H · dh)
* attention output projection:    2 · T · (H · dh) · d
* attention scores Q·Kᵀ and the context (probabilities · V): 2 · 2 · T² · H · dh
* feed-forward (in and out):      2 · 2 · T · d · I

Not counted (each is O(T·d) or O(T²·H) per layer, well under 1 % for the shapes we prune): bias
additions, LayerNorms, GELU, softmax, scaling, residual additions, the embedding lookup/sum and the
pooler (2·d² per sequence, T-independent). The FLOPs ratio base / pruned is therefore the speedup a
perfectly compute-bound run could reach; measured speedups are below it wherever memory traffic,
kernel launch or Python overhead matter (small batches, short sequences).

Parameter counts are not computed here: use :func:`bge_pruning.shapes.count_params`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .shapes import EncoderShape

FLOPS_INCLUDED = ("Q/K/V projections 2*T*d*3*H*dh, attention output projection 2*T*H*dh*d, "
                  "attention scores and context 2*2*T^2*H*dh, FFN 2*2*T*d*I; multiply-add = 2 FLOPs")
FLOPS_EXCLUDED = ("biases, LayerNorm, GELU, softmax, residuals, embeddings and pooler "
                  "(O(T*d) or O(T^2*H) per layer: negligible)")


def layer_flops(hidden_size: int, head_dim: int, n_heads: int, intermediate_size: int, seq_len: int) -> dict[str, int]:
    """Forward FLOPs of one encoder layer for one sequence of ``seq_len`` tokens, by term."""
    for name, value in (("hidden_size", hidden_size), ("head_dim", head_dim), ("n_heads", n_heads),
                        ("intermediate_size", intermediate_size), ("seq_len", seq_len)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    d, dh, h, i, t = (int(v) for v in (hidden_size, head_dim, n_heads, intermediate_size, seq_len))
    return {
        "qkv": 2 * t * d * (3 * h * dh),
        "attention_output": 2 * t * (h * dh) * d,
        "attention_scores": 2 * 2 * t * t * h * dh,
        "ffn": 2 * 2 * t * d * i,
    }


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs per sequence of ``seq_len`` tokens, summed over layers by term, and per layer."""

    seq_len: int
    qkv: int
    attention_output: int
    attention_scores: int
    ffn: int
    per_layer: tuple[int, ...]

    @property
    def attention(self) -> int:
        """Everything the heads own: projections, scores and context."""
        return self.qkv + self.attention_output + self.attention_scores

    @property
    def total(self) -> int:
        return self.attention + self.ffn

    def to_dict(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "total": self.total, "qkv": self.qkv,
                "attention_output": self.attention_output, "attention_scores": self.attention_scores,
                "ffn": self.ffn, "per_layer": list(self.per_layer)}


def forward_flops(shape: EncoderShape, seq_len: int) -> FlopCount:
    """Analytic forward FLOPs of ``shape`` for one sequence of ``seq_len`` tokens (see the module docstring)."""
    if not isinstance(shape, EncoderShape):
        raise TypeError(f"shape must be an EncoderShape, got {type(shape).__name__}")
    if isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    sums = {"qkv": 0, "attention_output": 0, "attention_scores": 0, "ffn": 0}
    per_layer = []
    for heads, inter in zip(shape.heads_per_layer, shape.intermediate_per_layer):
        terms = layer_flops(shape.hidden_size, shape.head_dim, heads, inter, int(seq_len))
        for k, v in terms.items():
            sums[k] += v
        per_layer.append(sum(terms.values()))
    return FlopCount(seq_len=int(seq_len), per_layer=tuple(per_layer), **sums)


def flops_ratio(base: EncoderShape, pruned: EncoderShape, seq_len: int) -> float | None:
    """Base FLOPs / pruned FLOPs at ``seq_len``: the compute-bound speedup limit (None if pruned has none)."""
    pruned_total = forward_flops(pruned, seq_len).total
    if pruned_total == 0:
        return None
    return forward_flops(base, seq_len).total / pruned_total
