"""Inference efficiency of a pruned encoder against its base: throughput, latency, memory, size, FLOPs.

Both model directories are loaded with ``AutoModel.from_pretrained(dir)`` (remote code only for this
project's own exports or with ``--trust-remote-code``) in
eval mode and called under ``torch.inference_mode()`` on random token batches of exactly
``batch_size x seq_len`` tokens (no padding; the attention mask is all ones). For every device and
(batch size, sequence length) the two models are measured INTERLEAVED: after ``warmup`` untimed calls
each, repeat ``r`` times base then pruned when ``r`` is even and pruned then base when ``r`` is odd,
so clock/thermal drift and cache effects hit both models alike.

Reported per model and configuration:

* latency per batch (p50, p95, mean, min) in seconds; CUDA calls are synchronised before and after;
* throughput in sequences/s = batch_size / p50 latency; speedup = base p50 / pruned p50;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` around
  every timed call, reported as the increase over the memory allocated before the call (both models'
  weights stay resident, so the absolute peak would mix them); on CPU the peak RSS increase during
  extra, untimed calls after the timed ones (max of two), each after ``gc.collect()`` and glibc
  ``malloc_trim(0)`` (otherwise memory freed by earlier calls is reused without raising RSS), sampled
  every 0.5 ms by a background thread with ``psutil`` when it is installed, else the
  ``resource.getrusage`` high-water mark (a lower bound: it only moves when the process exceeds its
  previous maximum). The method used is written into the results;
* FLOPs per sequence (:mod:`bge_pruning.benchmarks.flops`) and the FLOPs ratio base / pruned, the
  speedup a perfectly compute-bound run could reach.

Per model: parameter counts from :func:`bge_pruning.shapes.count_params` of
``EncoderShape.from_hf_config(config)`` (checked against the loaded module), and the size of
``model.safetensors``.

This module measures (:func:`run_benchmark`, JSON-ready results) and builds the report's text
(:func:`format_report`, pure); the command line (arguments, printing, ``--output`` / ``--plot`` files) is
:mod:`bge_pruning.cli.benchmark_efficiency`.
"""
from __future__ import annotations

import gc
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BenchmarkError
from ..shapes import EncoderShape, count_params
from ..tables import format_rows
from .flops import FLOPS_EXCLUDED, FLOPS_INCLUDED, flops_ratio, forward_flops

FORMAT_VERSION = 1
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
DTYPES = ("float32", "float16", "bfloat16")
RSS_INTERVAL_S = 0.0005
CPU_MEMORY_CALLS = 2
ROLES = ("base", "pruned")
# The pruned export's ONNX graphs (``--onnx``), timed with the torch models, on CPU only.
ONNX_ROLES = {"pruned_onnx": "onnx/model.onnx", "pruned_int8": "onnx/model_qint8_avx512_vnni.onnx"}


# ====================================================================== models
@dataclass
class LoadedModel:
    role: str
    model_dir: Path
    model: Any
    shape: EncoderShape
    max_seq_len: int
    vocab_size: int
    pad_token_id: int | None
    info: dict[str, Any]


def weights_file_size(model_dir: Path) -> tuple[str | None, int | None]:
    """(file name, bytes) of the weights: ``model.safetensors``, else ``pytorch_model.bin``, else (None, None)."""
    for name in WEIGHTS_FILES:
        path = model_dir / name
        if path.is_file():
            return name, path.stat().st_size
    return None, None


def max_sequence_length(config: Any) -> int:
    """Longest sequence the position embeddings allow (RoBERTa-style positions start after the pad id)."""
    from ..models.families import max_sequence_length as family_limit

    return family_limit(config)


def _check_model_dir(model_dir: Path, role: str) -> None:
    arg = f"{role.upper()}_DIR"
    if not model_dir.exists():
        raise BenchmarkError(f"{arg} {model_dir}: no such directory")
    if not model_dir.is_dir():
        raise BenchmarkError(f"{arg} {model_dir}: not a directory (pass a model directory with config.json)")
    if not (model_dir / "config.json").is_file():
        raise BenchmarkError(f"{arg} {model_dir}: no config.json (not a HuggingFace model directory)")


