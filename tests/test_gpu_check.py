"""The GPU check (``bge-gpu-prune-check`` / ``scripts/gpu_prune_check.py``) on a tiny model on CPU: its figures are
what Composer's SpeedMonitor logged, and SpeedMonitor's FLOP/s is the model's ``flops_per_batch`` over its window.

No GPU here: MemoryMonitor (CUDA only), Composer's GPU peak table and the BGE-M3-sized run are not exercised.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bge_pruning.benchmarks.gpu_check import (
    BGE_M3,
    MEMORY_SKIPPED,
    TINY,
    CheckSettings,
    build_model,
    measure,
    random_batch,
)
from bge_pruning.cli.gpu_prune_check import main
from bge_pruning.shapes import EncoderShape, count_params

# Analytic forward FLOPs of the tiny model by hand (d 64, 4 heads of 16, I 128, T 32, 2 layers):
# QKV 2*T*d*3*H*dh + output 2*T*H*dh*d + scores/context 4*T^2*H*dh + FFN 4*T*d*I, per layer.
T, D, H, DH, I = 32, 64, 4, 16, 128
TINY_FORWARD = 2 * (2 * T * D * 3 * H * DH + 2 * T * H * DH * D + 4 * T * T * H * DH + 4 * T * D * I)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _settings(**kw) -> CheckSettings:
    base = CheckSettings(sizes=dict(TINY), target=(1, 2, 64), batch_size=4, seq_len=32, warmup=2, steps=3,
                         device="cpu", precision="fp32")
    return dataclasses.replace(base, **kw)


def test_figures_are_the_speed_monitors_and_its_flops_are_the_models(one_thread):
    from composer.loggers import InMemoryLogger

    s = _settings(peak_flops=1e9)  # --peak-tflops 0.001: SpeedMonitor's gpu_flops_available, so it logs an MFU
    model = build_model(s.sizes, s.target, s.distill, s.device)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(s.batch_size, s.seq_len, s.sizes["vocab_size"], gen) for _ in range(2)]
    logger = InMemoryLogger()
    fig = measure(model, batches, s, logger)

    logged = logger.most_recent_values
    for key, name in (("batches_per_sec", "batches_per_sec"), ("samples_per_sec", "samples_per_sec"),
                      ("tokens_per_sec", "tokens_per_sec"), ("flops_per_sec", "flops_per_sec"),
                      ("mfu", "device/mfu")):
        assert fig[key] == logged[f"throughput/{name}"], key
    assert fig["peak_flops"] == 1e9
    # The window: the end of batch `warmup` to the end of the last batch, from the Trainer's wall clock.
    train_s = [v for _, v in logger.data["time/train"]]
    assert len(train_s) == s.warmup + s.steps
    window = train_s[-1] - train_s[s.warmup - 1]
    assert fig["window_s"] == window > 0
    assert fig["batches_per_sec"] == pytest.approx(s.steps / window, rel=1e-12)
    assert fig["step_s"] == pytest.approx(window / s.steps, rel=1e-12)
    # FLOP/s = the model's declared FLOPs per batch x batches / time (float32 in SpeedMonitor's all-reduce).
    per_batch = model.flops_per_batch(batches[0])
    assert per_batch == 4 * TINY_FORWARD * (3 + 1) == 75_497_472  # 4 sequences; fwd+bwd = 3 fwd; teacher 1 fwd
    assert fig["flops_per_sec"] == pytest.approx(per_batch * s.steps / window, rel=1e-6)
    assert fig["mfu"] == pytest.approx(fig["flops_per_sec"] / 1e9, rel=1e-12)
    # Samples are queries (2 per batch), tokens every sequence's (4 x 32).
    assert fig["samples_per_sec"] == pytest.approx(2 * s.steps / window, rel=1e-9)
    assert fig["tokens_per_sec"] == pytest.approx(128 * s.steps / window, rel=1e-9)
    # The Trainer ran the pruning step: PruningCallback moved the L0 clock, the Lagrangian is among the losses.
    assert model.l0_module.current_step == s.warmup + s.steps - 1
    assert "lagrangian" in fig["loss_parts"] and fig["expected_sparsity_last"] == logged["l0/expected_sparsity"]
    assert "peak_allocated_gb" not in fig  # no MemoryMonitor on CPU


def test_tiny_command_end_to_end(tmp_path, capsys, one_thread):
    out = tmp_path / "check.json"
    assert main(["--tiny", "--steps", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["precision"] == "fp32"
    assert r["batch"] == {"sequences": 4, "seq_len": 32, "tokens": 128}
    assert [(g["name"], g["lr"]) for g in r["optimizer_groups"]] == [("model", 1e-5), ("l0_masks", 1.0),
                                                                      ("lagrangian", -1.0)]
    m, p = r["masked"], r["plain"]
    assert m["steps"] == p["steps"] == 2 and m["warmup"] == p["warmup"] == 1
    assert "lagrangian" in m["loss_parts"] and "lagrangian" not in p["loss_parts"]
    assert {"infonce_sparse", "infonce_colbert", "self_distill", "distill_similarity"} <= set(m["loss_parts"])
    assert r["masked_over_plain_step_time"] == pytest.approx(p["batches_per_sec"] / m["batches_per_sec"])
    assert r["masked_over_plain_step_time"] == pytest.approx(m["step_s"] / p["step_s"])
    f = r["flops"]
    assert f["per_batch"] == 4 * TINY_FORWARD * (3 + 1)
    assert f["flops_per_sec"] == m["flops_per_sec"] == pytest.approx(f["per_batch"] / m["step_s"], rel=1e-6)
    assert m["tokens_per_sec"] == pytest.approx(128 / m["step_s"], rel=1e-9)
    assert f["mfu"] is None and f["peak_flops"] is None and "no CPU peak" in f["peak_source"]
    assert r["memory_skipped"] == MEMORY_SKIPPED
    stdout = capsys.readouterr().out
    assert "masked / plain step time:" in stdout and "peak memory: not measured (MemoryMonitor" in stdout
    # The full-size model is BAAI/bge-m3's shape.
    shape = EncoderShape.uniform(BGE_M3["num_hidden_layers"], BGE_M3["num_attention_heads"], BGE_M3["hidden_size"],
                                 BGE_M3["intermediate_size"], BGE_M3["vocab_size"], BGE_M3["max_position_embeddings"],
                                 BGE_M3["type_vocab_size"])
    assert count_params(shape).total == 567_754_752


@pytest.mark.parametrize("args, message", [
    (["--warmup", "0"], "--warmup must be >= 1"),
    (["--precision", "bf16"], "--precision bf16 needs --device cuda"),
    (["--batch-size", "3"], "--batch-size must be even"),
    (["--target", "1,2"], "--target must be n_layers,n_heads,intermediate_size"),
    (["--peak-tflops", "0"], "--peak-tflops must be positive"),
])
def test_bad_arguments_stop_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--tiny", *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
