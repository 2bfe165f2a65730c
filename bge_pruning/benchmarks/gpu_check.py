"""Can a GPU run the BGE-M3 prune stage, and how fast? The training step under Composer's ``Trainer``, measured by
Composer's own monitors. Nothing is downloaded.

The model is a randomly initialised BGE-M3-shaped encoder (XLM-RoBERTa-large: 24 layers, 16 heads, d 1024,
intermediate 4096, vocabulary 250,002, 8,194 positions; 567,754,752 parameters with the pooler) with the sparse and
ColBERT heads, the L0 module toward a target shape and the frozen teacher, as ``ComposerBGEM3`` (the training
model), trained with the three optimizer groups of :func:`bge_pruning.training.optim.build_optimizer` and the
:class:`~bge_pruning.training.callbacks.PruningCallback` that drives the L0 module from the Composer clock. Each step
is one retrieval batch of random tokens (half queries, half their positive passages) through ``Trainer.fit``:
forward, the BGE-M3 losses (InfoNCE dense/sparse/ColBERT, self-distillation, teacher distillation, the Lagrangian),
backward and the optimizer step, in Composer's ``amp_bf16`` on a GPU.

Every figure is read from what the monitors logged (an ``InMemoryLogger``), none is timed here:

* Composer's ``SpeedMonitor`` with ``window_size = steps``: its window covers exactly the ``steps`` batches after
  the ``warmup`` ones (its first reference point is the end of batch ``warmup``, so ``warmup >= 1``); it logs
  batches, samples (queries) and tokens per second, ``flops_per_sec`` = the sum of the model's
  :meth:`~bge_pruning.models.composer_bge_m3.ComposerBGEM3.flops_per_batch` over the window / the window's wall
  time, and MFU = that / the device peak (``gpu_flops_available``: Composer's table for known GPUs in this
  precision, or ``peak_tflops``; none on CPU);
* Composer's ``MemoryMonitor`` (GPU only: it reads ``torch.cuda.memory_stats``): peak allocated and reserved memory
  in GB (1e9 bytes) since the start of the run.

Then the same model without the L0 module (``l0_module=None``: no mask sampling, no Lagrangian, one optimizer group)
gives the masked / plain step-time ratio (the SpeedMonitors' batches per second, plain over masked): the cost of
pruning-aware training over plain training.

References: MosaicML Composer ``composer.callbacks.SpeedMonitor`` / ``MemoryMonitor``; MFU as in PaLM
(Chowdhery et al., 2022, appendix B).
"""
from __future__ import annotations

import copy
import gc
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

BGE_M3 = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
              intermediate_size=4096, max_position_embeddings=8194, type_vocab_size=1, layer_norm_eps=1e-5)
TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5)
LOSS = dict(cosent=1.0, cosent_scale=20.0, infonce=1.0, temperature=0.02, sparse=0.3, colbert=1.0, self_distill=1.0,
            distill_embedding=1.0, distill_similarity=1.0, distill_temperature=0.05)
# What build_optimizer reads (the BGE-M3 configs' optimizer, at the learning rates of a prune stage).
TRAIN = dict(optimizer="decoupled_adamw", lr=1e-5, l0_lr=1.0, lag_lr=1.0, weight_decay=0.0, betas=[0.9, 0.999],
             eps=1e-8)
PRECISIONS = {"bf16": "amp_bf16", "fp32": "fp32"}  # --precision -> Composer's precision
MEMORY_SKIPPED = ("MemoryMonitor reads torch.cuda.memory_stats, so it reports nothing on CPU (Composer's own "
                  "limit); no peak memory on CPU")


@dataclass(frozen=True)
class CheckSettings:
    """One check: the model ``sizes`` (an ``XLMRobertaConfig``'s keywords), the L0 ``target`` (n_layers, n_heads,
    intermediate_size), ``batch_size`` sequences (even: half queries, half passages) of ``seq_len`` tokens, ``warmup``
    (>= 1) then ``steps`` measured steps, ``device`` ``cpu`` | ``cuda``, ``precision`` ``bf16`` | ``fp32``, and the
    device's dense peak in FLOP/s (``None``: Composer's table)."""

    sizes: dict[str, int]
    target: tuple[int, int, int]
    batch_size: int
    seq_len: int
    warmup: int
    steps: int
    device: str
    precision: str
    distill: bool = True
    peak_flops: float | None = None
    seed: int = 0


