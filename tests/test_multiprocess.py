"""Two processes through Composer's launcher (``composer -n 2 train.py``, gloo on CPU), and the per-rank data plan."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config
from torch.utils.data.distributed import DistributedSampler

from bge_pruning.config import load_config
from bge_pruning.data import MixtureBatches, MixtureSource
from bge_pruning.models.composer_bge_m3 import build_model
from bge_pruning.shapes import EncoderShape
from bge_pruning.training.checkpoint import load_composer_model

ROOT = Path(__file__).resolve().parents[1]
COMPOSER = Path(sys.executable).with_name("composer")
STEPS, BATCH = 24, 8


def test_mixture_plan_gives_every_rank_the_same_source_in_each_step():
    """Composer all-reduces the loss parts by name: ranks on different tasks in one step would deadlock."""
    sources = [MixtureSource("a", list(range(80)), lambda xs: {"ids": xs}, 3.0),
               MixtureSource("b", list(range(40)), lambda xs: {"ids": xs}, 1.0)]
    world = 2
    plan = MixtureBatches(sources, batch_size=4, seed=3, num_batches=STEPS * world, group=world)
    per_rank = [list(DistributedSampler(plan, num_replicas=world, rank=r, shuffle=False)) for r in range(world)]
    assert [len(ix) for ix in per_rank] == [STEPS, STEPS]
    steps = list(zip(*per_rank))
    assert all(plan[i]["source"] == plan[j]["source"] for i, j in steps)
    # The sources alternate by step in the single-process proportions (3:1 -> a a b a ...).
    assert [plan[i]["source"] for i, _ in steps[:8]] == list("aabaaaba")
    # Each rank reads different examples: no batch is seen twice within a cycle of its source.
    seen = [tuple(plan[i]["ids"]) for i in range(len(plan)) if plan.plan[i][1] == 0]
    assert len(seen) == len(set(seen))
    # group=1 is the single-process plan.
    single = MixtureBatches(sources, batch_size=4, seed=3, num_batches=STEPS)
    assert [s for s, _, _ in single.plan[:8]] == [0, 0, 1, 0, 0, 0, 1, 0]


@pytest.mark.slow
def test_two_processes_train_and_rank0_exports(tmp_path, tiny_xlmr_path):
    config = tiny_config(tmp_path, tiny_xlmr_path, batch_size=BATCH, max_duration=f"{STEPS}ba",
                         save_interval=f"{STEPS}ba", eval_interval=f"{STEPS}ba", device="cpu")
    cfg = yaml.safe_load(config.read_text())
    cfg["run_name"] = "ddp"
    cfg["loss"].update(distill_embedding=0.0, distill_similarity=0.0)
    cfg["data"]["eval"]["sts"]["max_examples"] = 32
    config.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([str(COMPOSER), "-n", "2", "--stdout", str(tmp_path / "rank{rank}.stdout"),
                           "--stderr", str(tmp_path / "rank{rank}.stderr"), "train.py", str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    rank1_err = (tmp_path / "rank1.stderr").read_text() if (tmp_path / "rank1.stderr").exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + rank1_err[-2000:]

    # Only rank 0 exported and printed the summary; rank 1 ran to the end without an error.
    assert "exported model:" in proc.stdout
    assert "exported model:" not in (tmp_path / "rank1.stdout").read_text()
    assert "Traceback" not in rank1_err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == STEPS

    # Both ranks trained: Composer counts the samples of all ranks, and saved one RNG state per rank.
    final = tmp_path / "ckpt" / f"ep0-ba{STEPS}-rank0.pt"
    raw = torch.load(final, map_location="cpu", weights_only=False)
    assert len(raw["rng"]) == 2
    assert raw["state"]["timestamp"]["Timestamp"]["sample"] == STEPS * BATCH * 2
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert max(r["time/sample"] for r in rows if "time/sample" in r) == STEPS * BATCH * 2
    assert {k for r in rows for k in r} >= {"loss/train/cosent", "loss/train/infonce", "loss/train/infonce_sparse",
                                            "metrics/sts/STSSpearman"}

    # The export has the shape the single-process L0 module targets.
    from transformers import AutoConfig

    target = build_model(load_config(config), with_teacher=False).l0_module.target_shape
    exported = EncoderShape.from_hf_config(AutoConfig.from_pretrained(tmp_path / "model", trust_remote_code=True),
                                           has_pooler=target.has_pooler)
    assert exported == target
    assert (exported.n_layers, exported.heads_per_layer, exported.intermediate_per_layer) == (2, (2, 2), (32, 32))
    # The DDP checkpoint reloads with the same deterministic masks as the exported shape.
    assert load_composer_model(final).l0_module.expected_shape() == target


GRAD_SYNC_SCRIPT = """
import json, sys, torch
from composer.utils import dist, get_device
from bge_pruning.training.callbacks import ReplicatedGradSync

dist.initialize_dist(get_device("cpu"), timeout=60)
rank = dist.get_global_rank()
module = torch.nn.Linear(2, 1)
module.weight.grad = torch.full((1, 2), float(rank + 1))  # rank 0: 1, rank 1: 2
# module.bias has no gradient on any rank: it joins the all-reduce as zeros
ReplicatedGradSync(module).after_train_batch(None, None)
with open(sys.argv[1].format(rank=rank), "w") as f:
    json.dump({"weight": module.weight.grad.tolist(), "bias": module.bias.grad.tolist()}, f)
"""


@pytest.mark.slow
def test_replicated_module_gradients_are_averaged_over_ranks(tmp_path):
    """Under FSDP the L0 module is not sharded; its gradients are averaged by ReplicatedGradSync (gloo here)."""
    script = tmp_path / "grad_sync.py"
    script.write_text(GRAD_SYNC_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([str(COMPOSER), "-n", "2", str(script), str(tmp_path / "rank{rank}.json")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"weight": [[1.5, 1.5]], "bias": [0.0]}
