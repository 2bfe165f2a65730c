"""``bge-plot`` / ``scripts/plot.py``: one subcommand per figure."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ._common import _read_json
from .efficiency import plot_efficiency
from .masks import plot_masks
from .pareto import is_evaluate_report, pareto_from_evaluate_reports, plot_pareto
from .training import plot_training


def default_out(args: Any) -> Path:
    """Where a plot goes without ``--out``: beside what it plots, never silently into the working directory."""
    if args.command == "masks":
        src = Path(args.source)
        return src.parent / f"{src.name}_kept.png" if src.is_dir() else src.with_name(f"{src.stem}_kept.png")
    if args.command == "training":
        return Path(args.run_log).with_name("curves.png")
    first = Path(args.results[0] if isinstance(args.results, list) else args.results)
    return first.with_suffix(".png")



def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog=prog, description="Plots of pruning runs.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("masks", help="kept heads per layer (heatmap) and kept intermediate units per layer (bars)")
    m.add_argument("source", metavar="MODEL_DIR_OR_ZS_FILE",
                   help="an export directory (pruning_info.json), a pruning_info.json, or a zs_s{step}.pt file")
    m.add_argument("--out", type=Path, default=None,
                   help="default: beside the source, <export dir>_kept.png or <file>_kept.png")
    t = sub.add_parser("training", help="sparsity vs target, lambdas, loss and eval Spearman over steps")
    t.add_argument("run_log", metavar="RUN_LOG.jsonl")
    t.add_argument("--out", type=Path, default=None, help="default: curves.png beside RUN_LOG.jsonl")
    q = sub.add_parser("pareto", help='parameters vs Spearman of {"runs": [...]} (see bge_pruning/plots/__init__.py), '
                                      "or of evaluate_model.py reports (one point per model and baseline)")
    q.add_argument("results", metavar="RESULTS.json", nargs="+",
                   help='a {"runs": [...]} file (benchmark_quality.py\'s results.json), or one or more '
                        "evaluate_model.py --output reports")
    q.add_argument("--out", type=Path, default=None, help="default: the first RESULTS file's name with .png")
    q.add_argument("--task", default=None, help="evaluate_model.py reports: the task label (needed when a report "
                                                "has several tasks), e.g. sts:sts-dev.csv")
    q.add_argument("--x", choices=("auto", "encoder", "total"), default="auto",
                   help="parameter count on the x axis (auto: encoder_params if every run has it, else total_params)")
    q.add_argument("--metric", default="spearman",
                   help="the runs' key on the y axis: spearman (default), or ndcg10 in the quality benchmark's results")
    e = sub.add_parser("efficiency", help="re-plot the JSON written by scripts/benchmark_efficiency.py --output")
    e.add_argument("results", metavar="EFFICIENCY.json")
    e.add_argument("--out", type=Path, default=None, help="default: EFFICIENCY.json's name with .png")
    args = p.parse_args(argv)
    try:
        out = args.out if args.out is not None else default_out(args)
        if args.command == "masks":
            path = plot_masks(args.source, out)
        elif args.command == "training":
            path = plot_training(args.run_log, out)
        elif args.command == "pareto":
            sources = [Path(r) for r in args.results]
            first = _read_json(sources[0], "Pareto results")
            if len(sources) > 1 or is_evaluate_report(first):
                data = pareto_from_evaluate_reports(sources, args.task, args.metric)
                path = plot_pareto(data, out, x=args.x, metric="score")
            else:
                path = plot_pareto(sources[0], out, x=args.x, metric=args.metric)
        else:
            path = plot_efficiency(args.results, out)
    except UserError as exc:  # PlotError: the message names the file or argument
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
