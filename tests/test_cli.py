"""The commands users type: train.py offline behaviour, the --dataset shortcut, checkpoint -> export."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModel

from bge_pruning.config import load_config
from bge_pruning.training.checkpoint import load_composer_model
from bge_pruning.training.run import build_trainer

# slow tier (`make test`, not `make test-fast`): every test runs train.py or a script in a subprocess
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_bge_m3_config_fails_offline_at_the_hub_with_a_clear_message(tmp_path):
    proc = run_cli("train.py", "configs/target_60pct.yaml", f"train.save_folder={tmp_path}/ckpt",
                   f"export.output_dir={tmp_path}/model", "train.log_file=null")
    assert proc.returncode == 2
    assert "model.name_or_path: could not download 'BAAI/bge-m3' from the Hugging Face hub" in proc.stderr
    assert "hf download BAAI/bge-m3" in proc.stderr  # huggingface_hub 2.x installs `hf`, not huggingface-cli
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "model").exists()


def test_dataset_shortcut_reaches_the_hub_dataset(tmp_path):
    """--dataset sts replaces data.train with mteb/stsbenchmark-sts; offline that load fails clearly."""
    proc = run_cli("train.py", "configs/demo.yaml", "--dataset", "sts", f"train.save_folder={tmp_path}/ckpt",
                   f"export.output_dir={tmp_path}/model", "train.log_file=null", "report.before_after=false")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "mteb/stsbenchmark-sts" in proc.stderr and "Traceback" not in proc.stderr
    bad = run_cli("train.py", "configs/demo.yaml", "--dataset", "nope")
    assert bad.returncode == 2 and "sts" in bad.stderr and "msmarco" in bad.stderr


def test_checkpoint_to_export_with_the_script(tmp_path, tiny_xlmr_path):
    cfg = load_config(tiny_config(tmp_path, tiny_xlmr_path, max_duration="12ba", save_interval="12ba",
                                  eval_interval="12ba"))
    trainer, model = build_trainer(cfg)
    from bge_pruning.training.checkpoint import save_run_files

    save_run_files(Path(cfg.train.save_folder), cfg, model)
    trainer.fit()
    trainer.close()
    checkpoint = Path(cfg.train.save_folder) / "latest-rank0.pt"
    assert checkpoint.exists()

    # The reloaded model is the trained one: same masks, same weights.
    reloaded = load_composer_model(checkpoint)
    assert reloaded.trained_steps == 12
    for k, v in model.l0_module.deterministic_zs().items():
        assert torch.equal(v, reloaded.l0_module.deterministic_zs()[k]), k
    for (name, p), (_, q) in zip(model.backbone.state_dict().items(), reloaded.backbone.state_dict().items()):
        assert torch.equal(p, q), name

    for flags in ([], ["--vanilla"]):
        out = tmp_path / ("model" + "_".join(flags))
        proc = run_cli("scripts/extract_pruned_model.py", checkpoint, out, *flags)
        assert proc.returncode == 0, proc.stderr[-3000:]
        hf = AutoModel.from_pretrained(out, trust_remote_code=True)
        shape = reloaded.l0_module.expected_shape()
        assert hf.config.num_hidden_layers == shape.n_layers
        assert hf.config.intermediate_size == shape.intermediate_per_layer[0]
    # Refuses to overwrite without --overwrite, and leaves the export as it was.
    before = sorted(p.name for p in (tmp_path / "model").iterdir())
    proc = run_cli("scripts/extract_pruned_model.py", checkpoint, tmp_path / "model")
    assert proc.returncode != 0 and "--overwrite" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before


def test_evaluate_cli_accepts_embedded_and_reports_hub_failures(tmp_path):
    out = tmp_path / "eval.json"
    proc = run_cli("scripts/evaluate_model.py", "embedded:all-MiniLM-L6-v2", "--baseline", "embedded:all-MiniLM-L6-v2",
                   "--tasks", "sts:data/demo_sts/test.tsv", "--max-examples", "30", "--output", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "100.00" in proc.stdout  # the same model against itself retains 100%
    offline = run_cli("scripts/evaluate_model.py", "BAAI/bge-m3", "--tasks", "sts:data/demo_sts/test.tsv",
                      "--no-progress")
    assert offline.returncode != 0
    assert "BAAI/bge-m3: not a local directory, and it could not be downloaded" in offline.stderr
    assert "Traceback" not in offline.stderr


def test_small_cli_contracts():
    """--help says the description once; target_shapes refuses a share above 1 and an unreadable --base."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    help_text = subprocess.run([sys.executable, str(root / "scripts" / "evaluate_model.py"), "--help"],
                               capture_output=True, text=True, timeout=120).stdout
    first_line = "Evaluate a model directory (optionally against a baseline)"
    assert help_text.count(first_line) == 1
    bad = subprocess.run([sys.executable, str(root / "scripts" / "target_shapes.py"), "--share", "1.5"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--share must be in (0, 1]" in bad.stderr
    hub = subprocess.run([sys.executable, str(root / "scripts" / "target_shapes.py"), "--share", "0.5", "--base",
                          "BAAI/bge-m3"], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert hub.returncode == 2 and "--base BAAI/bge-m3: cannot read its config.json" in hub.stderr
    assert "Traceback" not in hub.stderr
