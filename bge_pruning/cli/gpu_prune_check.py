"""``bge-gpu-prune-check`` (``scripts/gpu_prune_check.py``): can this GPU run the BGE-M3 prune stage, and how fast?

    bge-gpu-prune-check [--steps 20] [--warmup 3] [--batch-size 16] [--seq-len 512] [--target 17,12,2816]
        [--no-distill] [--precision bf16|fp32] [--peak-tflops 989] [--json out.json]
    bge-gpu-prune-check --tiny      # seconds on CPU (one thread): checks the command itself

Trains a random BGE-M3-shaped ``ComposerBGEM3`` with its L0 module under Composer's Trainer and prints what
Composer's ``SpeedMonitor`` and ``MemoryMonitor`` logged: step time, tokens/s, FLOP/s of the model's
``flops_per_batch``, MFU (when Composer knows the GPU's peak or --peak-tflops gives it), peak GPU memory, and the
masked / plain step-time ratio. What is measured and how: :mod:`bge_pruning.benchmarks.gpu_check`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..benchmarks.gpu_check import BGE_M3, TINY, CheckSettings, run_check


def parse_args(argv: Sequence[str] | None, prog: str | None = None) -> tuple[CheckSettings, Path | None]:
    """The check's settings and the ``--json`` path; a bad argument exits 2 with argparse's one-line error."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="2-layer d=64 model, batch 4 x 32, on CPU unless --device")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--steps", type=int, default=None, help="measured steps per model: SpeedMonitor's window "
                                                            "(default 20; --tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="steps before the window, >= 1 (default 3; --tiny 1)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step, even (default 16; --tiny 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; --tiny 32)")
    p.add_argument("--target", default=None, help="L0 target n_layers,n_heads,intermediate (default 17,12,2816)")
    p.add_argument("--no-distill", action="store_true", help="no teacher (drops the distillation losses)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="bf16 = Composer's amp_bf16 (GPU only); default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense peak of the device in this precision, given to SpeedMonitor as gpu_flops_available "
                        "(default: Composer's table of GPUs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; --tiny: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    a = p.parse_args(argv)
    tiny = a.tiny
    steps = a.steps if a.steps is not None else (2 if tiny else 20)
    warmup = a.warmup if a.warmup is not None else (1 if tiny else 3)
    batch_size = a.batch_size if a.batch_size is not None else (4 if tiny else 16)
    seq_len = a.seq_len if a.seq_len is not None else (32 if tiny else 512)
    target = a.target or ("1,2,64" if tiny else "17,12,2816")
    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    precision = a.precision or ("bf16" if device == "cuda" else "fp32")
    if precision == "bf16" and device == "cpu":
        p.error("--precision bf16 needs --device cuda (Composer trains in fp32 on CPU)")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        if value < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if warmup < 1:
        p.error("--warmup must be >= 1 (SpeedMonitor's window starts at the end of a step)")
    if batch_size % 2:
        p.error("--batch-size must be even (half queries, half passages)")
    if a.peak_tflops is not None and not a.peak_tflops > 0:
        p.error("--peak-tflops must be positive")
    sizes = TINY if tiny else BGE_M3
    if seq_len > sizes["max_position_embeddings"] - 2:  # XLM-R positions start after the pad id
        p.error(f"--seq-len must be at most {sizes['max_position_embeddings'] - 2} for this model")
    try:
        parsed = tuple(int(v) for v in target.split(","))
        if len(parsed) != 3:
            raise ValueError
    except ValueError:
        p.error(f"--target must be n_layers,n_heads,intermediate_size, got {target!r}")
    threads = a.threads or (1 if tiny else None)
    if threads:
        torch.set_num_threads(threads)
    if a.json is not None and a.json.is_dir():
        p.error(f"--json {a.json}: is a directory; give a file name")
    settings = CheckSettings(sizes=dict(sizes), target=parsed, batch_size=batch_size, seq_len=seq_len,
                             warmup=warmup, steps=steps, device=device, precision=precision,
                             distill=not a.no_distill, peak_flops=a.peak_tflops * 1e12 if a.peak_tflops else None,
                             seed=a.seed)
    return settings, a.json


def si(x: float) -> str:
    """1.23e12 -> '1.23 T'."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def format_results(r: dict[str, Any]) -> str:
    """The printed summary of :func:`bge_pruning.benchmarks.gpu_check.run_check`'s results."""
    m, p, f = r["masked"], r["plain"], r["flops"]
    shape = r["model"]
    lines = [
        f"device: {r['device_name']} ({r['precision']}); batch {r['batch']['sequences']} x {r['batch']['seq_len']} "
        f"tokens; model {r['params']['total']:,} params ({shape['num_hidden_layers']}L/"
        f"{shape['num_attention_heads']}H/{shape['intermediate_size']}I), L0 target {tuple(r['target'])}, "
        f"teacher {'yes' if r['teacher'] else 'no'}",
        "optimizer groups: " + ", ".join(f"{g['name']} lr {g['lr']:g} ({g['params']:,} params)"
                                         for g in r["optimizer_groups"]),
        f"prune step (SpeedMonitor, {m['steps']} steps after {m['warmup']}): {m['step_s'] * 1e3:.1f} ms; "
        f"{m['tokens_per_sec']:,.0f} tokens/s; loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}",
    ]
    if "peak_allocated_gb" in m:
        lines.append(f"peak GPU memory (MemoryMonitor): {m['peak_allocated_gb']:.1f} GB allocated, "
                     f"{m['peak_reserved_gb']:.1f} GB reserved")
    else:
        lines.append(f"peak memory: not measured ({r['memory_skipped']})")
    mfu = f"{f['mfu']:.1%} of {si(f['peak_flops'])}FLOP/s ({f['peak_source']})" if f["mfu"] is not None \
        else f"n/a (peak {f['peak_source']})"
    lines.append(f"FLOPs per batch {si(f['per_batch'])}FLOP ({f['per_batch_rule']}); "
                 f"{si(f['flops_per_sec'])}FLOP/s; MFU {mfu}")
    lines.append(f"masked / plain step time: {r['masked_over_plain_step_time']:.3f} "
                 f"(plain {p['step_s'] * 1e3:.1f} ms)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    settings, json_path = parse_args(argv, prog)
    results = run_check(settings)
    print(format_results(results))
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(results, indent=2) + "\n")
        except OSError as exc:
            print(f"error: --json {json_path}: cannot write ({exc})", file=sys.stderr)
            return 2
        print(f"results: {json_path}")
    return 0
