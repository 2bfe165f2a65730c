"""Plots of pruning runs: kept structure, training curves, parameters-vs-quality Pareto, efficiency.

One module per figure (``masks``, ``training``, ``pareto``, ``efficiency``; the shared canvas and readers in
``_common``, the ``bge-plot`` command in ``cli``); every public name is importable from ``bge_pruning.plots``.

Every figure is drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``),
never through ``pyplot``, so importing this module changes no global backend and works headless.
Each plot has a data-extraction function (tested on its numbers) and a drawing function:

* masks    -- :func:`load_kept_structure` (an export's ``pruning_info.json`` or a saved zs ``.pt`` file)
              -> :class:`KeptStructure` -> :func:`plot_masks`;
* training -- :func:`read_run_log` (a ``JsonlLogger`` run log) -> :func:`training_panels` -> :func:`plot_training`;
* pareto   -- :func:`read_pareto_runs` (format below) -> :func:`pareto_front` -> :func:`plot_pareto`;
* efficiency -- :func:`plot_efficiency` of the results of ``scripts/benchmark_efficiency.py``.

Pareto input format (JSON; the quality benchmark writes it)::

    {
      "title": "optional figure title",
      "spearman_label": "optional y-axis label, e.g. STS-B test Spearman x100",
      "runs": [
        {"name": "bge-m3", "method": "base", "encoder_params": 302700000, "total_params": 567800000,
         "spearman": 86.2},
        {"name": "target_60pct", "method": "l0-pruning", "encoder_params": 121100000, "spearman": 84.0}
      ]
    }

* ``runs``: non-empty list; each run needs ``name`` (string, the point's label), ``spearman`` (a finite
  number, plotted as given: [0, 1] or x100, just be consistent) and ``encoder_params`` and/or
  ``total_params`` (positive integers). ``method`` (string) groups runs by colour/marker and defaults to
  ``"other"``. Other keys are ignored.
* the x axis is ``encoder_params`` when every run has it, else ``total_params`` when every run has it
  (``x="encoder"`` / ``x="total"`` forces one); otherwise it is an error naming the runs lacking it.
"""
from __future__ import annotations

from ..errors import PlotError
from ._common import IMAGE_SUFFIXES, PRUNING_INFO_FILE, ZS_KEYS
from .cli import default_out, main
from .efficiency import plot_efficiency
from .masks import (
    KeptStructure,
    kept_structure_from_pruning_info,
    kept_structure_from_zs,
    load_kept_structure,
    plot_masks,
)
from .pareto import (
    ParetoRun,
    is_evaluate_report,
    is_size_series,
    label_below,
    pareto_from_evaluate_reports,
    pareto_front,
    plot_pareto,
    read_pareto_runs,
)
from .training import plot_training, read_run_log, training_panels

__all__ = [
    "IMAGE_SUFFIXES", "KeptStructure", "PRUNING_INFO_FILE", "ParetoRun", "PlotError", "ZS_KEYS", "default_out",
    "is_evaluate_report", "is_size_series", "kept_structure_from_pruning_info", "kept_structure_from_zs",
    "label_below", "load_kept_structure", "main", "pareto_from_evaluate_reports", "pareto_front",
    "plot_efficiency", "plot_masks", "plot_pareto", "plot_training", "read_pareto_runs", "read_run_log",
    "training_panels",
]
