#!/usr/bin/env python
"""Plots of pruning runs (PNG/PDF/SVG by the --out suffix; headless, matplotlib Agg canvas).

    python scripts/plot.py masks MODEL_DIR_OR_ZS_FILE --out kept.png
        kept heads per layer (heatmap) + kept intermediate units per layer (bars), dropped layers marked;
        from an export's pruning_info.json or a saved mask file checkpoints/masks/zs_s{step}.pt
    python scripts/plot.py training RUN_LOG.jsonl --out curves.png
        expected vs target sparsity (overall and per module), lambdas, total loss, eval STS Spearman,
        expected encoder size, over steps (the train_log.jsonl that JsonlLogger writes)
    python scripts/plot.py pareto RESULTS.json --out pareto.png [--x auto|encoder|total] [--metric spearman|ndcg10]
        parameters vs Spearman of {"runs": [{"name", "method", "encoder_params"|"total_params", "spearman"}]}
        (format: the docstring of bge_pruning/plots/__init__.py)
    python scripts/plot.py efficiency EFFICIENCY.json --out efficiency.png
        re-plot the --output JSON of scripts/benchmark_efficiency.py
"""
from __future__ import annotations

import sys

from bge_pruning.plots import main

if __name__ == "__main__":
    sys.exit(main(prog="plot.py"))
