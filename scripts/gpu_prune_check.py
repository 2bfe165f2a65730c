#!/usr/bin/env python
"""Can this GPU run the BGE-M3 prune stage, and how fast? Nothing is downloaded.

    python scripts/gpu_prune_check.py [--steps 20] [--warmup 3] [--batch-size 16] [--seq-len 512]
        [--target 17,12,2816] [--no-distill] [--precision bf16|fp32] [--peak-tflops 989] [--json out.json]
    python scripts/gpu_prune_check.py --tiny      # seconds on CPU (one thread): checks the script itself

Builds a randomly initialised BGE-M3-shaped encoder (XLM-RoBERTa-large: 24 layers, 16 heads, d 1024,
intermediate 4096, vocabulary 250,002, 8,194 positions; 567,754,752 parameters with the pooler) with the
sparse and ColBERT heads, the L0 module toward ``--target`` and the frozen teacher, as ``ComposerBGEM3``
(the training model), and the three optimizer groups of ``build_optimizer``. Each step is one retrieval batch
of ``--batch-size`` sequences of exactly ``--seq-len`` random tokens (half queries, half their positive
passages), run through ``model.forward`` and ``model.loss`` (InfoNCE dense/sparse/ColBERT, self-distillation,
teacher distillation, the Lagrangian) under bf16 autocast as Composer's ``amp_bf16``, then backward and the
optimizer step. Composer's Trainer itself (callbacks, logging) is not in the loop.

Reports (and writes with ``--json``): seconds per step, tokens/s, peak GPU memory, and the model FLOPs
utilisation. FLOPs per step are analytic (``bge_pruning.benchmarks.flops.forward_flops``: every matmul of
the encoder layers, attention scores included; embeddings, LayerNorms, heads and softmax not counted): the
student's forward + backward = 3 x forward (the backward computes gradients for activations and for weights,
2 x forward), plus 1 x forward for the teacher. MFU = those FLOPs per second / the GPU's dense bf16 peak
(--peak-tflops; known for H100/H200 989.4, A100 312). The usual 6 x N x tokens estimate (N = encoder-layer
parameters) is printed beside it: it leaves out the attention scores (T^2 terms) and the teacher.

Then the same step without the L0 module (``l0_module=None``: no mask sampling, no Lagrangian, one optimizer
group) gives the masked / plain step-time ratio: the cost of pruning-aware training over plain training.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

BGE_M3 = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
              intermediate_size=4096, max_position_embeddings=8194, type_vocab_size=1, layer_norm_eps=1e-5)
TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5)
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}
LOSS = dict(cosent=1.0, cosent_scale=20.0, infonce=1.0, temperature=0.02, sparse=0.3, colbert=1.0, self_distill=1.0,
            distill_embedding=1.0, distill_similarity=1.0, distill_temperature=0.05)
TRAIN = dict(optimizer="decoupled_adamw", lr=1e-5, l0_lr=1.0, lag_lr=1.0, weight_decay=0.0, betas=[0.9, 0.999],
             eps=1e-8)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="2-layer d=64 model, batch 4 x 32, on CPU unless --device")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default 20; --tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --tiny 1)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step, even (default 16; --tiny 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; --tiny 32)")
    p.add_argument("--target", default=None, help="L0 target n_layers,n_heads,intermediate (default 17,12,2816)")
    p.add_argument("--no-distill", action="store_true", help="no teacher (drops the distillation losses)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense peak of the device in this precision")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; --tiny: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    a = p.parse_args(argv)
    tiny = a.tiny
    a.steps = a.steps if a.steps is not None else (2 if tiny else 20)
    a.warmup = a.warmup if a.warmup is not None else (1 if tiny else 3)
    a.batch_size = a.batch_size if a.batch_size is not None else (4 if tiny else 16)
    a.seq_len = a.seq_len if a.seq_len is not None else (32 if tiny else 512)
    a.target = a.target or ("1,2,64" if tiny else "17,12,2816")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    a.precision = a.precision or ("bf16" if a.device == "cuda" else "fp32")
    for name in ("steps", "batch_size", "seq_len"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    a.threads = a.threads or (1 if tiny else None)
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if a.batch_size % 2:
        p.error("--batch-size must be even (half queries, half passages)")
    try:
        a.target = tuple(int(v) for v in a.target.split(","))
        assert len(a.target) == 3
    except (ValueError, AssertionError):
        p.error(f"--target must be n_layers,n_heads,intermediate_size, got {a.target!r}")
    return a


def build(sizes: dict[str, int], target: tuple[int, int, int], distill: bool, device: str):
    """A randomly initialised ComposerBGEM3 of ``sizes`` with the L0 module toward ``target``, on ``device``."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from bge_pruning.models.l0_module import L0Module, parse_target
    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    config = XLMRobertaConfig(**sizes, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    with torch.device(device):
        backbone = MaskedBGEM3Backbone.from_hf_model(XLMRobertaModel(config))
        t = parse_target({"n_layers": target[0], "n_heads": target[1], "intermediate_size": target[2]},
                         backbone.shape, key="--target")
        l0 = L0Module(backbone.shape, t, lagrangian_warmup_steps=100)
        teacher = copy.deepcopy(backbone) if distill else None
    return assemble(backbone, teacher, l0, distill, device)


def assemble(backbone, teacher, l0, distill: bool, device: str):
    """ComposerBGEM3 around ``backbone`` with fresh sparse/ColBERT heads, the BGE-M3 losses and ``l0`` (or None)."""
    from bge_pruning.models.composer_bge_m3 import ComposerBGEM3
    from bge_pruning.models.heads import ColbertHead, SparseHead

    d = backbone.config.hidden_size
    tokenizer = SimpleNamespace(cls_token_id=0, pad_token_id=1, eos_token_id=2, unk_token_id=3)  # XLM-R's ids
    loss = dict(LOSS) if distill else {**LOSS, "distill_embedding": 0.0, "distill_similarity": 0.0}
    with torch.device(device):
        model = ComposerBGEM3(backbone, tokenizer, pooling="cls", sparse_head=SparseHead(d),
                              colbert_head=ColbertHead(d), l0_module=l0, teacher=teacher, loss_cfg=loss,
                              base_model="random BGE-M3-shaped")
    if model.backbone.pooler is not None:
        model.backbone.pooler.requires_grad_(False)  # as build_trainer: BGE-M3 does not use it
    return model.to(device).train()


def random_batch(batch_size: int, seq_len: int, vocab: int, device: str, gen: torch.Generator) -> dict[str, Any]:
    def tokens(n: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(4, vocab, (n, seq_len), generator=gen)
        ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
        return {"input_ids": ids.to(device), "attention_mask": torch.ones(n, seq_len, dtype=torch.long, device=device)}

    half = batch_size // 2
    return {"task": "retrieval", "query": tokens(half), "passages": tokens(half), "n_passages_per_query": 1}


def time_steps(model, optimizer, batches: list[dict], warmup: int, steps: int, device: str, precision: str) -> dict:
    """Seconds per optimizer step (median and mean of ``steps``), after ``warmup`` untimed steps."""
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times, losses = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        sync()
        start = time.perf_counter()
        if model.l0_module is not None:
            model.l0_module.current_step = i  # what PruningCallback does from the Composer clock
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            outputs = model(batch)
            parts = model.loss(outputs, batch)
        parts["total"].backward()
        optimizer.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            losses.append(float(parts["total"].detach()))
    times.sort()
    out = {"step_s_median": times[len(times) // 2], "step_s_mean": sum(times) / len(times), "steps": steps,
           "warmup": warmup, "loss_first": losses[0], "loss_last": losses[-1],
           "loss_parts": sorted(parts)}
    if device == "cuda":
        out["peak_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_memory_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def peak_tflops(args: argparse.Namespace) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if args.device != "cuda" or args.precision != "bf16":
        return None, "unknown (give --peak-tflops)"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"dense bf16 peak of {key} (from the device name {name!r})"
    return None, f"unknown for {name!r} (give --peak-tflops)"


def si(x: float) -> str:
    """1.23e12 -> '1.23 T'."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bge_pruning.benchmarks.flops import FLOPS_EXCLUDED, FLOPS_INCLUDED, forward_flops
    from bge_pruning.shapes import count_params
    from bge_pruning.training.optim import build_optimizer

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = TINY if args.tiny else BGE_M3
    distill = not args.no_distill
    gen = torch.Generator().manual_seed(args.seed)
    batches = [random_batch(args.batch_size, args.seq_len, sizes["vocab_size"], args.device, gen) for _ in range(4)]
    tcfg = SimpleNamespace(**TRAIN)
    results: dict[str, Any] = {"device": args.device, "device_name": torch.cuda.get_device_name()
                               if args.device == "cuda" else "cpu", "precision": args.precision,
                               "batch": {"sequences": args.batch_size, "seq_len": args.seq_len,
                                         "tokens": args.batch_size * args.seq_len},
                               "model": dict(sizes), "target": list(args.target), "teacher": distill,
                               "torch": torch.__version__}

    model = build(sizes, args.target, distill, args.device)
    shape = model.backbone.shape
    params = count_params(shape)
    assert params.total == sum(p.numel() for p in model.backbone.parameters()), "count_params disagrees"
    optimizer = build_optimizer(model, tcfg)
    results["params"] = {"total": params.total, "encoder_layers": params.encoder_layers,
                         "l0_module": sum(p.numel() for p in model.l0_module.parameters())}
    results["optimizer_groups"] = [{"name": g["name"], "lr": g["lr"], "params": sum(p.numel() for p in g["params"])}
                                   for g in optimizer.param_groups]
    results["masked"] = time_steps(model, optimizer, batches, args.warmup, args.steps, args.device, args.precision)
    results["expected_sparsity_last"] = model.last_metrics.get("expected_sparsity")

    # The same model and batches without the L0 module (and so one optimizer group).
    backbone, teacher = model.backbone, model._teacher.module if model._teacher is not None else None
    del optimizer, model
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    plain = assemble(backbone, teacher, None, distill, args.device)
    optimizer = build_optimizer(plain, tcfg)
    results["plain"] = time_steps(plain, optimizer, batches, args.warmup, args.steps, args.device, args.precision)
    results["masked_over_plain_step_time"] = results["masked"]["step_s_median"] / results["plain"]["step_s_median"]

    # Throughput and FLOPs utilisation of the masked (pruning) step.
    step_s = results["masked"]["step_s_median"]
    tokens = args.batch_size * args.seq_len
    fwd_per_seq = forward_flops(shape, args.seq_len).total  # the masked model computes at full width
    step_flops = args.batch_size * fwd_per_seq * (3 + (1 if distill else 0))
    peak, peak_source = peak_tflops(args)
    results["tokens_per_s"] = tokens / step_s
    results["flops"] = {
        "forward_per_sequence": fwd_per_seq,
        "per_step": step_flops,
        "per_step_rule": "student forward + backward = 3 x forward, + 1 x forward for the teacher"
                         if distill else "student forward + backward = 3 x forward",
        "counted": FLOPS_INCLUDED, "not_counted": FLOPS_EXCLUDED,
        "achieved_tflops": step_flops / step_s / 1e12,
        "six_n_t_per_step": 6 * params.encoder_layers * tokens,
        "peak_tflops": peak, "peak_source": peak_source,
        "mfu": step_flops / step_s / (peak * 1e12) if peak else None,
    }

    m = results["masked"]
    print(f"device: {results['device_name']} ({args.precision}); batch {args.batch_size} x {args.seq_len} tokens; "
          f"model {params.total:,} params ({shape.n_layers}L/{shape.heads_per_layer[0]}H/"
          f"{shape.intermediate_per_layer[0]}I), L0 target {args.target}, teacher {'yes' if distill else 'no'}")
    print("optimizer groups: " + ", ".join(f"{g['name']} lr {g['lr']:g} ({g['params']:,} params)"
                                            for g in results["optimizer_groups"]))
    print(f"prune step: {m['step_s_median'] * 1e3:.1f} ms median over {args.steps} steps; "
          f"{results['tokens_per_s']:,.0f} tokens/s; loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}")
    if "peak_memory_allocated_gib" in m:
        print(f"peak GPU memory: {m['peak_memory_allocated_gib']:.1f} GiB allocated, "
              f"{m['peak_memory_reserved_gib']:.1f} GiB reserved")
    f = results["flops"]
    mfu = f"{f['mfu']:.1%}" if f["mfu"] is not None else f"n/a (peak {f['peak_source']})"
    print(f"FLOPs per step {si(f['per_step'])}FLOP analytic ({f['per_step_rule']}); 6*N*T would say "
          f"{si(f['six_n_t_per_step'])}FLOP; achieved {si(f['achieved_tflops'] * 1e12)}FLOP/s; MFU {mfu}")
    print(f"masked / plain step time: {results['masked_over_plain_step_time']:.3f} "
          f"(plain {results['plain']['step_s_median'] * 1e3:.1f} ms)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
