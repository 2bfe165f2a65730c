"""MTEB files each model under its own name and a content-hash revision, with the split the data really is."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bge_pruning.evaluation.mteb_wrapper import model_identity, split_of_file

ROOT = Path(__file__).resolve().parents[1]


def test_split_of_a_local_file(tmp_path):
    for name, split in (("sts-dev.csv", "validation"), ("sts-train.csv", "train"), ("test.tsv", "test"),
                        ("stsb-de-dev.csv", "validation"), ("pairs.tsv", "test"), ("develop.tsv", "test")):
        (tmp_path / name).write_text("x")
        assert split_of_file(tmp_path / name) == split, name


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
