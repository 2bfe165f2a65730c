"""STS evaluation: correlation (x 100) between gold scores and the model's similarity of each pair.

* dense: cosine of the dense vectors -> ``spearman``, ``pearson``;
* sparse (when the model has ``sparse_linear.pt``): lexical matching score -> ``sparse_spearman``;
* colbert (when the model has ``colbert_linear.pt``): late-interaction score -> ``colbert_spearman``;
* hybrid (both heads): BGE-M3's weighted sum of the three, ``(w_d * dense + w_s * sparse + w_c * colbert) /
  (w_d + w_s + w_c)`` with FlagEmbedding's ``compute_score`` default weights 0.4 / 0.2 / 0.4 -> ``hybrid_spearman``.

``heads`` (a subset of ``HEADS``) chooses what is scored; by default everything the model has.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bge_pruning.models.heads import colbert_pair_score, lexical_score

from .metrics import pearson, spearman

HEADS = ("dense", "sparse", "colbert", "hybrid")
# FlagEmbedding's BGEM3FlagModel.compute_score(weights_for_different_modes=[0.4, 0.2, 0.4]): dense, sparse, colbert.
HYBRID_WEIGHTS = (0.4, 0.2, 0.4)


def resolve_heads(model, heads: Sequence[str] | None) -> tuple[str, ...]:
    """The outputs to score: ``heads`` checked against what ``model`` has, or by default all of them (hybrid when it
    has both heads). Dense is always scored (it is every report's main metric)."""
    has = {"sparse": bool(getattr(model, "has_sparse", False)), "colbert": bool(getattr(model, "has_colbert", False))}
    has["hybrid"] = has["sparse"] and has["colbert"]
    if heads is None:
        return ("dense",) + tuple(h for h in HEADS[1:] if has[h])
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ValueError(f"heads: unknown {unknown}; choose from {', '.join(HEADS)}")
    lacking = [h for h in heads if h != "dense" and not has[h]]
    if lacking:
        need = {"sparse": "sparse_linear.pt", "colbert": "colbert_linear.pt",
                "hybrid": "sparse_linear.pt and colbert_linear.pt"}
        raise ValueError(f"heads {lacking}: the model has no {', '.join(need[h] for h in lacking)}")
    return ("dense",) + tuple(h for h in HEADS[1:] if h in heads)


def hybrid_scores(dense: Sequence[float], sparse: Sequence[float], colbert: Sequence[float],
                  weights: Sequence[float] = HYBRID_WEIGHTS) -> np.ndarray:
    """BGE-M3's hybrid score: the weighted mean of the dense, sparse and colbert scores."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (3,) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"hybrid weights must be 3 non-negative numbers with a positive sum, got {list(weights)}")
    stacked = np.stack([np.asarray(x, dtype=np.float64) for x in (dense, sparse, colbert)])
    return (w[:, None] * stacked).sum(0) / w.sum()


def pair_fields(pair: Any, where: str = "pair") -> tuple[str, str, float]:
    """(sentence1, sentence2, score) from a ``StsPair``-like object or a 3-tuple."""
    if all(hasattr(pair, a) for a in ("sentence1", "sentence2", "score")):
        s1, s2, score = pair.sentence1, pair.sentence2, pair.score
    else:
        try:
            s1, s2, score = pair
        except (TypeError, ValueError):
            raise TypeError(f"{where}: expected a StsPair or (sentence1, sentence2, score), got {pair!r}") from None
    if not isinstance(s1, str) or not isinstance(s2, str):
        raise TypeError(f"{where}: sentences must be strings, got {type(s1).__name__}, {type(s2).__name__}")
    return s1, s2, float(score)


def unpack_pairs(pairs: Sequence[Any]) -> tuple[list[str], list[str], np.ndarray]:
    rows = [pair_fields(p, f"pairs[{i}]") for i, p in enumerate(pairs)]
    if len(rows) < 2:
        raise ValueError(f"STS evaluation needs at least 2 pairs, got {len(rows)}")
    s1, s2, scores = zip(*rows)
    return list(s1), list(s2), np.asarray(scores, dtype=np.float64)


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, d] arrays (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1).clip(min=1e-12)
    nb = np.linalg.norm(b, axis=1).clip(min=1e-12)
    return (a * b).sum(1) / (na * nb)


def evaluate_sts(model, pairs: Sequence[Any], batch_size: int = 32, show_progress: bool = True,
                 heads: Sequence[str] | None = None,
                 hybrid_weights: Sequence[float] = HYBRID_WEIGHTS) -> dict[str, float]:
    """``{"spearman", "pearson"}`` of dense cosine vs gold (x 100), plus ``sparse_spearman`` /
    ``colbert_spearman`` / ``hybrid_spearman`` for the ``heads`` scored (default: what ``model`` has; see the
    module docstring). Each distinct sentence is encoded once."""
    chosen = resolve_heads(model, heads)
    s1, s2, gold = unpack_pairs(pairs)
    texts = list(dict.fromkeys(s1 + s2))
    pos = {t: i for i, t in enumerate(texts)}
    i1 = [pos[t] for t in s1]
    i2 = [pos[t] for t in s2]
    want_sparse = "sparse" in chosen or "hybrid" in chosen
    want_colbert = "colbert" in chosen or "hybrid" in chosen
    enc = model.encode_all(texts, batch_size=batch_size, show_progress=show_progress, sparse=want_sparse,
                           colbert=want_colbert)

    dense = enc["dense"]
    cos = cosine_pairs(dense[i1], dense[i2])
    out = {"spearman": spearman(gold, cos), "pearson": pearson(gold, cos)}
    lex = col = None
    if want_sparse:
        sp = enc["sparse"]
        lex = [lexical_score(sp[a], sp[b]) for a, b in zip(i1, i2)]
        if "sparse" in chosen:
            out["sparse_spearman"] = spearman(gold, lex)
    if want_colbert:
        import torch

        cb = [torch.from_numpy(v) for v in enc["colbert"]]
        col = [colbert_pair_score(cb[a], cb[b]) for a, b in zip(i1, i2)]
        if "colbert" in chosen:
            out["colbert_spearman"] = spearman(gold, col)
    if "hybrid" in chosen:
        out["hybrid_spearman"] = spearman(gold, hybrid_scores(cos, lex, col, hybrid_weights))
    return out