def load_model(model_dir: str | Path, role: str, dtype: str = "float32",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a model directory with ``AutoModel`` (eval mode, on CPU) and describe its size."""
    import torch
    from transformers import AutoModel

    from ..models.loading import EMBEDDED_PREFIX, ModelLoadError, resolve_model_path

    if str(model_dir).startswith(EMBEDDED_PREFIX):  # embedded:all-MiniLM-L6-v2, as evaluate_model.py accepts
        try:
            model_dir = resolve_model_path(str(model_dir))
        except ModelLoadError as exc:  # an unknown name, or the package that ships it is missing
            raise BenchmarkError(f"{role.upper()}_DIR {model_dir}: {exc}") from exc
    model_dir = Path(model_dir)
    _check_model_dir(model_dir, role)
    from ..trust import RemoteCodeError, resolve_trust

    try:
        trust = resolve_trust(str(model_dir), trust_remote_code, f"{role.upper()}_DIR", "pass --trust-remote-code")
    except RemoteCodeError as exc:
        raise BenchmarkError(str(exc)) from None
    try:
        model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=trust, dtype=getattr(torch, dtype))
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported with the path
        raise BenchmarkError(f"{role.upper()}_DIR {model_dir}: AutoModel.from_pretrained failed "
                             f"({type(exc).__name__}: {exc})") from exc
    model.eval()
    config = model.config
    has_pooler = getattr(model, "pooler", None) is not None
    try:
        shape = EncoderShape.from_hf_config(config, has_pooler=has_pooler)
    except (AttributeError, TypeError, ValueError) as exc:
        raise BenchmarkError(f"{role.upper()}_DIR {model_dir}: config.json does not describe a BERT-family "
                             f"encoder ({exc})") from exc
    params = count_params(shape)
    module_params = sum(p.numel() for p in model.parameters())
    if module_params != params.total:
        raise BenchmarkError(f"{role.upper()}_DIR {model_dir}: count_params of the config's shape gives "
                             f"{params.total} parameters but the loaded {type(model).__name__} has {module_params}; "
                             "this is not a plain BERT-family encoder")
    weights_name, weights_bytes = weights_file_size(model_dir)
    info = {
        "dir": str(model_dir),
        "class": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "dtype": dtype,
        "shape": shape.to_dict(),
        "params": params.to_dict(),
        "weights_file": weights_name,
        "weights_file_bytes": weights_bytes,
        "weights_in_memory_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    return LoadedModel(role=role, model_dir=model_dir, model=model, shape=shape,
                       max_seq_len=max_sequence_length(config), vocab_size=int(config.vocab_size),
                       pad_token_id=getattr(config, "pad_token_id", None), info=info)


def random_batch(batch_size: int, seq_len: int, vocab_size: int, pad_token_id: int | None, seed: int,
                 device: str) -> dict[str, Any]:
    """``input_ids`` of exactly ``batch_size x seq_len`` random non-pad tokens and an all-ones attention mask."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    low = 0 if pad_token_id is None else int(pad_token_id) + 1
    if low >= vocab_size:
        low = 0
    ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=gen)
    if pad_token_id is not None and low == 0:  # a vocabulary too small to skip the pad id: move it away
        ids[ids == pad_token_id] = (int(pad_token_id) + 1) % vocab_size
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


# ====================================================================== memory
class OnnxCall:
    """An onnxruntime session called like a torch model (``model(**batch)``), for the timing loop: only the graph's
    inputs are passed (:func:`bge_pruning.export.onnx_export.run_session`). ``threads`` is onnxruntime's intra-op
    thread count, set to torch's so both runtimes get the same cores."""

    def __init__(self, path: Path, threads: int) -> None:
        from ..export.onnx_export import onnx_session

        self.path = path
        self.session = onnx_session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, **batch: Any) -> Any:
        from ..export.onnx_export import run_session

        return run_session(self.session, self.inputs, batch)


