"""Metrics (scipy, pytrec_eval) against numbers worked out by hand (the arithmetic is written out in each test)."""
from __future__ import annotations

import math

import pytest

from bge_pruning.evaluation.metrics import pearson, rank_documents, ranking_metrics, spearman

LOG2_3 = math.log2(3)

# q1: one relevant doc (d1) ranked 2nd.
# q2: graded qrels d2=2, d3=1; d2 and d3 tie at 0.7 -> broken by doc id: d2 before d3; ranking d5, d2, d3.
# q3: only a non-relevant judgement -> not counted in any mean.
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}, "q3": {"d9": 0}}
RESULTS = {
    "q1": {"d0": 0.9, "d1": 0.8, "d2": 0.1},
    "q2": {"d3": 0.7, "d2": 0.7, "d5": 0.9},
    "q3": {"d9": 1.0},
}


def test_rank_documents_breaks_ties_by_doc_id():
    assert rank_documents({"b": 0.5, "a": 0.5, "c": 0.9}) == ["c", "a", "b"]
    assert rank_documents({"b": 0.5, "a": 0.5, "c": 0.9}, k=2) == ["c", "a"]


def at(k: int, results=RESULTS, qrels=QRELS) -> dict[str, float]:
    """pytrec_eval's nDCG / MRR / Recall at one cut-off, keyed without the ``@k``."""
    return {name.split("@")[0]: v for name, v in ranking_metrics(results, qrels, k_values=(k,)).items()}


def test_ndcg_by_hand():
    # single relevant doc at rank 2: DCG = 1/log2(3), IDCG = 1/log2(2) = 1
    q1 = (1 / LOG2_3) / 1
    # q2 ranking d5(0), d2(2), d3(1): DCG = 0/log2(2) + 2/log2(3) + 1/log2(4); ideal d2, d3: 2/1 + 1/log2(3)
    # (trec_eval would put d3 before d2 on their tie, giving (1/log2(3) + 2/2) / ...)
    q2 = (2 / LOG2_3 + 1 / 2) / (2 + 1 / LOG2_3)
    assert at(10)["ndcg"] == pytest.approx((q1 + q2) / 2, abs=1e-12)
    # k=2: q2 keeps d5, d2 -> DCG 2/log2(3); ideal top-2 is still 2/1 + 1/log2(3)
    q2_at2 = (2 / LOG2_3) / (2 + 1 / LOG2_3)
    assert at(2)["ndcg"] == pytest.approx((q1 + q2_at2) / 2, abs=1e-12)
    # k=1: both queries have a non-relevant doc first
    assert at(1)["ndcg"] == 0.0


def test_single_relevant_doc_at_rank_2():
    assert at(10, {"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 1}})["ndcg"] == pytest.approx(1 / LOG2_3, abs=1e-12)


def test_mrr_by_hand():
    # q1 first relevant at rank 2 -> 1/2; q2 first relevant (d2) at rank 2 -> 1/2
    assert at(10)["mrr"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert at(1)["mrr"] == 0.0
    # the tie decides: "a" wins it by doc id, so "z" is second (trec_eval's own rule would put "z" first)
    res = {"q": {"z": 0.5, "a": 0.5}}
    assert at(10, res, {"q": {"z": 1}})["mrr"] == pytest.approx(1 / 2)
    assert at(1, res, {"q": {"z": 1}})["mrr"] == 0.0


def test_recall_by_hand():
    # k=1: q1 0/1, q2 0/2 -> 0
    assert at(1)["recall"] == 0.0
    # k=2: q1 finds d1 (1/1), q2 finds d2 (1/2) -> (1 + 0.5) / 2
    assert at(2)["recall"] == pytest.approx(0.75)
    # k=3: both complete
    assert at(3)["recall"] == pytest.approx(1.0)


def test_query_missing_from_results_counts_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d1": 1}}
    assert at(10, {"q1": {"d1": 1.0}}, qrels) == pytest.approx({"ndcg": 0.5, "mrr": 0.5, "recall": 0.5})
    assert at(10, {"q1": {"d1": 1.0}, "q2": {}}, qrels) == pytest.approx({"ndcg": 0.5, "mrr": 0.5, "recall": 0.5})


def test_ranking_metrics_keys_and_errors():
    out = ranking_metrics(RESULTS, QRELS, k_values=(1, 2), prefix="sparse_")
    assert set(out) == {"sparse_ndcg@1", "sparse_mrr@1", "sparse_recall@1",
                        "sparse_ndcg@2", "sparse_mrr@2", "sparse_recall@2"}
    assert out["sparse_recall@2"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ranking_metrics(RESULTS, QRELS, k_values=(0,))
    with pytest.raises(ValueError, match="no query in qrels has a relevant document"):
        ranking_metrics(RESULTS, {"q": {"d": 0}})
    with pytest.raises(ValueError, match=r"qrels\['q'\]\['d'\]: relevance must be an integer"):
        ranking_metrics(RESULTS, {"q": {"d": 0.5}})


def test_spearman_by_hand():
    # ranks are the values themselves; d = [-1, 1, -1, 1, 0], sum d^2 = 4
    # rho = 1 - 6 * 4 / (5 * (5^2 - 1)) = 1 - 24 / 120 = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(80.0)
    # monotone but non-linear -> perfect rank correlation
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(100.0)
    # ties get average ranks: x ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]
    # deviations [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 0.5, 1.5]: cov 4.5, var 4.5 and 5 -> sqrt(4.5 / 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(100 * math.sqrt(0.9))
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-100.0)


def test_pearson_by_hand():
    # deviations [-1, 0, 1] and [-1, 1, 0]: cov = 1, variances 2 and 2 -> r = 1/2
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(50.0)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(100.0)


def test_correlation_errors():
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        pearson([1], [1])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
