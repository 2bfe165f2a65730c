"""Correlation and ranking metrics for evaluating sentence encoders, computed by scipy and pytrec_eval.

* ``spearman`` / ``pearson``: ``scipy.stats`` correlation coefficients x 100 (the STS convention).
* ``ranking_metrics``: nDCG@k, MRR@k and Recall@k in [0, 1] from a run ``results: {qid: {docid: score}}`` and
  judgements ``qrels: {qid: {docid: relevance}}``, by ``pytrec_eval`` (trec_eval's ``ndcg_cut``,
  ``recip_rank`` and ``recall``, what mteb uses).

Ranking rules:

* documents are ordered by descending score; equal scores are ordered by ascending doc id (compared as
  strings), so a run always ranks the same way (:func:`rank_documents`). trec_eval would break the tie by
  doc id descending, so it is given each document's rank instead of its score;
* a document is relevant when its relevance (an integer, as trec_eval requires) is > 0; nDCG uses the
  relevance itself as the gain (``rel / log2(rank + 1)``, ranks from 1) and the ideal ranking from the qrels;
* the mean is over the queries of ``qrels`` that have at least one relevant document; such a query
  missing from ``results`` scores 0. Queries only in ``results`` are ignored.
"""
from __future__ import annotations

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
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # scipy would warn (ConstantInputWarning) and return NaN
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


def _relevance(r: float, where: str) -> int:
    if float(r) != int(r):
        raise ValueError(f"{where}: relevance must be an integer (trec_eval's judgements are), got {r!r}")
    return int(r)


def ranking_metrics(results: Results, qrels: Qrels, k_values: Sequence[int] = (10, 100),
                    prefix: str = "") -> dict[str, float]:
    """``{prefix}ndcg@k``, ``{prefix}mrr@k`` and ``{prefix}recall@k`` (in [0, 1]) for every k in ``k_values``.

    Args:
        results: the run, ``{qid: {docid: score}}`` (any number of documents per query).
        qrels: the judgements, ``{qid: {docid: relevance}}`` with integer relevances.
        k_values: the cut-offs.
        prefix: put before every key (``sparse_``, ...).

    The metrics are trec_eval's ``ndcg_cut.k``, ``recall.k`` and ``recip_rank`` of the run cut at k, by
    ``pytrec_eval``, averaged as the module docstring says.
    """
    import pytrec_eval

    if not k_values or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in k_values):
        raise ValueError(f"ranking_metrics: k must be a positive integer, got {k_values!r}")
    judged = {str(q): {str(d): _relevance(r, f"qrels[{q!r}][{d!r}]") for d, r in docs.items() if float(r) > 0}
              for q, docs in qrels.items()}
    judged = {q: docs for q, docs in judged.items() if docs}
    if not judged:
        raise ValueError("ranking_metrics: no query in qrels has a relevant document (relevance > 0)")
    # One ranking per query (our tie rule), given to trec_eval as scores n, n-1, ... so it cannot re-break ties.
    ranked = {str(q): [str(d) for d in rank_documents(scores)] for q, scores in results.items() if str(q) in judged}

    def run(k: int | None) -> dict[str, dict[str, float]]:
        return {q: {d: float(len(docs) - i) for i, d in enumerate(docs[:k])} for q, docs in ranked.items()}

    def mean(per_query: dict[str, dict[str, float]], measure: str) -> float:
        return sum(per_query.get(q, {}).get(measure, 0.0) for q in judged) / len(judged)

    ks = ",".join(str(int(k)) for k in k_values)
    cut = pytrec_eval.RelevanceEvaluator(judged, {f"ndcg_cut.{ks}", f"recall.{ks}"}).evaluate(run(None))
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"})
    out: dict[str, float] = {}
    for k in k_values:
        out[f"{prefix}ndcg@{k}"] = mean(cut, f"ndcg_cut_{k}")
        out[f"{prefix}mrr@{k}"] = mean(rr.evaluate(run(int(k))), "recip_rank")
        out[f"{prefix}recall@{k}"] = mean(cut, f"recall_{k}")
    return out