def load_onnx_models(pruned_dir: Path, threads: int,
                     check_only: bool = False) -> tuple[dict[str, OnnxCall], dict[str, Any]]:
    """The pruned export's ``onnx/model.onnx`` (required) and int8 graph (when present), with their file sizes;
    ``check_only``: only the checks (onnxruntime installed, the float32 graph written)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BenchmarkError(f"--onnx needs onnxruntime ({exc}); install the 'onnx' extra") from None
    if not (pruned_dir / ONNX_ROLES["pruned_onnx"]).is_file():
        raise BenchmarkError(f"PRUNED_DIR {pruned_dir}: no {ONNX_ROLES['pruned_onnx']}; export it with "
                             "extract_pruned_model.py --onnx [--quantize int8] (or export.onnx: true)")
    models, info = {}, {}
    if check_only:
        return models, info
    for role, name in ONNX_ROLES.items():
        path = pruned_dir / name
        if path.is_file():
            models[role] = OnnxCall(path, threads)
            info[role] = {"file": str(path), "file_bytes": path.stat().st_size, "runtime": "onnxruntime "
                          + __import__("onnxruntime").__version__ + " CPUExecutionProvider", "threads": threads}
    return models, info


def text_batches(texts: Sequence[str], tokenizers: dict[str, Any], batch_size: int, seq_len: int,
                 seed: int, device: str) -> tuple[dict[str, dict[str, Any]], float]:
    """``batch_size`` real texts drawn with ``seed``, tokenized by each role's tokenizer (truncated to ``seq_len``,
    padded to the batch's longest), and the mean number of real tokens per sequence (of the first role)."""
    import random

    pick = random.Random(seed).sample(range(len(texts)), min(batch_size, len(texts)))
    chosen = [texts[i] for i in pick]
    while len(chosen) < batch_size:  # fewer texts than the batch: repeat them
        chosen += chosen[: batch_size - len(chosen)]
    batches, mean_tokens = {}, None
    for role, tokenizer in tokenizers.items():
        enc = tokenizer(chosen, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
        batches[role] = {k: v.to(device) for k, v in enc.items()}
        if mean_tokens is None:
            mean_tokens = float(enc["attention_mask"].sum()) / batch_size
    return batches, float(mean_tokens)


class _RssPeak:
    """Peak resident-set-size increase during a ``with`` block (psutil sampler thread or getrusage)."""

    def __init__(self) -> None:
        try:
            import psutil

            self._proc = psutil.Process()
            self.method = f"psutil RSS sampled every {RSS_INTERVAL_S * 1000:g} ms in a background thread"
        except ImportError:  # pragma: no cover - psutil is usually installed
            self._proc = None
            self.method = ("resource.getrusage ru_maxrss high-water mark (lower bound: counts only growth "
                           "beyond the process's previous peak)")
        self.increase = 0
        self.peak = 0

    def _rss(self) -> int:
        return int(self._proc.memory_info().rss)

    @staticmethod
    def _maxrss() -> int:
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(value) if sys.platform == "darwin" else int(value) * 1024

    def __enter__(self) -> _RssPeak:
        if self._proc is None:
            self._start = self._maxrss()
            return self
        self._start = self._rss()
        self.peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(RSS_INTERVAL_S)

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            self.peak = self._maxrss()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        self.increase = max(0, self.peak - self._start)


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _trim_heap() -> bool:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``) so the next RSS increase is the call's own."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def memory_method(device: str) -> str:
    if device.startswith("cuda"):
        return ("torch.cuda.max_memory_allocated after reset_peak_memory_stats around every timed call, "
                "minus torch.cuda.memory_allocated before it (activations and workspace above the resident weights)")
    trim = "after gc and glibc malloc_trim(0), " if _libc() is not None else "after gc, "
    return (f"peak RSS increase over the RSS before the call, {_RssPeak().method}; max of {CPU_MEMORY_CALLS} extra "
            f"untimed calls per model and configuration, each {trim}after all timed calls of that configuration")


