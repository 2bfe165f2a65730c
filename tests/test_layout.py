"""bge_pruning.plots is one module per figure (issue 12 §4); every name it had as one file still imports from it."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "bge_pruning" / "plots"
FIGURES = ("masks", "training", "pareto", "efficiency")

# The public names of bge_pruning/plots.py before the split (callers, tests and docs import these).
OLD_PUBLIC = ("IMAGE_SUFFIXES", "KeptStructure", "PRUNING_INFO_FILE", "ParetoRun", "PlotError", "ZS_KEYS",
              "default_out", "is_evaluate_report", "is_size_series", "kept_structure_from_pruning_info",
              "kept_structure_from_zs", "label_below", "load_kept_structure", "main", "pareto_from_evaluate_reports",
              "pareto_front", "plot_efficiency", "plot_masks", "plot_pareto", "plot_training", "read_pareto_runs",
              "read_run_log", "training_panels")


def test_old_import_paths_reach_the_figure_modules():
    plots = importlib.import_module("bge_pruning.plots")
    assert sorted(plots.__all__) == sorted(OLD_PUBLIC)
    home = {}
    for name in OLD_PUBLIC:
        obj = getattr(plots, name)
        home[name] = getattr(obj, "__module__", None)
    assert home["plot_masks"] == home["load_kept_structure"] == "bge_pruning.plots.masks"
    assert home["plot_training"] == home["read_run_log"] == "bge_pruning.plots.training"
    assert home["plot_pareto"] == home["pareto_front"] == "bge_pruning.plots.pareto"
    assert home["plot_efficiency"] == "bge_pruning.plots.efficiency"
    assert home["main"] == "bge_pruning.plots.cli" and home["PlotError"] == "bge_pruning.errors"


def test_figure_modules_do_not_import_each_other():
    """Each figure module needs only the shared helpers: drawing one figure never loads another's code."""
    for figure in FIGURES:
        tree = ast.parse((PLOTS / f"{figure}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert imported <= {"_common"}, (figure, imported)


def test_importing_the_plots_loads_no_matplotlib():
    """matplotlib is imported when a figure is drawn, so the benchmarks and the CLI's --help stay light."""
    code = "import sys, bge_pruning.plots; print('matplotlib' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout, not whichever one is installed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=ROOT).stdout
    assert out.strip() == "False"
