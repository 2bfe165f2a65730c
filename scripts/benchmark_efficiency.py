#!/usr/bin/env python
"""Efficiency of a pruned encoder vs its base: throughput, p50/p95 latency, peak memory, size, FLOPs.

    python scripts/benchmark_efficiency.py BASE_DIR PRUNED_DIR [--batch-sizes 1 8 32] [--seq-lens 32 128 512]
        [--repeats N] [--warmup N] [--device cpu|cuda|auto] [--threads N] [--dtype float32|float16|bfloat16]
        [--output results.json] [--plot results.png]

BASE_DIR may also be ``embedded:all-MiniLM-L6-v2``. Both directories are loaded with
``AutoModel.from_pretrained(dir)`` (remote code only for this project's exports or with --trust-remote-code);
base and pruned are timed interleaved on random batches of exactly batch x seq_len tokens. Prints a table with
the measured speedup next to the FLOPs ratio (base / pruned FLOPs: the compute-bound limit), and writes every
number to --output and a throughput plot to --plot. ``--device auto`` (default) runs on CPU, and on CUDA too
when it is available. The command: ``bge_pruning.cli.benchmark_efficiency``; the measurements:
``bge_pruning.benchmarks.efficiency``.
"""
from __future__ import annotations

import sys

from bge_pruning.cli.benchmark_efficiency import main

if __name__ == "__main__":
    sys.exit(main(prog="benchmark_efficiency.py"))
