"""The README's BGE-M3 workflow, run as written on a tiny XLM-R: prune, finetune, extract, evaluate.

The commands are read from the README's code block, so a README that scores the wrong model (the
prune-stage checkpoint instead of the finetuned one) fails here. Only the model and data are swapped
for tiny ones: configs with the real files' run names, the tiny model for BAAI/bge-m3, local STS pairs.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from test_reliability import subprocess_env, write_config

# slow tier (`make test`, not `make test-fast`): the README workflow through train.py and scripts, in subprocesses
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Pruning BGE-M3", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("  #")[0]) for line in block.strip().splitlines()]


def tiny_configs(work: Path, tiny_xlmr_path: Path) -> Path:
    """configs/target_60pct.yaml and configs/finetune_bge_m3.yaml for the tiny model, with the real files'
    run names (or lack of one): the part of the workflow under test."""
    real = {name: yaml.safe_load((ROOT / "configs" / name).read_text())
            for name in ("target_60pct.yaml", "finetune_bge_m3.yaml")}
    base = yaml.safe_load(write_config(work / "scratch", tiny_xlmr_path).read_text())
    for key in ("save_folder", "log_file"):
        base["train"].pop(key)
    base.pop("export")
    base["train"].update(max_duration="12ba", save_interval="12ba", eval_interval="12ba")
    configs = work / "configs"
    configs.mkdir()
    prune = dict(base, run_name=real["target_60pct.yaml"]["run_name"])
    (configs / "target_60pct.yaml").write_text(yaml.safe_dump(prune))
    finetune = {k: v for k, v in base.items() if k != "run_name"}
    finetune["stage"] = "finetune"
    finetune["model"] = {k: v for k, v in base["model"].items() if k != "l0_module"}
    if "run_name" in real["finetune_bge_m3.yaml"]:
        finetune["run_name"] = real["finetune_bge_m3.yaml"]["run_name"]
    (configs / "finetune_bge_m3.yaml").write_text(yaml.safe_dump(finetune))
    return Path(base["data"]["train"][0]["source"])


def test_readme_bge_m3_workflow_scores_the_finetuned_model(tmp_path, tiny_xlmr_path):
    pairs = tiny_configs(tmp_path, tiny_xlmr_path)
    commands = readme_commands()
    assert [c[1] for c in commands] == ["train.py", "train.py", "scripts/extract_pruned_model.py",
                                        "scripts/evaluate_model.py"]
    for cmd in commands:
        argv = [sys.executable, str(ROOT / cmd[1])]
        rest = cmd[2:]
        if cmd[1] == "scripts/evaluate_model.py":
            rest = [str(tiny_xlmr_path) if a == "BAAI/bge-m3" else a for a in rest[: rest.index("--tasks")]]
            rest += ["--tasks", f"sts:{pairs}", "--output", "eval.json", "--no-progress"]
        proc = subprocess.run(argv + rest, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                              env=subprocess_env())
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"

    evaluated = tmp_path / commands[3][2]
    finetuned = tmp_path / commands[1][3].split("=", 1)[1].replace("/model", "_finetune/model")
    pruned = tmp_path / commands[1][3].split("=", 1)[1]
    info = json.loads((evaluated / "pruning_info.json").read_text())
    assert "pruned_by" in info  # a finetune of a pruned export, not the prune stage itself
    w_eval, w_ft, w_pruned = (load_file(str(d / "model.safetensors")) for d in (evaluated, finetuned, pruned))
    assert all((w_eval[k] == w_ft[k]).all() for k in w_ft)
    assert any(not (w_eval[k] == w_pruned[k]).all() for k in w_pruned)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["model_dir"] == str(evaluated.resolve())