def build_model(sizes: dict[str, int], target: tuple[int, int, int], distill: bool, device: str):
    """A randomly initialised ``ComposerBGEM3`` of ``sizes`` with the L0 module toward ``target``, on ``device``."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from ..models.l0_module import L0Module, parse_target
    from ..models.masked_encoder import MaskedBGEM3Backbone

    config = XLMRobertaConfig(**sizes, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    with torch.device(device):
        backbone = MaskedBGEM3Backbone.from_hf_model(XLMRobertaModel(config))
        t = parse_target({"n_layers": target[0], "n_heads": target[1], "intermediate_size": target[2]},
                         backbone.shape, key="--target")
        l0 = L0Module(backbone.shape, t, lagrangian_warmup_steps=100)
        teacher = copy.deepcopy(backbone) if distill else None
    return assemble(backbone, teacher, l0, distill, device)


def assemble(backbone, teacher, l0, distill: bool, device: str):
    """``ComposerBGEM3`` around ``backbone`` with fresh sparse/ColBERT heads, the BGE-M3 losses and ``l0`` (or None)."""
    from ..models.composer_bge_m3 import ComposerBGEM3
    from ..models.heads import ColbertHead, SparseHead

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


def random_batch(batch_size: int, seq_len: int, vocab: int, gen: torch.Generator) -> dict[str, Any]:
    """A retrieval batch of ``batch_size // 2`` queries and as many positive passages, ``seq_len`` random tokens each
    between ``<s>`` and ``</s>``, no padding (on CPU: the Trainer moves it)."""
    def tokens(n: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(4, vocab, (n, seq_len), generator=gen)
        ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
        return {"input_ids": ids, "attention_mask": torch.ones(n, seq_len, dtype=torch.long)}

    half = batch_size // 2
    return {"task": "retrieval", "query": tokens(half), "passages": tokens(half), "n_passages_per_query": 1}


def num_tokens_in_batch(batch: dict[str, Any]) -> int:
    """Tokens of every tokenized view (padded length, as ``flops_per_batch`` counts them), for the DataSpec: so
    SpeedMonitor logs ``throughput/tokens_per_sec``."""
    from ..models.composer_bge_m3 import FLOP_VIEWS

    return sum(int(batch[k]["input_ids"].numel()) for k in FLOP_VIEWS if batch.get(k) is not None)


class _Batches(torch.utils.data.Dataset):
    """``n`` batches, cycling through ``batches`` (already collated: the DataLoader runs with ``batch_size=None``)."""

    def __init__(self, batches: list[dict[str, Any]], n: int) -> None:
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i % len(self.batches)]


def measure(model, batches: list[dict[str, Any]], s: CheckSettings, logger=None) -> dict[str, Any]:
    """``warmup + steps`` training steps of ``model`` under Composer's Trainer; the monitors' figures.

    ``logger``: the ``InMemoryLogger`` to log into (a fresh one when None); every returned figure is a value it holds.
    """
    from composer import Trainer
    from composer.callbacks import MemoryMonitor, SpeedMonitor
    from composer.core import DataSpec
    from composer.loggers import InMemoryLogger

    from ..data import num_samples_in_batch
    from ..training.batching import split_batch
    from ..training.callbacks import PruningCallback
    from ..training.optim import build_optimizer

    if s.warmup < 1:  # SpeedMonitor's window starts at the end of a batch: that batch is never inside it
        raise ValueError(f"warmup must be >= 1, got {s.warmup}")
    logger = logger if logger is not None else InMemoryLogger()
    cuda = s.device == "cuda"
    speed = SpeedMonitor(window_size=s.steps, gpu_flops_available=s.peak_flops, time_unit="seconds")
    callbacks = [PruningCallback(save_folder=None), speed] + ([MemoryMonitor()] if cuda else [])
    loader = torch.utils.data.DataLoader(_Batches(batches, s.warmup + s.steps), batch_size=None, shuffle=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # MemoryMonitor's peaks are since the last reset: this run's own
    trainer = Trainer(
        model=model,
        train_dataloader=DataSpec(loader, get_num_samples_in_batch=num_samples_in_batch,
                                  get_num_tokens_in_batch=num_tokens_in_batch, split_batch=split_batch),
        optimizers=build_optimizer(model, SimpleNamespace(**TRAIN)),
        max_duration=f"{s.warmup + s.steps}ba",
        device="gpu" if cuda else "cpu",
        precision=PRECISIONS[s.precision],
        device_train_microbatch_size=num_samples_in_batch(batches[0]),  # the whole batch in one microbatch
        callbacks=callbacks,
        loggers=[logger],
        seed=s.seed,
        progress_bar=False,
        log_to_console=False,
    )
    try:
        trainer.fit()
    finally:
        trainer.close()
    return monitor_figures(logger, s, speed.gpu_flops_available)


def _series(logger, key: str) -> list[float]:
    return [float(v) for _, v in logger.data.get(key, [])]


def monitor_figures(logger, s: CheckSettings, peak_flops: float | None) -> dict[str, Any]:
    """The figures of one run, from what SpeedMonitor, MemoryMonitor and the Trainer logged into ``logger``."""
    last = logger.most_recent_values
    if "throughput/batches_per_sec" not in last:
        raise RuntimeError("SpeedMonitor logged no throughput: the run was shorter than its window")
    train_s = _series(logger, "time/train")  # one value per batch, the end of that batch
    losses = _series(logger, "loss/train/total")
    out = {
        "steps": s.steps, "warmup": s.warmup,
        # SpeedMonitor's window: the end of batch `warmup` to the end of the last batch
        "window_s": train_s[-1] - train_s[s.warmup - 1],
        "step_s": 1.0 / last["throughput/batches_per_sec"],
        "batches_per_sec": last["throughput/batches_per_sec"],
        "samples_per_sec": last["throughput/samples_per_sec"],
        "tokens_per_sec": last.get("throughput/tokens_per_sec"),
        "flops_per_sec": last.get("throughput/flops_per_sec"),
        "peak_flops": peak_flops or None,
        "mfu": last.get("throughput/device/mfu"),
        "loss_first": losses[0], "loss_last": losses[-1],
        "loss_parts": sorted(k.removeprefix("loss/train/") for k in last if k.startswith("loss/train/")),
        "expected_sparsity_last": last.get("l0/expected_sparsity"),
    }
    if s.device == "cuda":
        out["peak_allocated_gb"] = last.get("memory/peak_allocated_mem")
        out["peak_reserved_gb"] = last.get("memory/peak_reserved_mem")
    return out


def peak_source(s: CheckSettings, peak_flops: float | None) -> str:
    if s.peak_flops:
        return "--peak-tflops"
    if peak_flops:
        return f"Composer's GPU_AVAILABLE_FLOPS for {torch.cuda.get_device_name()} in {PRECISIONS[s.precision]}"
    if s.device != "cuda":
        return "none: Composer knows no CPU peak (give --peak-tflops)"
    return f"none: Composer has no peak for {torch.cuda.get_device_name()} in {PRECISIONS[s.precision]} " \
           "(give --peak-tflops)"


def run_check(s: CheckSettings) -> dict[str, Any]:
    """The masked (pruning) run, then the plain run (``l0_module=None``) on the same weights and batches; JSON-ready."""
    import composer

    from ..flops import FLOPS_EXCLUDED, FLOPS_INCLUDED
    from ..shapes import count_params
    from ..training.optim import build_optimizer

    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    batches = [random_batch(s.batch_size, s.seq_len, s.sizes["vocab_size"], gen) for _ in range(4)]
    model = build_model(s.sizes, s.target, s.distill, s.device)
    shape = model.backbone.shape
    params = count_params(shape)
    if params.total != sum(p.numel() for p in model.backbone.parameters()):
        raise RuntimeError("count_params disagrees with the backbone's parameters")
    groups = build_optimizer(model, SimpleNamespace(**TRAIN)).param_groups  # what measure() builds again, to report
    results: dict[str, Any] = {
        "device": s.device, "device_name": torch.cuda.get_device_name() if s.device == "cuda" else "cpu",
        "precision": PRECISIONS[s.precision],
        "batch": {"sequences": s.batch_size, "seq_len": s.seq_len, "tokens": s.batch_size * s.seq_len},
        "model": dict(s.sizes), "target": list(s.target), "teacher": s.distill,
        "torch": torch.__version__, "composer": composer.__version__,
        "params": {"total": params.total, "encoder_layers": params.encoder_layers,
                   "l0_module": sum(p.numel() for p in model.l0_module.parameters())},
        "optimizer_groups": [{"name": g["name"], "lr": g["lr"], "params": sum(p.numel() for p in g["params"])}
                             for g in groups],
        "source": "Composer's SpeedMonitor (window = the measured steps) and MemoryMonitor, read from an "
                  "InMemoryLogger",
    }
    flops_per_batch = model.flops_per_batch(batches[0])
    results["masked"] = measure(model, batches, s)

    # The same weights and batches without the L0 module (and so one optimizer group).
    backbone, teacher = model.backbone, model._teacher.module if model._teacher is not None else None
    del model
    gc.collect()
    if s.device == "cuda":
        torch.cuda.empty_cache()
    plain = assemble(backbone, teacher, None, s.distill, s.device)
    results["plain"] = measure(plain, batches, s)
    m, p = results["masked"], results["plain"]
    results["masked_over_plain_step_time"] = p["batches_per_sec"] / m["batches_per_sec"]
    results["flops"] = {
        "per_batch": flops_per_batch,
        "per_batch_rule": "ComposerBGEM3.flops_per_batch: 3 x the student's analytic forward (forward + backward)"
                          + (", + 1 x forward for the teacher" if s.distill else ""),
        "counted": FLOPS_INCLUDED, "not_counted": FLOPS_EXCLUDED,
        "flops_per_sec": m["flops_per_sec"], "peak_flops": m["peak_flops"],
        "peak_source": peak_source(s, m["peak_flops"]), "mfu": m["mfu"],
    }
    if s.device != "cuda":
        results["memory_skipped"] = MEMORY_SKIPPED
    return results
