"""Evaluation reports: a plain-text table (with retention vs a baseline) and a JSON file.

``results`` everywhere is ``{task_label: {metric: value}}``. Retention is ``100 * pruned / base``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..tables import format_rows

Results = Mapping[str, Mapping[str, float]]


def retention(base: float | None, value: float | None) -> float | None:
    """``100 * value / base``; None when either is missing / not finite or ``base`` is 0."""
    if base is None or value is None:
        return None
    if not (math.isfinite(base) and math.isfinite(value)) or base == 0:
        return None
    return 100.0 * value / base


def retention_table(results: Results, baseline: Results) -> dict[str, dict[str, float | None]]:
    """Retention % for every metric present in both ``results`` and ``baseline``."""
    return {task: {m: retention(baseline.get(task, {}).get(m), v) for m, v in metrics.items()}
            for task, metrics in results.items()}


def _fmt(x: float | None, digits: int) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}"


def format_table(results: Results, baseline: Results | None = None, digits: int = 4) -> str:
    """Rows ``task | metric | value`` or, with a baseline, ``task | metric | base | pruned | retention %``."""
    if baseline is None:
        header = ["task", "metric", "value"]
        rows = [[t, m, _fmt(v, digits)] for t, ms in results.items() for m, v in ms.items()]
    else:
        header = ["task", "metric", "base", "pruned", "retention %"]
        rows = []
        tasks = list(dict.fromkeys(list(baseline) + list(results)))
        for t in tasks:
            metrics = list(dict.fromkeys(list(baseline.get(t, {})) + list(results.get(t, {}))))
            for m in metrics:
                b = baseline.get(t, {}).get(m)
                v = results.get(t, {}).get(m)
                rows.append([t, m, _fmt(b, digits), _fmt(v, digits), _fmt(retention(b, v), 2)])
    return format_rows(header, rows, left=(0, 1))  # task and metric names left, numbers right


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None (strict JSON), Paths -> str, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _model_ref(name: str | Path) -> str:
    """A local directory as an absolute path; ``embedded:NAME`` and hub ids as given (resolving them against the
    working directory would name a folder that does not exist)."""
    text = str(name)
    if text.startswith("embedded:") or (not Path(text).exists() and text.count("/") == 1
                                        and not text.startswith((".", "/"))):
        return text
    return str(Path(text).resolve())


def build_report(model_dir: str | Path, results: Results, *, baseline_dir: str | Path | None = None,
                 baseline_results: Results | None = None, tasks: list | None = None,
                 wall_time_s: float | None = None, extra: Mapping[str, Any] | None = None) -> dict:
    """The JSON-ready report: model dirs, task specs, all numbers, retention, wall time."""
    report: dict[str, Any] = {
        "model_dir": _model_ref(model_dir),
        "baseline_dir": _model_ref(baseline_dir) if baseline_dir is not None else None,
        "tasks": list(tasks or []),
        "results": {t: dict(m) for t, m in results.items()},
    }
    if baseline_results is not None:
        report["baseline_results"] = {t: dict(m) for t, m in baseline_results.items()}
        report["retention_pct"] = retention_table(results, baseline_results)
    report["wall_time_s"] = wall_time_s
    if extra:
        report.update(extra)
    return report


def write_json(path: str | Path, report: Mapping[str, Any]) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
