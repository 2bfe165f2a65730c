"""The training-curves figure of a ``JsonlLogger`` run log: expected vs target sparsity, lambdas, loss, eval
Spearman and expected size over steps."""
from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PlotError
from ._common import _figure, _no_data, _save, _short


def read_run_log(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Metric -> (steps, values) from a ``JsonlLogger`` file, steps ascending.

    The logger writes several lines per step (one per ``log_metrics`` call) and appends on restarts:
    lines are merged by step and a later value of the same metric at the same step wins. Lines without
    a step, non-numeric and non-finite values are skipped; an unparsable last line (a write cut short)
    is skipped with a warning, any other unparsable line is an error naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"{path}: no such file (a run log written by JsonlLogger)" if not path.exists()
                        else f"{path}: not a file")
    by_step: dict[int, dict[str, float]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PlotError(f"{path}: cannot read ({exc})") from None
    last = max((no for no, line in enumerate(lines, 1) if line.strip()), default=0)
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if no == last:  # a run killed (or still running) mid-write: plot what is complete
                warnings.warn(f"{path}:{no}: skipping the incomplete last line ({exc.msg})", stacklevel=2)
                continue
            raise PlotError(f"{path}:{no}: not a JSON line ({exc.msg})") from None
        if not isinstance(row, dict):
            raise PlotError(f"{path}:{no}: expected a JSON object per line")
        step = row.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        slot = by_step.setdefault(int(step), {})
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                slot[k] = float(v)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for step in sorted(by_step):
        for k, v in by_step[step].items():
            xs, ys = series.setdefault(k, ([], []))
            xs.append(step)
            ys.append(v)
    if not series:
        raise PlotError(f"{path}: no metrics with a step found (empty run log?)")
    return {k: (np.array(xs, dtype=float), np.array(ys, dtype=float)) for k, (xs, ys) in series.items()}


_MODULE_SPARSITY = re.compile(r"^l0/expected_(.+)_sparsity$")
_LAMBDA = re.compile(r"^l0/lambda_[12](_.+)?$")
_SPEARMAN = re.compile(r"^metrics/.*spearman", re.IGNORECASE)


def training_panels(series: Mapping[str, Any]) -> dict[str, list[str]]:
    """Which metrics each training panel shows (only those present in ``series``)."""
    modules = sorted(m.group(1) for k in series if (m := _MODULE_SPARSITY.match(k)))
    per_module = []
    for m in modules:
        per_module.append(f"l0/expected_{m}_sparsity")
        if f"l0/target_{m}_sparsity" in series:
            per_module.append(f"l0/target_{m}_sparsity")
    return {
        "sparsity": [k for k in ("l0/expected_sparsity", "l0/target_sparsity") if k in series],
        "module_sparsity": per_module,
        "lambdas": sorted(k for k in series if _LAMBDA.match(k)),
        "loss": [k for k in ("loss/train/total",) if k in series],
        "spearman": sorted(k for k in series if _SPEARMAN.match(k)),
        "params": [k for k in ("l0/expected_num_params", "l0/target_num_params") if k in series],
    }


def _smooth(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // 25)
    if window == 1:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_training(log: str | Path | Mapping[str, Any], out: str | Path) -> Path:
    """Sparsity (overall, per module) vs target, lambdas, loss, eval Spearman and expected size over steps."""
    series = log if isinstance(log, Mapping) else read_run_log(log)
    source = "run log" if isinstance(log, Mapping) else str(log)
    panels = training_panels(series)
    if not any(panels.values()):
        shown = ", ".join(sorted(series)[:12])
        raise PlotError(f"{source}: no l0/*, loss/train/total or metrics/*Spearman* entries to plot (found: {shown})")
    fig = _figure(15, 8.5)
    axes = fig.subplots(2, 3)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    ax = axes[0, 0]
    if panels["sparsity"]:
        for k in panels["sparsity"]:
            xs, ys = series[k]
            target = "target" in k
            ax.plot(xs, ys, color="black" if target else palette[0], linestyle="--" if target else "-",
                    label="target" if target else "expected")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no l0/expected_sparsity")
    ax.set_title("Overall sparsity (expected vs target)")

    ax = axes[0, 1]
    if panels["module_sparsity"]:
        modules = [k[len("l0/expected_"):-len("_sparsity")] for k in panels["module_sparsity"] if "expected" in k]
        for color, m in zip(palette * 3, modules):
            xs, ys = series[f"l0/expected_{m}_sparsity"]
            ax.plot(xs, ys, color=color, label=f"{m} expected")
            if f"l0/target_{m}_sparsity" in series:
                xs, ys = series[f"l0/target_{m}_sparsity"]
                ax.plot(xs, ys, color=color, linestyle="--", label=f"{m} target")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, ncol=2)
    else:
        _no_data(ax, "no per-module sparsity")
    ax.set_title("Sparsity per module (solid expected, dashed target)")

    ax = axes[0, 2]
    if panels["lambdas"]:
        for color, k in zip(palette * 4, panels["lambdas"]):
            xs, ys = series[k]
            ax.plot(xs, ys, color=color, linestyle="-" if "lambda_1" in k else ":", label=k[len("l0/"):])
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.legend(fontsize=7, ncol=2)
    else:
        _no_data(ax, "no l0/lambda_*")
    ax.set_title("Lagrange multipliers")

    ax = axes[1, 0]
    if panels["loss"]:
        xs, ys = series["loss/train/total"]
        ax.plot(xs, ys, color=palette[0], alpha=0.3, linewidth=0.8, label="per step")
        ax.plot(xs, _smooth(ys), color=palette[0], label="moving average")
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no loss/train/total")
    ax.set_title("Training loss (total)")

    ax = axes[1, 1]
    if panels["spearman"]:
        for color, k in zip(palette * 3, panels["spearman"]):
            xs, ys = series[k]
            ax.plot(xs, ys, color=color, marker="o", label=k[len("metrics/"):])
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.3f}" if abs(y) <= 1.5 else f"{y:.1f}", (x, y), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=7)
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no evaluation Spearman")
    ax.set_title("STS Spearman x100 at evaluations")

    ax = axes[1, 2]
    if panels["params"]:
        for k in panels["params"]:
            xs, ys = series[k]
            target = "target" in k
            ax.plot(xs, ys / 1e6, color="black" if target else palette[2], linestyle="--" if target else "-",
                    label="target" if target else "expected")
        ax.set_ylabel("encoder parameters (M)")
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no l0/expected_num_params")
    ax.set_title("Expected encoder size")

    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training: {_short(source)}", fontsize=11)
    return _save(fig, out)
