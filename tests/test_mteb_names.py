"""MTEB files each model under its own name and a content-hash revision, with the split the data really is."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bge_pruning.evaluation.mteb_wrapper import model_identity, split_of_file

ROOT = Path(__file__).resolve().parents[1]


def test_split_of_a_local_file(tmp_path):
    for name, split in (("sts-dev.csv", "validation"), ("sts-train.csv", "train"), ("test.tsv", "test"),
                        ("stsb-de-dev.csv", "validation"), ("pairs.tsv", "test"), ("develop.tsv", "test")):
        (tmp_path / name).write_text("x")
        assert split_of_file(tmp_path / name) == split, name


@pytest.mark.slow
def test_pruned_model_and_base_get_their_own_mteb_folders(tmp_path, minilm_path):
    from bge_pruning.vocab import prune_vocabulary

    corpus = tmp_path / "c.txt"
    shutil.copy(ROOT / "data" / "demo_sts" / "test.tsv", tmp_path / "demo-dev.tsv")
    corpus.write_text((ROOT / "data" / "demo_sts" / "test.tsv").read_text().replace("\t", "\n"))
    out, _ = prune_vocabulary("embedded:all-MiniLM-L6-v2", tmp_path / "exp" / "model", [str(corpus)],
                              log=lambda *_: None)
    name, revision = model_identity(str(out), out)
    assert name.startswith("bge_pruning/all-MiniLM-L6-v2-pruned-") and len(revision) == 12
    assert model_identity("embedded:all-MiniLM-L6-v2", minilm_path)[0] == "sentence-transformers/all-MiniLM-L6-v2"

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_model.py"), str(out), "--baseline",
                           "embedded:all-MiniLM-L6-v2", "--tasks", "mteb:demo-dev.tsv", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "mteb_results" / "results"  # the default folder, without --output
    folders = {p.name: [r.name for r in p.iterdir()] for p in results.iterdir()}
    assert set(folders) == {name.replace("/", "__"), "sentence-transformers__all-MiniLM-L6-v2"}, folders
    assert folders[name.replace("/", "__")] == [revision]
    task = json.loads(next((results / name.replace("/", "__") / revision).glob("LocalSTS_*.json")).read_text())
    assert list(task["scores"]) == ["validation"]  # dev data is not filed as test
    meta = json.loads((results / name.replace("/", "__") / revision / "model_meta.json").read_text())
    from transformers import AutoModel

    assert meta["n_parameters"] == sum(p.numel() for p in AutoModel.from_pretrained(out).parameters())


def test_mteb_evaluate_on_sentence_transformer_equals_the_project_wrapper(minilm_path, tmp_path):
    """What the README says: ``mteb.evaluate(SentenceTransformer(export), task)`` gives the score the project's
    wrapper gives (``evaluate_model.py ... mteb:``), on a pruned custom-class export, for an STS and a retrieval
    task. The wrapper encodes through its own EmbeddingModel, mteb through sentence-transformers."""
    import mteb
    from sentence_transformers import SentenceTransformer
    from test_evaluation import write_beir_dir
    from test_export import MINILM_HEADS, MINILM_INTER, MINILM_LAYER_Z, _masks
    from transformers import AutoTokenizer

    from bge_pruning.evaluation.encoder import EmbeddingModel
    from bge_pruning.evaluation.mteb_wrapper import local_retrieval_task, local_sts_task, run_mteb
    from bge_pruning.evaluation.retrieval import paraphrase_retrieval_from_sts
    from bge_pruning.export import export_pruned_model
    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    backbone = MaskedBGEM3Backbone.from_pretrained(str(minilm_path)).eval()
    export = export_pruned_model(backbone, tmp_path / "export", AutoTokenizer.from_pretrained(str(minilm_path)),
                                 _masks(MINILM_HEADS, MINILM_INTER, 12, 1536, MINILM_LAYER_Z), pooling="mean",
                                 info={"base_model": "embedded:all-MiniLM-L6-v2"})
    sts = ROOT / "data" / "demo_sts" / "test.tsv"
    from bge_pruning.data import load_sts

    # Pairs scored 2.5 and up count as relevant (not only near-paraphrases), over train + test second sentences,
    # so the ranking is not trivially perfect.
    pairs = load_sts(str(sts)) + load_sts(str(sts.with_name("train.tsv")))
    corpus, queries, qrels = paraphrase_retrieval_from_sts(pairs, min_score=2.5)
    beir = write_beir_dir(tmp_path / "beir", corpus, queries, qrels)

    ours = run_mteb(EmbeddingModel.from_dir(export), [str(sts), str(beir)], output_dir=None, show_progress=False)
    st = SentenceTransformer(str(export), device="cpu", trust_remote_code=True)
    theirs = mteb.evaluate(st, [local_sts_task(sts), local_retrieval_task(beir)], cache=None,
                           show_progress_bar=False, co2_tracker=False)
    by_name = {r.task_name: r.get_score() for r in theirs}
    assert set(by_name) == set(ours) == {"LocalSTS_test", "LocalRetrieval_beir"}
    for name, r in ours.items():
        print(f"\n[mteb] {name}: wrapper {r['main_score']:.6f}, mteb.evaluate(SentenceTransformer) {by_name[name]:.6f}")
        assert by_name[name] == pytest.approx(r["main_score"], abs=1e-4)
    assert ours["LocalRetrieval_beir"]["main_score"] < 0.99  # a ranking with mistakes to agree on
