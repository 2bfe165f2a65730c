"""Hostile inputs and real faults stop early with one line (exit 2), and never lose the user's data."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_reliability import error_line, run_main, snapshot, write_config

ROOT = Path(__file__).resolve().parents[1]


def test_duplicate_yaml_key(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("model:\n  name_or_path: x\ntrain:\n  lr: 5.0e-5\n  batch_size: 4\n  lr: 1.0\n")
    code, err = run_main(capsys, cfg)
    assert code == 2 and f"{cfg}:6: duplicate key 'lr' (first at line 4)" in error_line(err)


def test_config_that_is_a_directory(tmp_path, capsys):
    code, err = run_main(capsys, tmp_path)
    assert code == 2 and "is a directory; give a YAML run config" in error_line(err)


def test_non_bert_model(tmp_path, tiny_xlmr_path, capsys):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 8}))
    code, err = run_main(capsys, write_config(tmp_path / "run", tiny_xlmr_path), f"model.name_or_path={gpt2}")
    assert code == 2 and "is a 'gpt2' model; bge_pruning prunes BERT-family encoders" in error_line(err)


def test_truncated_weights(tmp_path, tiny_xlmr_path, capsys):
    model = Path(shutil.copytree(tiny_xlmr_path, tmp_path / "model"))
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, err = run_main(capsys, write_config(tmp_path / "run", tiny_xlmr_path), f"model.name_or_path={model}")
    assert code == 2 and f"could not load {model}" in error_line(err)


def test_tokenizer_of_another_model(tmp_path, tiny_xlmr_path, minilm_path, capsys):
    """MiniLM with the tiny XLM-R's 300-token tokenizer (pad id 1 against the model's 0)."""
    model = Path(shutil.copytree(minilm_path, tmp_path / "minilm"))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (model / f).unlink(missing_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_xlmr_path / f, model / f)
    code, err = run_main(capsys, write_config(tmp_path / "run", tiny_xlmr_path), f"model.name_or_path={model}")
    assert code == 2 and "far fewer than the model was trained with; tokenizer and model do not match" in \
        error_line(err)
    # Same size, other special ids: the pad id is checked too.
    xlmr = Path(shutil.copytree(tiny_xlmr_path, tmp_path / "xlmr"))
    config = json.loads((xlmr / "config.json").read_text())
    config["pad_token_id"] = 3
    (xlmr / "config.json").write_text(json.dumps(config))
    code, err = run_main(capsys, write_config(tmp_path / "run2", tiny_xlmr_path), f"model.name_or_path={xlmr}")
    assert code == 2 and "the tokenizer's pad id is 1, the model's config.pad_token_id is 3" in error_line(err)


def test_second_run_with_the_same_folder_stops_at_once(tmp_path, tiny_xlmr_path, capsys):
    from bge_pruning.training.checkpoint import lock_run_folder

    cfg = write_config(tmp_path, tiny_xlmr_path)
    held = lock_run_folder(tmp_path / "ckpt", "tiny")  # the first run, still going
    try:
        code, err = run_main(capsys, cfg)
    finally:
        held.release()
    assert code == 2 and "is in use by another run (pid" in error_line(err)
    assert not (tmp_path / "model").exists() and not (tmp_path / "log.jsonl").exists()


@pytest.mark.parametrize("case", ["export_is_file", "log_file_is_dir", "save_folder_under_file"])
def test_output_paths_checked_at_start(case, tmp_path, tiny_xlmr_path, capsys):
    cfg = write_config(tmp_path, tiny_xlmr_path)
    blocker = tmp_path / "blocker"
    if case == "export_is_file":
        blocker.write_text("a user's file")
        override, expect = f"export.output_dir={blocker}", "exists and is a file, not a directory"
    elif case == "log_file_is_dir":
        blocker.mkdir()
        override, expect = f"train.log_file={blocker}", "train.log_file: " + str(blocker) + " is a directory"
    else:
        blocker.write_text("a user's file")
        override, expect = f"train.save_folder={blocker / 'ckpt'}", "train.save_folder: cannot write in"
    before = snapshot(tmp_path)
    code, err = run_main(capsys, cfg, override)
    assert code == 2 and expect in error_line(err)
    assert snapshot(tmp_path) == before


def test_corrupt_pruning_info_on_finetune(tmp_path, tiny_xlmr_path, capsys):
    model = Path(shutil.copytree(tiny_xlmr_path, tmp_path / "model_in"))
    (model / "pruning_info.json").write_text("{not json")
    code, err = run_main(capsys, write_config(tmp_path / "run", tiny_xlmr_path), f"model.name_or_path={model}",
                         "stage=finetune")
    assert code == 2 and "pruning_info.json is not valid JSON" in error_line(err)
    (model / "pruning_info.json").write_text("[1, 2]")
    code, err = run_main(capsys, write_config(tmp_path / "run2", tiny_xlmr_path), f"model.name_or_path={model}",
                         "stage=finetune")
    assert code == 2 and "must hold a JSON object, got list" in error_line(err)


@pytest.mark.slow
def test_autoresume_falls_back_from_a_truncated_checkpoint(tmp_path, tiny_xlmr_path, capsys, caplog):
    cfg = write_config(tmp_path, tiny_xlmr_path, max_duration="8ba", save_interval="4ba", autoresume=True,
                       eval_interval="100ba")
    assert run_main(capsys, cfg, "train.max_duration=8ba")[0] == 0
    ckpt = tmp_path / "ckpt"
    original_config = (ckpt / "config.yaml").read_text()
    latest = (ckpt / "latest-rank0.pt").resolve()
    assert latest.name == "ep0-ba8-rank0.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a disk that filled up mid-write
    shutil.rmtree(tmp_path / "model")
    code, err = run_main(capsys, cfg, "train.max_duration=12ba")
    assert code == 0, err[-3000:]
    assert "ep0-ba8-rank0.pt is truncated" in caplog.text and "resuming from ep0-ba4-rank0.pt" in caplog.text
    assert (ckpt / "interrupted_saves" / "ep0-ba8-rank0.pt").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 12
    # The resumed run's config is kept beside the original, which stays the run's record.
    assert (ckpt / "config.yaml").read_text() == original_config and (ckpt / "config.restart-1.yaml").is_file()


@pytest.mark.slow
def test_evaluate_output_checked_before_evaluating(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "scripts/evaluate_model.py", "embedded:all-MiniLM-L6-v2", "--tasks",
                           "sts:data/demo_sts/test.tsv", "--output", str(blocker / "out.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "checked before evaluating, so no result is lost" in proc.stderr
    assert "wall time" not in proc.stdout  # nothing was evaluated


def test_huge_line_is_capped_before_tokenizing(minilm_path):
    from transformers import AutoTokenizer

    from bge_pruning.data.collate import CHARS_PER_TOKEN_CAP, _Encoder

    tok = AutoTokenizer.from_pretrained(minilm_path)
    enc = _Encoder(tok, 32)
    normal = " ".join(["the quick brown fox jumps over the lazy dog"] * 400)  # 17,600 characters
    plain = tok([normal], truncation=True, max_length=32, return_tensors="pt")["input_ids"]
    assert enc.encode([normal])["input_ids"].tolist() == plain.tolist()  # the cap changes nothing real
    huge = "x" * 5_000_000
    seen: list[int] = []
    real_call = type(tok).__call__
    try:  # what reaches the tokenizer: the capped text, not 5 MB
        def recording_call(self, texts, **kw):
            seen.extend(len(t) for t in texts)
            return real_call(self, texts, **kw)

        type(tok).__call__ = recording_call
        out = enc.encode([huge])
    finally:
        type(tok).__call__ = real_call
    assert seen == [CHARS_PER_TOKEN_CAP * 32]
    assert out["input_ids"].tolist() == [[tok.cls_token_id, tok.unk_token_id, tok.sep_token_id]]


def test_non_finite_advice_without_a_checkpoint(tmp_path):
    from bge_pruning.training.callbacks import NonFiniteLossGuard

    advice = NonFiniteLossGuard(save_folder=str(tmp_path / "empty"))._advice()
    assert "no checkpoint was written before it" in advice and "nothing to resume" in advice
    assert "from that checkpoint" not in advice


@pytest.mark.slow
def test_disk_full_while_checkpointing(tmp_path, tiny_xlmr_path, capsys, monkeypatch):
    """torch's zip writer on a full disk: a partial ep0-ba8 file and 'unexpected pos'. One line, the partial
    file moved aside, and the intact ep0-ba4 left as the checkpoint to resume from."""
    import torch

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        name = getattr(f, "name", "")
        if str(name).endswith("ep0-ba8-rank0.pt"):
            f.write(b"PK\x03\x04" + b"\0" * 1000)
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1088 vs 1004")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = write_config(tmp_path, tiny_xlmr_path, max_duration="8ba", save_interval="4ba", eval_interval="100ba")
    code, err = run_main(capsys, cfg)
    line = error_line(err)
    assert code == 2 and "the disk filled up while writing a checkpoint at step 8" in line
    assert "continue from ep0-ba4-rank0.pt" in line and "unexpected pos" in line
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "interrupted_saves" / "ep0-ba8-rank0.pt").is_file() and not (ckpt / "ep0-ba8-rank0.pt").exists()
    assert (ckpt / "ep0-ba4-rank0.pt").is_file() and not (tmp_path / "model").exists()


@pytest.fixture
def read_only_dir(tmp_path):
    src, mnt = tmp_path / "ro_src", tmp_path / "ro"
    src.mkdir(), mnt.mkdir()
    ok = subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        ok = False
    if not ok:
        pytest.skip("a read-only bind mount needs mount privileges, which this machine does not give")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_read_only_targets_are_named_as_such(read_only_dir, tmp_path, tiny_xlmr_path, capsys):
    ckpt = tmp_path / "some.pt"
    ckpt.write_bytes(b"")  # the target is checked before the checkpoint is read
    proc = subprocess.run([sys.executable, "scripts/extract_pruned_model.py", str(ckpt), str(read_only_dir / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Read-only file system" in proc.stderr and "free" not in proc.stderr
    code, err = run_main(capsys, write_config(tmp_path / "run", tiny_xlmr_path),
                         f"export.output_dir={read_only_dir / 'model'}")
    assert code == 2 and "export.output_dir" in error_line(err) and "Read-only file system" in error_line(err)
    code, err = run_main(capsys, write_config(tmp_path / "run2", tiny_xlmr_path),
                         f"train.save_folder={read_only_dir / 'ckpt'}")
    assert code == 2 and "train.save_folder: cannot write in" in error_line(err)
    assert "Read-only file system" in error_line(err)


@pytest.mark.parametrize("case", ["no_config_json", "a_file"])
def test_model_path_that_is_not_a_model_directory(case, tmp_path, tiny_xlmr_path, capsys):
    target = tmp_path / "thing"
    if case == "no_config_json":
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"")
        expect = "has no config.json; not a Hugging Face model directory"
    else:
        target.write_text("not a model")
        expect = "is a file; give the model's directory (with config.json) or a hub id"
    code, err = run_main(capsys, write_config(tmp_path / "run", tiny_xlmr_path), f"model.name_or_path={target}")
    assert code == 2 and f"model.name_or_path: {target} {expect}" in error_line(err)


def test_too_little_space_for_the_export_is_found_before_training(tmp_path, tiny_xlmr_path, capsys, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    code, err = run_main(capsys, write_config(tmp_path, tiny_xlmr_path))
    line = error_line(err)
    assert code == 2 and "export.output_dir" in line and "MiB free" in line
    assert not (tmp_path / "log.jsonl").exists() and not list((tmp_path / "ckpt").glob("*.pt"))
