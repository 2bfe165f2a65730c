"""Retrieval evaluation: exact search over the whole corpus, scored with nDCG / MRR / Recall @k.

* dense: cosine of the dense vectors, every query against every document;
* sparse (model with ``sparse_linear.pt``): lexical score (:func:`heads.lexical_score`) against every
  document that shares a token with the query; all others score exactly 0;
* colbert (model with ``colbert_linear.pt``): :func:`heads.colbert_pair_score` against every document,
  or, with ``rerank_depth=N``, against the dense top N only (faster on big corpora).

Rankings break ties by doc id (as strings), matching :mod:`.metrics`. Metric keys: ``ndcg@k``,
``mrr@k``, ``recall@k`` for each k in ``k_values`` (values in [0, 1]); sparse / colbert keys carry the
prefixes ``sparse_`` / ``colbert_``.

``paraphrase_retrieval_from_sts`` turns scored sentence pairs into a retrieval task.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from bge_pruning.models.heads import colbert_pair_score, lexical_score

from .metrics import ranking_metrics
from .sts import HYBRID_WEIGHTS, hybrid_scores, pair_fields, resolve_heads

HYBRID_DEPTH = 100  # candidates per query from each of dense and sparse, for the hybrid ranking

logger = logging.getLogger(__name__)


def doc_text(doc: Any, where: str) -> str:
    """A corpus entry as text: a string, or a BEIR dict ``{"title", "text"}`` joined as "title text"."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Mapping) and "text" in doc:
        title = doc.get("title") or ""
        return f"{title} {doc['text']}".strip() if title else str(doc["text"])
    raise TypeError(f"{where}: expected a string or a {{'title', 'text'}} dict, got {type(doc).__name__}")


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first, ties by index (= by doc id, the docs being id-sorted)."""
    n = scores.shape[0]
    if k >= n:
        cand = np.arange(n)
    else:
        kth = np.partition(-scores, k - 1)[k - 1]
        cand = np.nonzero(-scores <= kth)[0]  # every doc tied with the k-th is a candidate
    order = np.lexsort((cand, -scores[cand]))
    return cand[order[:k]]


def _check_inputs(corpus, queries, qrels, k_values) -> tuple[list, dict]:
    if not corpus:
        raise ValueError("retrieval evaluation: the corpus is empty")
    if not k_values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in k_values):
        raise ValueError(f"k_values must be positive integers, got {k_values!r}")
    judged = {q: {d: r for d, r in docs.items()} for q, docs in qrels.items()
              if q in queries and any(float(r) > 0 for r in docs.values())}
    if not judged:
        raise ValueError("retrieval evaluation: no query of qrels is in queries with a relevant document "
                         f"({len(qrels)} qrels queries, {len(queries)} queries)")
    missing = [q for q in qrels if q not in queries]
    if missing:
        logger.warning("%d qrels queries are not in queries (e.g. %r); they are left out", len(missing), missing[0])
    return sorted(judged, key=str), judged


def evaluate_retrieval(model, corpus: Mapping[Hashable, Any], queries: Mapping[Hashable, str],
                       qrels: Mapping[Hashable, Mapping[Hashable, float]], k_values: Sequence[int] = (10, 100),
                       batch_size: int = 32, show_progress: bool = True,
                       rerank_depth: int | None = None, heads: Sequence[str] | None = None,
                       hybrid_weights: Sequence[float] = HYBRID_WEIGHTS) -> dict[str, float]:
    """Dense (and sparse / colbert when the model has the heads) retrieval metrics, x100 (the scale of every score
    the project reports; :func:`bge_pruning.evaluation.metrics.ranking_metrics` gives them in [0, 1], as mteb).

    Only queries with a relevant document in ``qrels`` are encoded and averaged. ``heads`` (dense, sparse,
    colbert, hybrid; default: what the model has) chooses the rankings. ``hybrid`` is BGE-M3's hybrid retrieval:
    each query's candidates are the union of its dense and sparse top ``rerank_depth`` (default 100), ranked by
    the weighted mean of the three scores (:func:`bge_pruning.evaluation.sts.hybrid_scores`).
    """
    chosen = resolve_heads(model, heads)
    k_values = tuple(k_values)
    if rerank_depth is not None and (isinstance(rerank_depth, bool) or not isinstance(rerank_depth, int)
                                     or rerank_depth < 1):
        raise ValueError(f"rerank_depth must be a positive integer or None, got {rerank_depth!r}")
    qids, judged = _check_inputs(corpus, queries, qrels, k_values)
    top = max(k_values)
    doc_ids = sorted(corpus, key=str)
    doc_texts = [doc_text(corpus[d], f"corpus[{d!r}]") for d in doc_ids]
    q_texts = []
    for q in qids:
        if not isinstance(queries[q], str):
            raise TypeError(f"queries[{q!r}]: expected a string, got {type(queries[q]).__name__}")
        q_texts.append(queries[q])

    flags = {"sparse": "sparse" in chosen or "hybrid" in chosen, "colbert": "colbert" in chosen or "hybrid" in chosen}
    d_enc = model.encode_all(doc_texts, batch_size=batch_size, show_progress=show_progress, **flags)
    q_enc = model.encode_all(q_texts, batch_size=batch_size, show_progress=show_progress, **flags)

    def as_results(rows: list[tuple[np.ndarray, np.ndarray]]) -> dict:
        return {q: {doc_ids[i]: float(s) for i, s in zip(idx, sc)} for q, (idx, sc) in zip(qids, rows)}

    # dense: exact cosine over all documents
    d = d_enc["dense"].astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True).clip(min=1e-12)
    qv = q_enc["dense"].astype(np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True).clip(min=1e-12)
    dense_rows = _dense_candidates(qv, d, top)
    out = ranking_metrics(as_results(dense_rows), judged, k_values)

    if "sparse" in chosen:
        out.update(ranking_metrics(as_results(_sparse_search(q_enc["sparse"], d_enc["sparse"], top)),
                                   judged, k_values, prefix="sparse_"))
    if "colbert" in chosen:
        cand = None if rerank_depth is None else [idx for idx, _ in _dense_candidates(qv, d, rerank_depth)]
        out.update(ranking_metrics(as_results(_colbert_search(q_enc["colbert"], d_enc["colbert"], top, cand)),
                                   judged, k_values, prefix="colbert_"))
    if "hybrid" in chosen:
        depth = rerank_depth or HYBRID_DEPTH
        cand = [np.union1d(a, b) for (a, _), (b, _) in zip(_dense_candidates(qv, d, depth),
                                                           _sparse_search(q_enc["sparse"], d_enc["sparse"], depth))]
        rows = _hybrid_search(qv, d, q_enc["sparse"], d_enc["sparse"], q_enc["colbert"], d_enc["colbert"], cand,
                              top, hybrid_weights)
        out.update(ranking_metrics(as_results(rows), judged, k_values, prefix="hybrid_"))
    return {k: 100.0 * v for k, v in out.items()}


def _hybrid_search(qv: np.ndarray, d: np.ndarray, q_sparse: list[dict], d_sparse: list[dict],
                   q_colbert: list[np.ndarray], d_colbert: list[np.ndarray], candidates: list[np.ndarray], top: int,
                   weights: Sequence[float]) -> list:
    import torch

    rows = []
    for qi, cand in enumerate(candidates):
        cand = np.sort(np.asarray(cand, dtype=np.int64))
        qt = torch.from_numpy(q_colbert[qi])
        dense = d[cand] @ qv[qi]
        lex = [lexical_score(q_sparse[qi], d_sparse[i]) for i in cand]
        col = [colbert_pair_score(qt, torch.from_numpy(d_colbert[i])) for i in cand]
        scores = hybrid_scores(dense, lex, col, weights)
        local = _top_k(scores, top)
        rows.append((cand[local], scores[local]))
    return rows


def _dense_candidates(qv: np.ndarray, d: np.ndarray, depth: int) -> list:
    rows = []
    for start in range(0, qv.shape[0], 256):
        for row in qv[start:start + 256] @ d.T:
            idx = _top_k(row, depth)
            rows.append((idx, row[idx]))
    return rows


def _sparse_search(q_weights: list[dict], d_weights: list[dict], top: int) -> list:
    postings: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(d_weights):
        for tok in w:
            postings[tok].append(i)
    n = len(d_weights)
    rows = []
    for qw in q_weights:
        cand = sorted({i for tok in qw for i in postings.get(tok, ())})
        scores = np.zeros(n, dtype=np.float64)
        for i in cand:
            scores[i] = lexical_score(qw, d_weights[i])
        idx = _top_k(scores, top)
        rows.append((idx, scores[idx]))
    return rows


def _colbert_search(q_vecs: list[np.ndarray], d_vecs: list[np.ndarray], top: int,
                    candidates: list[np.ndarray] | None) -> list:
    import torch

    dt = [torch.from_numpy(v) for v in d_vecs]
    rows = []
    for qi, q in enumerate(q_vecs):
        qt = torch.from_numpy(q)
        if candidates is None:
            scores = np.array([colbert_pair_score(qt, p) for p in dt], dtype=np.float64)
            idx = _top_k(scores, top)
            rows.append((idx, scores[idx]))
        else:
            cand = np.sort(candidates[qi])
            scores = np.array([colbert_pair_score(qt, dt[i]) for i in cand], dtype=np.float64)
            local = _top_k(scores, top)
            rows.append((cand[local], scores[local]))
    return rows


def paraphrase_retrieval_from_sts(pairs: Sequence[Any], min_score: float = 4.0
                                  ) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """A retrieval task from scored pairs: find a sentence's paraphrase among all second sentences.

    * corpus: every distinct ``sentence2`` of ``pairs`` (identical texts share one id), ids ``d0, d1, ...``
      in order of first appearance;
    * queries: every distinct ``sentence1`` of a pair scored >= ``min_score``, ids ``q0, q1, ...`` in order
      of first appearance;
    * qrels: for each such pair, ``qrels[query of sentence1][doc of sentence2] = 1``.
    """
    corpus: dict[str, str] = {}
    doc_of: dict[str, str] = {}
    rows = [pair_fields(p, f"pairs[{i}]") for i, p in enumerate(pairs)]
    for _, s2, _ in rows:
        if s2 not in doc_of:
            doc_of[s2] = f"d{len(doc_of)}"
            corpus[doc_of[s2]] = s2
    queries: dict[str, str] = {}
    query_of: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for s1, s2, score in rows:
        if score < min_score:
            continue
        if s1 not in query_of:
            query_of[s1] = f"q{len(query_of)}"
            queries[query_of[s1]] = s1
        qrels.setdefault(query_of[s1], {})[doc_of[s2]] = 1
    if not queries:
        raise ValueError(f"paraphrase retrieval: no pair scored >= {min_score} among {len(rows)} pairs")
    return corpus, queries, qrels
