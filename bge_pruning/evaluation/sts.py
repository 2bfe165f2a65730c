"""STS evaluation: correlation (x 100) between gold scores and the model's similarity of each pair.

* dense: cosine of the dense vectors -> ``spearman``, ``pearson``;
* sparse (when the model has ``sparse_linear.pt``): lexical matching score -> ``sparse_spearman``;
* colbert (when the model has ``colbert_linear.pt``): late-interaction score -> ``colbert_spearman``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bge_pruning.models.heads import colbert_pair_score, lexical_score

from .metrics import pearson, spearman


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


def evaluate_sts(model, pairs: Sequence[Any], batch_size: int = 32, show_progress: bool = True) -> dict[str, float]:
    """``{"spearman", "pearson"}`` of dense cosine vs gold (x 100), plus ``sparse_spearman`` /
    ``colbert_spearman`` when ``model`` has those heads. Each distinct sentence is encoded once."""
    s1, s2, gold = unpack_pairs(pairs)
    texts = list(dict.fromkeys(s1 + s2))
    pos = {t: i for i, t in enumerate(texts)}
    i1 = [pos[t] for t in s1]
    i2 = [pos[t] for t in s2]
    enc = model.encode_all(texts, batch_size=batch_size, show_progress=show_progress)

    dense = enc["dense"]
    cos = cosine_pairs(dense[i1], dense[i2])
    out = {"spearman": spearman(gold, cos), "pearson": pearson(gold, cos)}
    if "sparse" in enc:
        sp = enc["sparse"]
        out["sparse_spearman"] = spearman(gold, [lexical_score(sp[a], sp[b]) for a, b in zip(i1, i2)])
    if "colbert" in enc:
        import torch

        cb = [torch.from_numpy(v) for v in enc["colbert"]]
        out["colbert_spearman"] = spearman(gold, [colbert_pair_score(cb[a], cb[b]) for a, b in zip(i1, i2)])
    return out
