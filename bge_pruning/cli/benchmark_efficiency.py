"""``bge-benchmark-efficiency`` (``scripts/benchmark_efficiency.py``): throughput, p50/p95 latency, peak memory,
size and FLOPs of a pruned encoder vs its base.

    bge-benchmark-efficiency BASE_DIR PRUNED_DIR [--batch-sizes 1 8 32] [--seq-lens 32 128 512] [--repeats N]
        [--warmup N] [--device cpu|cuda|auto] [--threads N] [--dtype float32|float16|bfloat16]
        [--output results.json] [--plot results.png] [--onnx] [--texts SPEC]

The arguments, the table on stdout and the files written; the measurements (and the table's text) are
:mod:`bge_pruning.benchmarks.efficiency`'s ``run_benchmark`` and ``format_report``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..benchmarks.efficiency import DTYPES, format_report, run_benchmark
from ..errors import BenchmarkError, UserError


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Throughput, latency, memory, size and FLOPs of a pruned encoder vs its base "
                               "(measured interleaved).")
    p.add_argument("base_dir", metavar="BASE_DIR", help="base model directory (AutoModel-loadable) or embedded:NAME")
    p.add_argument("pruned_dir", metavar="PRUNED_DIR", help="pruned export directory")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], metavar="N")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[32, 128, 512], metavar="T")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per model and configuration (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model first (default 2)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="auto: CPU, and CUDA too when available (default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype for both models (default float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token batches")
    p.add_argument("--output", type=Path, default=None, help="write every number to this JSON file")
    p.add_argument("--plot", type=Path, default=None, help="write the throughput/speedup plot to this PNG")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run modeling code shipped in a model directory that is not this project's own export")
    p.add_argument("--onnx", action="store_true",
                   help="also time PRUNED_DIR's onnx/model.onnx and its int8 graph (when written) with onnxruntime "
                        "on CPU, interleaved with the torch models")
    p.add_argument("--texts", default=None, metavar="SPEC",
                   help="time real texts instead of random tokens: a .txt file (one per line), a BEIR directory, "
                        "sts:FILE, ... (bge_pruning.data.text.corpus_texts); truncated to each --seq-lens value")
    return p


def _check_output_path(path: Path | None, arg: str, suffixes: tuple[str, ...]) -> None:
    if path is None:
        return
    if path.exists() and path.is_dir():
        raise BenchmarkError(f"{arg} {path}: is a directory; give a file name")
    if path.suffix.lower() not in suffixes:
        raise BenchmarkError(f"{arg} {path}: expected a file ending in {' or '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise BenchmarkError(f"{arg} {path}: parent {parent} is not a directory")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        _check_output_path(args.output, "--output", (".json",))
        _check_output_path(args.plot, "--plot", (".png", ".pdf", ".svg"))
        res = run_benchmark(args.base_dir, args.pruned_dir, batch_sizes=args.batch_sizes, seq_lens=args.seq_lens,
                            repeats=args.repeats, warmup=args.warmup, device=args.device, threads=args.threads,
                            dtype=args.dtype, seed=args.seed, log=log, trust_remote_code=args.trust_remote_code,
                            onnx=args.onnx, texts=args.texts)
    except UserError as exc:  # BenchmarkError: the message names the argument or directory
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(res))
    if args.output is not None:
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(res, indent=2) + "\n")
        except OSError as exc:
            print(f"error: --output {args.output}: cannot write ({exc})", file=sys.stderr)
            return 2
        print(f"wrote {args.output}")
    if args.plot is not None:
        from ..plots import plot_efficiency  # only the CLI draws: the benchmark itself does not need matplotlib

        try:
            plot_efficiency(res, args.plot)
        except (UserError, OSError) as exc:  # PlotError
            print(f"error: --plot {args.plot}: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    return 0
