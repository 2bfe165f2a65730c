"""The parameters-vs-quality Pareto figure, from ``{"runs": [...]}`` (format: ``bge_pruning.plots``) or from
``evaluate_model.py`` reports."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PlotError
from ._common import _figure, _read_json, _save


@dataclass(frozen=True)
class ParetoRun:
    name: str
    method: str
    params: int
    spearman: float


def read_pareto_runs(data: str | Path | Mapping[str, Any], x: str = "auto",
                     metric: str = "spearman") -> tuple[list[ParetoRun], str]:
    """Runs of a Pareto file (format in the module docstring) and the params key used for the x axis.

    ``metric`` names the key plotted on the y axis (``spearman`` by default; the quality benchmark also writes
    ``ndcg10``); the returned runs carry it in ``spearman``."""
    if x not in ("auto", "encoder", "total"):
        raise PlotError(f"--x must be auto, encoder or total, got {x!r}")
    source = "results" if isinstance(data, Mapping) else str(data)
    obj = data if isinstance(data, Mapping) else _read_json(Path(data), "Pareto results")
    runs = obj.get("runs") if isinstance(obj, Mapping) else None
    if not isinstance(runs, list) or not runs:
        raise PlotError(f'{source}: expected {{"runs": [{{"name", "method", "encoder_params" or '
                        f'"total_params", "spearman"}}, ...]}} with at least one run')
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise PlotError(f"{source}: runs[{i}] is not an object")
        if not isinstance(run.get("name"), str) or not run["name"]:
            raise PlotError(f"{source}: runs[{i}] needs a non-empty string 'name'")
        sp = run.get(metric)
        if isinstance(sp, bool) or not isinstance(sp, (int, float)) or not math.isfinite(sp):
            raise PlotError(f"{source}: runs[{i}] ({run['name']}) needs a finite number '{metric}', got {sp!r}")
        if "method" in run and not isinstance(run["method"], str):
            raise PlotError(f"{source}: runs[{i}] ({run['name']}): 'method' must be a string")
        for key in ("encoder_params", "total_params"):
            v = run.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0
                                  or not math.isfinite(v)):
                raise PlotError(f"{source}: runs[{i}] ({run['name']}): '{key}' must be a positive number, got {v!r}")
    if x == "auto":
        key = next((k for k in ("encoder_params", "total_params") if all(r.get(k) is not None for r in runs)), None)
        if key is None:
            lacking = [r["name"] for r in runs if r.get("encoder_params") is None and r.get("total_params") is None]
            raise PlotError(f"{source}: no parameter count shared by every run: give all runs 'encoder_params' or "
                            f"all 'total_params'" + (f" (runs with neither: {lacking})" if lacking else ""))
    else:
        key = f"{x}_params"
        lacking = [r["name"] for r in runs if r.get(key) is None]
        if lacking:
            raise PlotError(f"{source}: --x {x}: runs {lacking} have no '{key}'")
    return [ParetoRun(name=r["name"], method=r.get("method") or "other", params=int(r[key]),
                      spearman=float(r[metric])) for r in runs], key


def pareto_front(runs: Iterable[ParetoRun]) -> list[ParetoRun]:
    """Runs no other run beats (fewer-or-equal params and higher-or-equal Spearman, one strictly), by params."""
    runs = list(runs)
    front = [r for r in runs if not any(
        o.params <= r.params and o.spearman >= r.spearman and (o.params < r.params or o.spearman > r.spearman)
        for o in runs)]
    return sorted(front, key=lambda r: (r.params, -r.spearman))


def is_size_series(group: Sequence[ParetoRun]) -> bool:
    """Whether a method's runs are joined by a line: only a series of different sizes. Variants of one size
    (e.g. which layers a layer-drop model keeps) are alternatives, not a curve."""
    return len(group) > 1 and len({r.params for r in group}) == len(group)


def label_below(run: ParetoRun, runs: Sequence[ParetoRun]) -> bool:
    """Put ``run``'s label under its point when a point just above it, at (almost) the same size, would cover it."""
    span = (max(r.spearman for r in runs) - min(r.spearman for r in runs)) or 1.0
    return any(o is not run and abs(o.params - run.params) <= 0.01 * run.params
               and 0 <= o.spearman - run.spearman < 0.04 * span for o in runs)


def is_evaluate_report(obj: Any) -> bool:
    """Whether ``obj`` is the JSON ``scripts/evaluate_model.py --output`` writes (not a ``{"runs": [...]}`` file)."""
    return isinstance(obj, Mapping) and "model_dir" in obj and isinstance(obj.get("results"), Mapping)