# ====================================================================== measurement
def _latency_stats(latencies: list[float], batch_size: int) -> dict[str, Any]:
    # numpy's default "linear" method: the (n - 1) * q / 100-th order statistic, interpolated between neighbours.
    p50, p95 = (float(v) for v in np.percentile(latencies, [50, 95]))
    return {
        "latency_s": {"p50": p50, "p95": p95, "mean": sum(latencies) / len(latencies),
                      "min": min(latencies), "max": max(latencies)},
        "throughput_seq_per_s": batch_size / p50 if p50 > 0 else None,
        "latencies_s": latencies,
    }


def measure_models(models: dict[str, Any], batches: dict[str, dict[str, Any]], device: str, repeats: int,
                   warmup: int) -> dict[str, dict[str, Any]]:
    """Time every model in ``models`` on its batch, interleaved: the roles in order on even repeats, reversed on
    odd ones, so drift and cache effects hit all alike; memory as documented above."""
    import torch

    cuda = device.startswith("cuda")
    roles = list(models)
    batch_size = int(next(iter(batches.values()))["input_ids"].shape[0])

    def call(role: str) -> None:
        models[role](**batches[role])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    latencies: dict[str, list[float]] = {r: [] for r in roles}
    cuda_peak: dict[str, int] = {r: 0 for r in roles}
    with torch.inference_mode():
        for _ in range(warmup):
            for role in roles:
                call(role)
        sync()
        for r in range(repeats):
            order = roles if r % 2 == 0 else roles[::-1]
            for role in order:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                sync()
                t0 = time.perf_counter()
                call(role)
                sync()
                latencies[role].append(time.perf_counter() - t0)
                if cuda:
                    cuda_peak[role] = max(cuda_peak[role], torch.cuda.max_memory_allocated(device) - before)
        out = {}
        for role in roles:
            stats = _latency_stats(latencies[role], batch_size)
            if cuda:
                stats["peak_memory_increase_bytes"] = int(cuda_peak[role])
            else:
                increase = 0
                for _ in range(CPU_MEMORY_CALLS):
                    gc.collect()
                    _trim_heap()
                    with _RssPeak() as mem:
                        call(role)
                    increase = max(increase, mem.increase)
                stats["peak_memory_increase_bytes"] = int(increase)
            out[role] = stats
    return out


# ====================================================================== the benchmark
def resolve_devices(device: str) -> list[str]:
    """``cpu`` -> [cpu]; ``cuda`` -> [cuda] (must be available); ``auto`` -> cpu, plus cuda when available."""
    import torch

    if device not in ("cpu", "cuda", "auto"):
        raise BenchmarkError(f"--device must be cpu, cuda or auto, got {device!r}")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise BenchmarkError("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")
    if device == "cpu":
        return ["cpu"]
    if device == "cuda":
        return ["cuda"]
    return ["cpu", "cuda"] if has_cuda else ["cpu"]


