"""No code runs that the user did not ask to trust: planted modeling files and crafted pickles are refused."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bge_pruning.trust import RemoteCodeError, is_own_export, resolve_trust

ROOT = Path(__file__).resolve().parents[1]


def plant_remote_code(model_dir: Path, marker: Path) -> Path:
    """A model directory whose config.json points AutoModel at a planted file that writes ``marker`` on import."""
    (model_dir / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('payload ran')\n"
        "from transformers import BertConfig, BertModel\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil'\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


@pytest.fixture
def planted(tmp_path, minilm_path):
    marker = tmp_path / "PAYLOAD_RAN"
    model_dir = plant_remote_code(Path(shutil.copytree(minilm_path, tmp_path / "planted")), marker)
    return model_dir, marker


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.splitlines() if "error:" in x]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_train_refuses_planted_remote_code(planted, tmp_path):
    model_dir, marker = planted
    proc = _run("train.py", "configs/demo.yaml", f"model.name_or_path={model_dir}", "run_name=planted",
                f"train.save_folder={tmp_path / 'ckpt'}", f"export.output_dir={tmp_path / 'out'}",
                f"train.log_file={tmp_path / 'log.jsonl'}")
    line = _one_error_line(proc)
    assert "modeling_evil.py" in line and "model.trust_remote_code=true" in line and "nothing was run" in line
    assert not marker.exists()


@pytest.mark.slow
def test_evaluate_refuses_planted_remote_code(planted, tmp_path):
    model_dir, marker = planted
    for args in ([str(model_dir)], [str(ROOT / "data"), "--baseline", str(model_dir)]):
        proc = _run("scripts/evaluate_model.py", *args, "--tasks", "sts:data/demo_sts/test.tsv")
        line = _one_error_line(proc)
        assert "--trust-remote-code" in line and "modeling_evil.py" in line
    assert not marker.exists()


def test_opting_in_runs_the_code(planted):
    model_dir, marker = planted
    assert resolve_trust(str(model_dir), True, "x", "y") is True
    from transformers import AutoConfig

    AutoConfig.from_pretrained(str(model_dir), trust_remote_code=True)
    assert marker.read_text() == "payload ran"  # the planted file really is a payload


@pytest.fixture(scope="module")
def custom_export(tmp_path_factory, tiny_xlmr_path):
    from bge_pruning.export import export_pruned_model
    from bge_pruning.models.loading import load_hf_model
    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    hf, tok = load_hf_model(str(tiny_xlmr_path))
    backbone = MaskedBGEM3Backbone.from_hf_model(hf)
    head_z = torch.ones(4, 4)
    head_z[:, 0] = 0  # one head fewer per layer: the custom modeling file is needed
    return export_pruned_model(backbone, tmp_path_factory.mktemp("custom") / "model", tok, {"head_z": head_z})


def test_own_export_is_trusted_and_a_modified_one_is_not(custom_export, tmp_path):
    assert is_own_export(custom_export) and resolve_trust(str(custom_export), False, "x", "y") is True
    tampered = Path(shutil.copytree(custom_export, tmp_path / "tampered"))
    with open(tampered / "modeling_pruned.py", "a") as f:
        f.write("\nimport os  # an extra line\n")
    assert not is_own_export(tampered)
    with pytest.raises(RemoteCodeError, match="differs from the one this version of bge_pruning ships"):
        resolve_trust(str(tampered), False, "MODEL_DIR", "pass --trust-remote-code")
    no_info = Path(shutil.copytree(custom_export, tmp_path / "no_info"))
    (no_info / "pruning_info.json").unlink()
    with pytest.raises(RemoteCodeError, match="not an export written by bge_pruning"):
        resolve_trust(str(no_info), False, "MODEL_DIR", "pass --trust-remote-code")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker file


@pytest.mark.slow
def test_extract_refuses_a_crafted_pickle(tmp_path):
    marker = tmp_path / "PICKLE_RAN"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ROOT / "configs" / "demo.yaml", run / "config.yaml")
    crafted = run / "latest-rank0.pt"
    torch.save({"state": {"model": _Payload(str(marker))}}, crafted)
    proc = _run("scripts/extract_pruned_model.py", str(crafted), str(tmp_path / "out"))
    line = _one_error_line(proc)
    assert "refused" in line and "could run code" in line
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The same file does run its payload under a plain torch.load: the test would catch a regression.
    torch.load(crafted, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_extract_one_line_errors_for_a_directory_and_a_remote_uri(tmp_path):
    (tmp_path / "latest-rank0.pt").write_bytes(b"")
    line = _one_error_line(_run("scripts/extract_pruned_model.py", str(tmp_path), str(tmp_path / "out")))
    assert "is a directory; give a checkpoint file such as" in line
    line = _one_error_line(_run("scripts/extract_pruned_model.py", "s3://bucket/run/latest-rank0.pt",
                                str(tmp_path / "out2")))
    assert "remote checkpoints are not read directly" in line
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(b"PK\x03\x04 not a whole zip")
    line = _one_error_line(_run("scripts/extract_pruned_model.py", str(truncated), str(tmp_path / "out3")))
    assert "not a readable Composer checkpoint" in line


@pytest.mark.slow
def test_teacher_and_benchmark_refuse_planted_remote_code(planted, tmp_path, minilm_path):
    model_dir, marker = planted
    proc = _run("train.py", "configs/demo.yaml", f"model.teacher={model_dir}", "run_name=planted_teacher",
                f"train.save_folder={tmp_path / 'ckpt'}", f"export.output_dir={tmp_path / 'out'}",
                f"train.log_file={tmp_path / 'log.jsonl'}")
    assert "model.teacher" in _one_error_line(proc)
    proc = _run("scripts/benchmark_efficiency.py", str(minilm_path), str(model_dir), "--batch-sizes", "1",
                "--seq-lens", "8", "--repeats", "1")
    assert "PRUNED_DIR" in _one_error_line(proc) and "--trust-remote-code" in _one_error_line(proc)
    assert not marker.exists()


def test_hub_ids_get_stock_classes_unless_opted_in():
    assert resolve_trust("BAAI/bge-m3", False, "model.name_or_path", "y") is False
    assert resolve_trust("BAAI/bge-m3", True, "model.name_or_path", "y") is True


@pytest.mark.slow
def test_extract_refuses_planted_code_in_the_checkpoint_or_beside_it(tmp_path, tiny_xlmr_path):
    """Code planted in a checkpoint's run record runs only with --trust-remote-code; code planted in base_model/
    beside a checkpoint is never read when the checkpoint has its record, and is refused for an older checkpoint
    (no record) that is rebuilt from base_model/."""
    from test_reliability import write_config

    from bge_pruning.training.checkpoint import RUN_RECORD_KEY

    cfg = write_config(tmp_path, tiny_xlmr_path, max_duration="4ba", save_interval="4ba", eval_interval="100ba")
    assert _run(str(ROOT / "train.py"), str(cfg), cwd=tmp_path).returncode == 0
    marker = tmp_path / "PAYLOAD_RAN"
    checkpoint = tmp_path / "ckpt" / "latest-rank0.pt"
    plant_remote_code(tmp_path / "ckpt" / "base_model", marker)
    proc = _run("scripts/extract_pruned_model.py", str(checkpoint), str(tmp_path / "x"))
    assert proc.returncode == 0 and not marker.exists(), proc.stderr[-3000:]  # the record, not base_model/

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    record = saved["state"]["callbacks"].pop(RUN_RECORD_KEY)
    older = tmp_path / "ckpt" / "older.pt"  # as written before checkpoints held a record
    torch.save(saved, older)
    line = _one_error_line(_run("scripts/extract_pruned_model.py", str(older), str(tmp_path / "y")))
    assert "base_model/ beside it" in line and "--trust-remote-code" in line and not marker.exists()

    planted = tmp_path / "planted_record"  # the same payload, now inside the record of a checkpoint moved alone
    planted.mkdir()
    (planted / "config.json").write_text(json.dumps(record["hf_config"]))
    plant_remote_code(planted, marker)
    record["hf_config"] = json.loads((planted / "config.json").read_text())
    record["code"]["modeling_evil.py"] = (planted / "modeling_evil.py").read_bytes()
    saved["state"]["callbacks"][RUN_RECORD_KEY] = record
    forged = tmp_path / "alone" / "forged.pt"
    forged.parent.mkdir()
    torch.save(saved, forged)
    line = _one_error_line(_run("scripts/extract_pruned_model.py", str(forged), str(tmp_path / "z")))
    assert "the base model stored in it" in line and "modeling_evil.py" in line and "--trust-remote-code" in line
    assert not marker.exists()
    _run("scripts/extract_pruned_model.py", str(forged), str(tmp_path / "z"), "--trust-remote-code")
    assert marker.exists()  # opting in does run it: the refusal above is what kept it from running