def pareto_from_evaluate_reports(reports: Sequence[Mapping[str, Any]] | Sequence[str | Path], task: str | None = None,
                                 metric: str = "spearman") -> dict[str, Any]:
    """A Pareto file (``{"runs": [...]}``) from ``evaluate_model.py`` reports: one point per evaluated model and per
    baseline (a model evaluated in several reports appears once), parameters from the reports' ``params``, the y
    value ``results[task][metric]`` (``task`` may be left out when each report has one task)."""
    loaded = [r if isinstance(r, Mapping) else _read_json(Path(r), "evaluate_model.py report") for r in reports]
    names = [str(r) if not isinstance(r, Mapping) else "report" for r in reports]
    runs: dict[str, dict[str, Any]] = {}
    for source, rep in zip(names, loaded):
        if not is_evaluate_report(rep):
            raise PlotError(f"{source}: not an evaluate_model.py report (no model_dir / results)")
        params = rep.get("params") or {}
        for role, dir_key, res_key in (("baseline", "baseline_dir", "baseline_results"),
                                       ("model", "model_dir", "results")):
            results = rep.get(res_key)
            if not rep.get(dir_key) or not isinstance(results, Mapping):
                continue
            labels = list(results)
            label = task if task is not None else (labels[0] if len(labels) == 1 else None)
            if label is None:
                raise PlotError(f"{source}: several tasks ({', '.join(labels)}): choose one with --task")
            if label not in results or metric not in results[label]:
                have = ", ".join(f"{t}: {', '.join(m)}" for t, m in results.items())
                raise PlotError(f"{source}: no {metric!r} for task {label!r} (has {have})")
            counts = params.get(role) or {}
            if not counts:
                raise PlotError(f"{source}: no parameter counts for the {role} (re-run evaluate_model.py: its reports "
                                "record them under 'params')")
            name = Path(str(rep[dir_key])).name if "/" in str(rep[dir_key]) else str(rep[dir_key])
            if Path(str(rep[dir_key])).name in ("model", "hf", "export"):  # every export is .../model: add its run
                name = f"{Path(str(rep[dir_key])).parent.name}/{Path(str(rep[dir_key])).name}"
            runs.setdefault(str(rep[dir_key]), {"name": name, "method": "base" if role == "baseline" else "evaluated",
                                                "encoder_params": counts.get("encoder_layers"),
                                                "total_params": counts.get("total"), "score": results[label][metric]})
    if not runs:
        raise PlotError("no evaluated model in the reports")
    first = task or next(iter(loaded[0]["results"]))
    return {"runs": list(runs.values()), "score_label": f"{first} {metric} (x100)",
            "title": f"Quality vs size: {first} ({len(runs)} models)"}


def plot_pareto(data: str | Path | Mapping[str, Any], out: str | Path, x: str = "auto",
                metric: str = "spearman") -> Path:
    """Parameters vs ``metric`` (Spearman by default), one colour/marker per method, the Pareto front dashed, every
    point labelled. The y label is the file's ``<metric>_label`` when it has one."""
    runs, key = read_pareto_runs(data, x, metric)
    obj = data if isinstance(data, Mapping) else json.loads(Path(data).read_text(encoding="utf-8"))
    fig = _figure(9, 6)
    ax = fig.subplots()
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    methods = list(dict.fromkeys(r.method for r in runs))
    for i, method in enumerate(methods):
        group = sorted((r for r in runs if r.method == method), key=lambda r: r.params)
        ax.plot([r.params / 1e6 for r in group], [r.spearman for r in group], marker=markers[i % len(markers)],
                color=colors[i % len(colors)], linestyle="-" if is_size_series(group) else "none", linewidth=0.8,
                markersize=8, label=method)
    for r in runs:
        ax.annotate(r.name, (r.params / 1e6, r.spearman), textcoords="offset points",
                    xytext=(6, -12) if label_below(r, runs) else (6, 5), fontsize=8)
    front = pareto_front(runs)
    if len(front) > 1:
        ax.step([r.params / 1e6 for r in front], [r.spearman for r in front], where="post", color="0.3",
                linestyle="--", linewidth=1, label="Pareto front")
    params = [r.params for r in runs]
    if max(params) / min(params) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    label = "encoder-layer" if key == "encoder_params" else "total"
    ax.set_xlabel(f"{label} parameters (M)")
    ax.set_ylabel(obj.get(f"{metric}_label") if isinstance(obj.get(f"{metric}_label"), str) else metric)
    ax.set_title(obj.get("title") if isinstance(obj.get("title"), str) else f"Quality vs size ({len(runs)} runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, out)
