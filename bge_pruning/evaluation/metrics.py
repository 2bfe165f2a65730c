"""Correlation and ranking metrics for evaluating sentence encoders.

* ``spearman`` / ``pearson``: correlation coefficients x 100 (the STS convention).
* ``ndcg_at_k`` / ``mrr_at_k`` / ``recall_at_k``: retrieval metrics in [0, 1] from a run
  ``results: {qid: {docid: score}}`` and judgements ``qrels: {qid: {docid: relevance}}``.

Ranking rules (shared by every ranking metric and by :func:`rank_documents`):

* documents are ordered by descending score; equal scores are ordered by ascending doc id
  (compared as strings), so a run always ranks the same way;
* a document is relevant when its relevance is > 0; nDCG uses the relevance itself as the gain
  (``rel / log2(rank + 1)``, ranks from 1) and the ideal ranking from the qrels;
* the mean is over the queries of ``qrels`` that have at least one relevant document; such a query
  missing from ``results`` scores 0. Queries only in ``results`` are ignored.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

Results = Mapping[Hashable, Mapping[Hashable, float]]
Qrels = Mapping[Hashable, Mapping[Hashable, float]]


def _as_vectors(x: Sequence[float], y: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{name}: x and y must have the same length, got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"{name}: needs at least 2 values, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"{name}: inputs contain NaN or infinite values")
    return a, b


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation x 100 (ties get average ranks). NaN when an input is constant."""
    from scipy.stats import spearmanr

    a, b = _as_vectors(x, y, "spearman")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0]) * 100.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation x 100. NaN when an input is constant."""
    from scipy.stats import pearsonr

    a, b = _as_vectors(x, y, "pearson")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(pearsonr(a, b)[0]) * 100.0


def rank_documents(scores: Mapping[Hashable, float], k: int | None = None) -> list:
    """Doc ids by descending score, ties by ascending doc id (as strings); the first ``k`` if given."""
    ranked = sorted(scores.items(), key=lambda item: (-float(item[1]), str(item[0])))
    if k is not None:
        ranked = ranked[:k]
    return [doc for doc, _ in ranked]


def _check_k(k: int, name: str) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name}: k must be a positive integer, got {k!r}")


def _judged_queries(qrels: Qrels, name: str) -> list:
    queries = [q for q, docs in qrels.items() if any(float(r) > 0 for r in docs.values())]
    if not queries:
        raise ValueError(f"{name}: no query in qrels has a relevant document (relevance > 0)")
    return queries


def _relevant(qrels: Qrels, qid) -> dict:
    return {d: float(r) for d, r in qrels[qid].items() if float(r) > 0}


def ndcg_at_k(results: Results, qrels: Qrels, k: int) -> float:
    """Mean nDCG@k; gain = relevance, discount = log2(rank + 1), ideal DCG from the qrels."""
    _check_k(k, "ndcg_at_k")
    total = 0.0
    queries = _judged_queries(qrels, "ndcg_at_k")
    for qid in queries:
        rel = _relevant(qrels, qid)
        ranked = rank_documents(results.get(qid, {}), k)
        dcg = sum(rel.get(doc, 0.0) / math.log2(i + 2) for i, doc in enumerate(ranked))
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        total += dcg / idcg
    return total / len(queries)


def mrr_at_k(results: Results, qrels: Qrels, k: int) -> float:
    """Mean reciprocal rank of the first relevant document within the top k (0 when none)."""
    _check_k(k, "mrr_at_k")
    total = 0.0
    queries = _judged_queries(qrels, "mrr_at_k")
    for qid in queries:
        rel = _relevant(qrels, qid)
        for i, doc in enumerate(rank_documents(results.get(qid, {}), k)):
            if doc in rel:
                total += 1.0 / (i + 1)
                break
    return total / len(queries)


def recall_at_k(results: Results, qrels: Qrels, k: int) -> float:
    """Mean fraction of a query's relevant documents found in its top k."""
    _check_k(k, "recall_at_k")
    total = 0.0
    queries = _judged_queries(qrels, "recall_at_k")
    for qid in queries:
        rel = _relevant(qrels, qid)
        found = sum(1 for doc in rank_documents(results.get(qid, {}), k) if doc in rel)
        total += found / len(rel)
    return total / len(queries)


def ranking_metrics(results: Results, qrels: Qrels, k_values: Sequence[int] = (10, 100),
                    prefix: str = "") -> dict[str, float]:
    """``{prefix}ndcg@k``, ``{prefix}mrr@k`` and ``{prefix}recall@k`` for every k in ``k_values``."""
    out: dict[str, float] = {}
    for k in k_values:
        out[f"{prefix}ndcg@{k}"] = ndcg_at_k(results, qrels, k)
        out[f"{prefix}mrr@{k}"] = mrr_at_k(results, qrels, k)
        out[f"{prefix}recall@{k}"] = recall_at_k(results, qrels, k)
    return out
