"""Vocabulary pruning: exact on the corpus it was built from, loadable everywhere, refused cleanly on bad input."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bge_pruning.data.errors import DataError
from bge_pruning.data.text import corpus_texts, parse_corpus_spec
from bge_pruning.vocab import prune_vocabulary, trimmed_tokenizer_json

ROOT = Path(__file__).resolve().parents[1]
DEMO_STS = ROOT / "data" / "demo_sts" / "train.tsv"
DEMO_RETRIEVAL = ROOT / "data" / "demo_retrieval" / "train.jsonl"
MULTI_MT = ROOT.parent / "shared" / "data" / "stsb-multi-mt"


# ---------------------------------------------------------------------------------------------- corpus specs
def test_corpus_specs_read_every_text(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("first line\n\n  \nsecond line\n")
    assert corpus_texts(str(txt)) == ["first line", "second line"]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"body": "a"}\n{"body": "b"}\n')
    assert corpus_texts(f"text:{jl}:body") == ["a", "b"]
    sts = corpus_texts(f"sts:{DEMO_STS}")
    n_pairs = sum(1 for line in DEMO_STS.read_text().splitlines()[1:] if line.strip())
    assert len(sts) == 2 * n_pairs
    # Retrieval: query, positive and every hard negative of each row.
    rows = [json.loads(x) for x in DEMO_RETRIEVAL.read_text().splitlines() if x.strip()]
    expected = sum(1 + (len(r["pos"]) if isinstance(r["pos"], list) else 1) + len(r.get("neg", [])) for r in rows)
    assert len(corpus_texts(f"retrieval:{DEMO_RETRIEVAL}")) == expected


def test_corpus_spec_errors_name_the_place(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        parse_corpus_spec(str(tmp_path / "missing.txt"))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataError, match="prefix"):
        parse_corpus_spec(str(tmp_path / "x.parquet"))
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=rf"{jl}:2: no field 'text'"):
        corpus_texts(str(jl))


# ---------------------------------------------------------------------------------------------- Unigram trap
def test_unigram_keeps_the_unknown_character_score():
    """Dropping rare pieces raises the vocabulary's minimum score, and with it the score of an unknown
    character (min - 10): without the anchor, 'abcd' would become [<unk>, 'bcd'] instead of ['ab', 'cd']."""
    from tokenizers import Tokenizer, models

    pieces = [("<unk>", 0.0), ("ab", -20.0), ("cd", -20.0), ("bcd", -1.0), ("a", -45.0), ("b", -30.0),
              ("c", -30.0), ("d", -30.0), ("z", -50.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0))
    assert tok.encode("abcd").ids == [1, 2]  # ab, cd
    kept = [0, 1, 2, 3]  # what the corpus ["abcd", "bcd"] uses
    data = trimmed_tokenizer_json(json.loads(tok.to_str()), kept)
    assert Tokenizer.from_str(json.dumps(data)).encode("abcd").ids == [1, 2]
    naive = json.loads(json.dumps(data))
    naive["model"]["vocab"][0][1] = 0.0  # the unk piece's own score, as a plain row copy would leave it
    assert Tokenizer.from_str(json.dumps(naive)).encode("abcd").ids == [0, 3]  # <unk> for 'a', then bcd


# ---------------------------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm_trimmed(tmp_path_factory, minilm_path):
    out = tmp_path_factory.mktemp("vocab") / "minilm"
    eval_txt = tmp_path_factory.mktemp("vocab_eval") / "eval.txt"
    eval_txt.write_text("Quantum chromodynamics binds quarks with gluons.\nA man is playing a guitar.\n")
    out_dir, record = prune_vocabulary(str(minilm_path), out, [f"sts:{DEMO_STS}"], eval_corpus=[str(eval_txt)],
                                       log=lambda *_: None)
    return out_dir, record


def test_minilm_trim_is_exact_on_its_corpus(minilm_trimmed, minilm_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out, record = minilm_trimmed
    texts = corpus_texts(f"sts:{DEMO_STS}")
    base_tok, new_tok = AutoTokenizer.from_pretrained(minilm_path), AutoTokenizer.from_pretrained(out)
    kept = record["kept_base_ids"]
    assert len(new_tok) == len(kept) == record["kept_size"] < 30522 // 4
    base_enc, new_enc = base_tok(texts)["input_ids"], new_tok(texts)["input_ids"]
    for a, b in zip(base_enc, new_enc):
        assert [kept[i] for i in b] == a  # same tokens, renumbered
        assert base_tok.convert_ids_to_tokens(a) == new_tok.convert_ids_to_tokens(b)
    base_st = SentenceTransformer(str(minilm_path), device="cpu")
    new_st = SentenceTransformer(str(out), device="cpu")
    assert new_st.max_seq_length == base_st.max_seq_length == 256  # the export keeps the base's limit
    e_base = base_st.encode(texts[:64], convert_to_tensor=True)
    e_new = new_st.encode(texts[:64], convert_to_tensor=True)
    assert float((e_base - e_new).abs().max()) <= 1e-6
    assert record["verification"]["max_abs_diff"] <= 1e-6
    assert record["coverage"]["corpus"]["changed_text_share"] == 0.0


def test_minilm_trim_files_and_counts(minilm_trimmed, minilm_path):
    from transformers import AutoModel

    out, record = minilm_trimmed
    assert not (out / "sentencepiece.bpe.model").exists()
    vocab_txt = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tj = json.loads((out / "tokenizer.json").read_text())
    assert vocab_txt == [t for t, _ in sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])]
    info = json.loads((out / "pruning_info.json").read_text())
    model = AutoModel.from_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    assert info["params"]["exported"]["total"] == n == record["params_after"]
    assert record["params_before"] - n == (30522 - record["kept_size"]) * 384
    assert info["vocabulary"]["kept_size"] == model.config.vocab_size == record["kept_size"]
    assert info["vocabulary"]["corpus"] == [f"sts:{DEMO_STS}"]
    # FlagEmbedding usage: mean pooling said, and no sparse/colbert offered for a head-less export.
    flag_usage = info["usage"]["flag_embedding"]
    assert "pooling_method='mean'" in flag_usage and "dense only" in flag_usage
    # Out of the corpus: the physics sentence uses pieces the demo pairs never do, the guitar one does not.
    from transformers import AutoTokenizer

    base_tok = AutoTokenizer.from_pretrained(minilm_path)
    kept = set(record["kept_base_ids"])
    physics = base_tok("Quantum chromodynamics binds quarks with gluons.", add_special_tokens=False)["input_ids"]
    assert not set(physics) <= kept
    cov = info["vocabulary"]["coverage"]["eval"]
    assert cov["texts"] == 2 and cov["changed_text_share"] == 0.5


def test_trimming_a_trimmed_export_records_base_ids(minilm_trimmed, minilm_path, tmp_path):
    from transformers import AutoTokenizer

    out, record = minilm_trimmed
    small = tmp_path / "small.txt"
    small.write_text("a man is playing a guitar.\n")
    out2, rec2 = prune_vocabulary(str(out), tmp_path / "again", [str(small)], log=lambda *_: None)
    base_tok, tok2 = AutoTokenizer.from_pretrained(minilm_path), AutoTokenizer.from_pretrained(out2)
    ids2 = tok2("a man is playing a guitar.")["input_ids"]
    assert [rec2["kept_base_ids"][i] for i in ids2] == base_tok("a man is playing a guitar.")["input_ids"]
    assert json.loads((out2 / "pruning_info.json").read_text())["pruned_by"]["vocabulary"]["kept_size"] == \
        record["kept_size"]


# ---------------------------------------------------------------------------------------------- XLM-R + BGE-M3 heads
def _multi_mt_texts(lang: str, split: str, n: int) -> list[str]:
    with open(MULTI_MT / f"stsb-{lang}-{split}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[:n]
    return [t for r in rows for t in r[:2]]


@pytest.fixture(scope="module")
def multilingual_xlmr(tmp_path_factory):
    if not (MULTI_MT / "stsb-de-train.csv").is_file():
        pytest.skip(f"stsb-multi-mt not found at {MULTI_MT} (shared/ is absent on this machine)")
    from tiny_models import build_tiny_xlmr

    texts = [t for lang in ("de", "fr", "es", "ru", "zh", "ja") for t in _multi_mt_texts(lang, "train", 400)]
    return build_tiny_xlmr(tmp_path_factory.mktemp("xlmr_mt"), bge_m3_heads=True, texts=texts, vocab_size=3000)


def test_xlmr_unigram_trim_keeps_dense_sparse_colbert(multilingual_xlmr, tmp_path):
    from FlagEmbedding import BGEM3FlagModel
    from transformers import AutoTokenizer

    corpus = tmp_path / "de_fr.txt"
    texts = _multi_mt_texts("de", "dev", 150) + _multi_mt_texts("fr", "dev", 150)
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    eval_txt = tmp_path / "ja.txt"
    eval_txt.write_text("\n".join(_multi_mt_texts("ja", "dev", 100)) + "\n", encoding="utf-8")
    out, record = prune_vocabulary(str(multilingual_xlmr), tmp_path / "out", [str(corpus)],
                                   eval_corpus=[str(eval_txt)], log=lambda *_: None)
    base_tok, new_tok = AutoTokenizer.from_pretrained(multilingual_xlmr), AutoTokenizer.from_pretrained(out)
    assert 100 < record["kept_size"] < len(base_tok)
    assert not (out / "sentencepiece.bpe.model").exists()
    assert "dense only" not in json.loads((out / "pruning_info.json").read_text())["usage"]["flag_embedding"]
    for t in texts:
        assert base_tok.tokenize(t) == new_tok.tokenize(t)
    # Pad, bos, eos keep their ids (XLM-R numbers positions from the pad id).
    assert (new_tok.pad_token_id, new_tok.cls_token_id, new_tok.eos_token_id) == (1, 0, 2)
    assert new_tok.mask_token_id == record["kept_size"] - 1
    # Out of the corpus's languages, Japanese loses coverage: more UNK than before.
    ja = record["coverage"]["eval"]
    assert ja["unk_share_trimmed"] > ja["unk_share_base"] and ja["changed_text_share"] > 0.5

    kwargs = dict(pooling_method="cls", normalize_embeddings=True, use_fp16=False, devices="cpu")
    base_m3, new_m3 = BGEM3FlagModel(str(multilingual_xlmr), **kwargs), BGEM3FlagModel(str(out), **kwargs)
    probe = texts[:6]
    args = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=64)
    a, b = base_m3.encode(probe, **args), new_m3.encode(probe, **args)
    assert abs(a["dense_vecs"] - b["dense_vecs"]).max() <= 1e-6
    for va, vb in zip(a["colbert_vecs"], b["colbert_vecs"]):
        assert abs(va - vb).max() <= 1e-6
    for wa, wb in zip(a["lexical_weights"], b["lexical_weights"]):
        sa = {base_tok.convert_ids_to_tokens(int(k)): float(v) for k, v in wa.items()}
        sb = {new_tok.convert_ids_to_tokens(int(k)): float(v) for k, v in wb.items()}
        assert sa.keys() == sb.keys() and sa
        assert max(abs(sa[k] - sb[k]) for k in sa) <= 1e-6
    # FlagEmbedding's unused-token set (cls, eos, pad, unk) maps: no special token carries a weight.
    specials = {new_tok.cls_token_id, new_tok.eos_token_id, new_tok.pad_token_id, new_tok.unk_token_id}
    assert all(int(k) not in specials for w in b["lexical_weights"] for k in w)


# ---------------------------------------------------------------------------------------------- bad input (CLI)
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "prune_vocab.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty", "unknown_only", "max_vocab_low", "max_vocab_high", "out_exists",
                                  "no_tokenizer"])
def test_prune_vocab_bad_input(case, tmp_path, minilm_path):
    import shutil

    model = str(minilm_path)
    corpus = tmp_path / "c.txt"
    corpus.write_text("a man is playing a guitar.\n")
    out = tmp_path / "out"
    extra: list[str] = []
    if case == "empty":
        corpus.write_text("\n \n")
        expect = "no examples"
    elif case == "unknown_only":
        corpus.write_text("\U00013000\U00013001\n\U00013002\n")  # Egyptian hieroglyphs: [UNK] for WordPiece
        expect = "no token the tokenizer knows"
    elif case == "max_vocab_low":
        extra = ["--max-vocab", "3"]
        expect = "below the 5 tokens"
    elif case == "max_vocab_high":
        extra = ["--max-vocab", "40000"]
        expect = "above the base vocabulary size 30522"
    elif case == "out_exists":
        out.mkdir()
        (out / "keep.txt").write_text("user data")
        expect = "exists and is not empty"
    else:
        model_dir = tmp_path / "model"
        shutil.copytree(minilm_path, model_dir)
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
            (model_dir / name).unlink(missing_ok=True)
        model = str(model_dir)
        expect = "no loadable tokenizer"
    r = _cli(model, str(out), "--corpus", str(corpus), *extra)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.strip().splitlines() if x.startswith("prune_vocab: error:")]
    assert len(lines) == 1 and expect in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    if case == "out_exists":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
