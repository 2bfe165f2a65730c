#!/usr/bin/env python
"""Can this GPU run the BGE-M3 prune stage, and how fast? Nothing is downloaded.

    python scripts/gpu_prune_check.py [--steps 20] [--warmup 3] [--batch-size 16] [--seq-len 512]
        [--target 17,12,2816] [--no-distill] [--precision bf16|fp32] [--peak-tflops 989] [--json out.json]
    python scripts/gpu_prune_check.py --tiny      # seconds on CPU (one thread): checks the command itself

`bge-gpu-prune-check` once installed; the command: ``bge_pruning.cli.gpu_prune_check``; what it measures (Composer's
Trainer with SpeedMonitor and MemoryMonitor): ``bge_pruning.benchmarks.gpu_check``.
"""
import sys

from bge_pruning.cli.gpu_prune_check import main

if __name__ == "__main__":
    sys.exit(main(prog="gpu_prune_check.py"))