def _check_sizes(name: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not values:
        raise BenchmarkError(f"{name} needs at least one value")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise BenchmarkError(f"{name} must be positive integers, got {bad}")
    return list(dict.fromkeys(values))


def _environment(devices: list[str]) -> dict[str, Any]:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if "cuda" in devices:
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def run_benchmark(
    base_dir: str | Path,
    pruned_dir: str | Path,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    seq_lens: Sequence[int] = (32, 128, 512),
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    threads: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    trust_remote_code: bool = False,
    onnx: bool = False,
    texts: str | None = None,
) -> dict[str, Any]:
    """Measure base vs pruned on every device and (batch size, seq len); returns the JSON-ready results.

    ``onnx`` adds the pruned export's ONNX graph and its int8 graph (when written) on CPU, interleaved with the
    torch models. ``texts`` (a corpus spec of :func:`bge_pruning.data.text.corpus_texts`: a ``.txt`` file, a
    BEIR directory, ``sts:FILE``...) times real texts, truncated to the sequence length and padded to the batch's
    longest, instead of random tokens with no padding.
    """
    import torch

    started = time.perf_counter()
    batch_sizes = _check_sizes("--batch-sizes", batch_sizes)
    seq_lens = _check_sizes("--seq-lens", seq_lens)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise BenchmarkError(f"--repeats must be a positive integer, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise BenchmarkError(f"--warmup must be a non-negative integer, got {warmup!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise BenchmarkError(f"--threads must be a positive integer, got {threads!r}")
    if dtype not in DTYPES:
        raise BenchmarkError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    devices = resolve_devices(device)
    if threads is not None:
        torch.set_num_threads(threads)
    log = log or (lambda msg: None)

    if onnx and Path(pruned_dir).is_dir():  # before any model loads
        load_onnx_models(Path(pruned_dir), 1, check_only=True)
    corpus = None
    if texts is not None:
        from ..data.errors import DataError
        from ..data.text import corpus_texts

        try:
            corpus = corpus_texts(texts)
        except DataError as exc:
            raise BenchmarkError(f"--texts {texts}: {exc}") from None
    loaded = {"base": load_model(base_dir, "base", dtype, trust_remote_code),
              "pruned": load_model(pruned_dir, "pruned", dtype, trust_remote_code)}
    base, pruned = loaded["base"], loaded["pruned"]
    onnx_models, onnx_info = ({}, {})
    if onnx:
        if dtype != "float32":
            raise BenchmarkError(f"--onnx compares float32 graphs with the torch models: use --dtype float32, "
                                 f"not {dtype}")
        onnx_models, onnx_info = load_onnx_models(pruned.model_dir, torch.get_num_threads())
        if "pruned_int8" not in onnx_models:
            log(f"note: {pruned.model_dir} has no {ONNX_ROLES['pruned_int8']} (export with --quantize int8); "
                "timing the float32 graph only")
    tokenizers = None
    if corpus is not None:
        from transformers import AutoTokenizer

        # trust_remote_code=False: a tokenizer needs no modeling code, and an export written before configs kept
        # the stock model type would otherwise raise transformers' interactive trust prompt.
        tok = {role: AutoTokenizer.from_pretrained(str(loaded[role].model_dir), trust_remote_code=False)
               for role in ROLES}
        tokenizers = {**tok, **{role: tok["pruned"] for role in onnx_models}}
    if base.shape.hidden_size != pruned.shape.hidden_size:
        log(f"note: hidden sizes differ (base {base.shape.hidden_size}, pruned {pruned.shape.hidden_size})")
    limit = min(base.max_seq_len, pruned.max_seq_len)
    too_long = [t for t in seq_lens if t > limit]
    if too_long:
        raise BenchmarkError(f"--seq-lens {too_long} exceed what the position embeddings allow ({limit} tokens "
                             f"for these models)")
    vocab = min(base.vocab_size, pruned.vocab_size)

    flops = {}
    for t in seq_lens:
        ratio = flops_ratio(base.shape, pruned.shape, t)
        flops[str(t)] = {"base": forward_flops(base.shape, t).to_dict(),
                         "pruned": forward_flops(pruned.shape, t).to_dict(), "ratio": ratio}
    b_params, p_params = base.info["params"], pruned.info["params"]

    results = []
    memory_methods = {}
    for dev in devices:
        memory_methods[dev] = memory_method(dev)
        models = {role: loaded[role].model.to(dev) for role in ROLES}
        if dev == "cpu":  # onnxruntime's CPU provider: timed next to the CPU torch models only
            models.update(onnx_models)
        for t in seq_lens:
            for b in batch_sizes:
                real_tokens = None
                if corpus is not None:
                    batches, real_tokens = text_batches(corpus, {r: tokenizers[r] for r in models}, b, t,
                                                        seed + 1000 * t + b, dev)
                else:
                    batch = random_batch(b, t, vocab, base.pad_token_id, seed + 1000 * t + b, dev)
                    batches = {role: batch for role in models}
                measured = measure_models(models, batches, dev, repeats, warmup)
                base_p50 = measured["base"]["latency_s"]["p50"]
                pruned_p50 = measured["pruned"]["latency_s"]["p50"]
                speedup = base_p50 / pruned_p50 if pruned_p50 > 0 else None
                ratio = flops[str(t)]["ratio"]
                row = {
                    "device": dev, "batch_size": b, "seq_len": t,
                    "base": measured["base"], "pruned": measured["pruned"],
                    "speedup": speedup, "flops_ratio": ratio,
                    "speedup_over_flops_ratio": speedup / ratio if speedup and ratio else None,
                }
                if real_tokens is not None:
                    row["real_tokens_per_sequence"] = real_tokens
                extra = [role for role in measured if role not in ROLES]
                for role in extra:  # the ONNX graphs: speedup over the base torch model (another runtime)
                    row[role] = measured[role]
                    p50 = measured[role]["latency_s"]["p50"]
                    row[role]["speedup_vs_base"] = base_p50 / p50 if p50 > 0 else None
                results.append(row)
                log(f"[{dev} batch={b} seq_len={t}] base p50 {base_p50 * 1e3:.2f} ms, pruned p50 "
                    f"{pruned_p50 * 1e3:.2f} ms, speedup {_fmt(speedup, '.2f')}x (FLOPs ratio {_fmt(ratio, '.2f')}x)"
                    + "".join(f", {role} p50 {measured[role]['latency_s']['p50'] * 1e3:.2f} ms" for role in extra))
                del batches
        for role in ROLES:
            loaded[role].model.to("cpu")
        models.clear()
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()

    return {
        "format_version": FORMAT_VERSION,
        "base_dir": str(base.model_dir),
        "pruned_dir": str(pruned.model_dir),
        "settings": {"batch_sizes": batch_sizes, "seq_lens": seq_lens, "repeats": repeats, "warmup": warmup,
                     "devices": devices, "threads": torch.get_num_threads(), "dtype": dtype, "seed": seed,
                     "order": ("interleaved: base,pruned on even repeats, pruned,base on odd repeats" if not onnx_models
                               else "interleaved: base,pruned," + ",".join(onnx_models)
                               + " on even repeats, the reverse on odd repeats (ONNX graphs on CPU only)"),
                     "inputs": ("random non-pad token ids, no padding, all-ones attention mask" if corpus is None else
                                f"{len(corpus)} real texts of {texts}: batch_size drawn per configuration, truncated "
                                "to seq_len, padded to the batch's longest (seq = the truncation length)"),
                     "onnx": sorted(onnx_models) or None,
                     "throughput": "batch_size / p50 latency (sequences/s)",
                     "speedup": "base p50 latency / pruned p50 latency",
                     "flops_ratio": "base FLOPs / pruned FLOPs per sequence (compute-bound speedup limit)"},
        "memory_method": memory_methods,
        "environment": _environment(devices),
        "models": {"base": base.info, "pruned": pruned.info, **onnx_info},
        "params_ratio": {
            "encoder_layers": (p_params["encoder_layers"] / b_params["encoder_layers"]
                               if b_params["encoder_layers"] else None),
            "total": p_params["total"] / b_params["total"] if b_params["total"] else None,
        },
        "flops": {"included": FLOPS_INCLUDED, "excluded": FLOPS_EXCLUDED, "per_sequence": flops},
        "results": results,
        "wall_time_s": time.perf_counter() - started,
    }


# ====================================================================== reporting
def _fmt(value: Any, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def format_report(res: dict[str, Any]) -> str:
    """Model summary, FLOPs per sequence and the per-configuration table, as plain text."""
    lines = []
    for role in ROLES:
        m = res["models"][role]
        shape, params = m["shape"], m["params"]
        lines.append(
            f"{role:6s} {m['dir']}  [{m['class']}, {m['dtype']}]  {shape['n_layers']} layers, "
            f"{sum(shape['heads_per_layer'])} heads, {sum(shape['intermediate_per_layer'])} FFN units; "
            f"params encoder {_millions(params['encoder_layers'])} / total {_millions(params['total'])}; "
            f"{m['weights_file'] or 'no weights file'} {_mib(m['weights_file_bytes'])} MiB")
    pr = res["params_ratio"]
    lines.append(f"pruned/base params: encoder {_fmt(pr['encoder_layers'], '.3f')}, total {_fmt(pr['total'], '.3f')}")
    for t, f in res["flops"]["per_sequence"].items():
        lines.append(f"FLOPs/sequence at T={t}: base {f['base']['total'] / 1e9:.3f} G, pruned "
                     f"{f['pruned']['total'] / 1e9:.3f} G, ratio base/pruned {_fmt(f['ratio'], '.3f')}x")
    header = ["device", "batch", "seq", "base seq/s", "pruned seq/s", "speedup", "FLOPs ratio",
              "base p50/p95 ms", "pruned p50/p95 ms", "base mem MiB", "pruned mem MiB"]
    rows = []
    for r in res["results"]:
        b, p = r["base"], r["pruned"]
        rows.append([
            r["device"], str(r["batch_size"]), str(r["seq_len"]),
            _fmt(b["throughput_seq_per_s"], ".1f"), _fmt(p["throughput_seq_per_s"], ".1f"),
            _fmt(r["speedup"], ".2f") + "x", _fmt(r["flops_ratio"], ".2f") + "x",
            f"{b['latency_s']['p50'] * 1e3:.2f}/{b['latency_s']['p95'] * 1e3:.2f}",
            f"{p['latency_s']['p50'] * 1e3:.2f}/{p['latency_s']['p95'] * 1e3:.2f}",
            _mib(b.get("peak_memory_increase_bytes")), _mib(p.get("peak_memory_increase_bytes")),
        ])
    lines.append("")
    lines.append(format_rows(header, rows, left=()))
    onnx_roles = [role for role in ONNX_ROLES if role in res["models"]]
    if onnx_roles:
        lines.append("")
        lines.append("ONNX graphs of the pruned export (onnxruntime CPU), timed in the same interleaved loop; "
                     "speedup = base torch p50 / graph p50; onnxruntime keeps its memory arena between calls, so "
                     "its RSS increase per call is ~0 and not comparable with torch's:")
        header = ["batch", "seq", "model", "seq/s", "speedup vs base", "p50/p95 ms", "mem MiB", "file MiB"]
        rows = []
        for r in res["results"]:
            for role in ("base", "pruned", *onnx_roles):
                if role not in r:
                    continue
                m = r[role]
                speed = r["speedup"] if role == "pruned" else m.get("speedup_vs_base", 1.0 if role == "base" else None)
                size = (res["models"][role].get("file_bytes") if role in onnx_roles
                        else res["models"][role]["weights_file_bytes"])
                rows.append([str(r["batch_size"]), str(r["seq_len"]), {"base": "base (torch)",
                             "pruned": "pruned (torch)", "pruned_onnx": "pruned ONNX fp32",
                             "pruned_int8": "pruned ONNX int8"}[role],
                             _fmt(m["throughput_seq_per_s"], ".1f"), _fmt(speed, ".2f") + "x",
                             f"{m['latency_s']['p50'] * 1e3:.2f}/{m['latency_s']['p95'] * 1e3:.2f}",
                             _mib(m.get("peak_memory_increase_bytes")), _mib(size)])
        lines.append(format_rows(header, rows, left=()))
    lines.append("")
    for dev, method in res["memory_method"].items():
        lines.append(f"memory ({dev}): {method}")
    s = res["settings"]
    lines.append(f"inputs: {s['inputs']}")
    lines.append(f"{s['repeats']} timed repeats after {s['warmup']} warmup calls per model, interleaved; "
                 f"{s['threads']} CPU threads; wall time {res['wall_time_s']:.1f} s")
    return "\n".join(lines)
