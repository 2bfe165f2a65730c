"""Plots of pruning runs: kept structure, training curves, parameters-vs-quality Pareto, efficiency.

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

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PlotError, UserError

PRUNING_INFO_FILE = "pruning_info.json"
IMAGE_SUFFIXES = (".png", ".pdf", ".svg")
ZS_KEYS = ("head_z", "intermediate_z", "layer_z")


# ====================================================================== figure helpers
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: str | Path, dpi: int = 110) -> Path:
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise PlotError(f"--out {out}: expected a file ending in {', '.join(IMAGE_SUFFIXES)}")
    if out.is_dir():
        raise PlotError(f"--out {out}: is a directory; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    except OSError as exc:
        raise PlotError(f"--out {out}: cannot write ({exc})") from exc
    return out


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _read_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise PlotError(f"{path}: no such file ({what})")
    if not path.is_file():
        raise PlotError(f"{path}: not a file ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlotError(f"{path}: cannot read JSON ({exc})") from None


# ====================================================================== masks / kept structure
@dataclass
class KeptStructure:
    """What a pruned model keeps of its base, layer by layer (base layer indices).

    ``head_kept`` is [n_layers, max heads]: 1.0 kept, 0.0 pruned (every head of a dropped layer is 0),
    NaN where a layer has fewer heads than the widest one; None when the source has no head mask.
    ``intermediate_kept`` counts the kept FFN units per layer (0 for dropped layers); None when unknown.
    """

    source: str
    layer_kept: list[bool]
    heads_per_layer: list[int] | None
    head_kept: np.ndarray | None
    intermediate_per_layer: list[int] | None
    intermediate_kept: list[int] | None

    @property
    def n_layers(self) -> int:
        return len(self.layer_kept)


def _as_int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise PlotError(f"{where} must be a list of integers, got {value!r}"[:300])
    return list(value)


def kept_structure_from_pruning_info(info: Mapping[str, Any], source: str = "pruning_info.json") -> KeptStructure:
    """Kept layers/heads/intermediate units from an export's ``pruning_info.json`` contents.

    Uses ``base_shape`` (widths of the base), ``kept_layers`` and ``kept_heads`` (base indices, one
    list per kept layer) and ``achieved_shape.intermediate_per_layer`` (one entry per kept layer).
    """
    if not isinstance(info, Mapping):
        raise PlotError(f"{source}: expected a JSON object")
    missing = [k for k in ("base_shape", "kept_layers", "kept_heads") if k not in info]
    if missing:
        raise PlotError(f"{source}: missing {', '.join(missing)} (not a pruning_info.json written by the export)")
    base = info["base_shape"]
    if not isinstance(base, Mapping) or "heads_per_layer" not in base or "intermediate_per_layer" not in base:
        raise PlotError(f"{source}: base_shape needs heads_per_layer and intermediate_per_layer")
    heads = _as_int_list(base["heads_per_layer"], f"{source}: base_shape.heads_per_layer")
    inter = _as_int_list(base["intermediate_per_layer"], f"{source}: base_shape.intermediate_per_layer")
    n = len(heads)
    if len(inter) != n:
        raise PlotError(f"{source}: base_shape has {n} head widths but {len(inter)} intermediate widths")
    kept_layers = _as_int_list(info["kept_layers"], f"{source}: kept_layers")
    if any(not 0 <= i < n for i in kept_layers) or len(set(kept_layers)) != len(kept_layers):
        raise PlotError(f"{source}: kept_layers {kept_layers} must be distinct indices below {n}")
    kept_heads = info["kept_heads"]
    if not isinstance(kept_heads, list) or len(kept_heads) != len(kept_layers):
        raise PlotError(f"{source}: kept_heads must have one list per kept layer ({len(kept_layers)})")

    head_kept = np.full((n, max(heads, default=0)), np.nan)
    for i, h in enumerate(heads):
        head_kept[i, :h] = 0.0
    for layer, row in zip(kept_layers, kept_heads):
        row = _as_int_list(row, f"{source}: kept_heads for layer {layer}")
        if any(not 0 <= j < heads[layer] for j in row):
            raise PlotError(f"{source}: kept_heads for layer {layer} has indices outside 0..{heads[layer] - 1}: {row}")
        head_kept[layer, row] = 1.0

    intermediate_kept = None
    achieved = info.get("achieved_shape")
    if isinstance(achieved, Mapping) and "intermediate_per_layer" in achieved:
        widths = _as_int_list(achieved["intermediate_per_layer"], f"{source}: achieved_shape.intermediate_per_layer")
        if len(widths) != len(kept_layers):
            raise PlotError(f"{source}: achieved_shape.intermediate_per_layer has {len(widths)} entries for "
                            f"{len(kept_layers)} kept layers")
        intermediate_kept = [0] * n
        for layer, w in zip(kept_layers, widths):
            intermediate_kept[layer] = w
    kept = set(kept_layers)
    return KeptStructure(source=source, layer_kept=[i in kept for i in range(n)], heads_per_layer=heads,
                         head_kept=head_kept, intermediate_per_layer=inter, intermediate_kept=intermediate_kept)


def _mask_array(value: Any, name: str, source: str) -> np.ndarray:
    try:
        import torch

        if torch.is_tensor(value):
            value = value.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise PlotError(f"{source}: {name} is not numeric ({exc})") from None
    if not np.all(np.isfinite(arr)):
        raise PlotError(f"{source}: {name} has non-finite values")
    return arr


def kept_structure_from_zs(zs: Mapping[str, Any], source: str = "zs") -> KeptStructure:
    """Kept structure from deterministic masks (``head_z`` [L, H], ``intermediate_z`` [L, I], ``layer_z`` [L]).

    A unit is kept where its mask value is non-zero; a layer is dropped where ``layer_z`` is 0 (all its
    heads and units then count as removed). Absent masks mean nothing of that kind was pruned.
    """
    if not isinstance(zs, Mapping) or not any(k in zs for k in ZS_KEYS):
        raise PlotError(f"{source}: expected a dict with some of {', '.join(ZS_KEYS)} (saved L0 masks)")
    arrays = {k: _mask_array(zs[k], k, source) for k in ZS_KEYS if k in zs and zs[k] is not None}
    for k in ("head_z", "intermediate_z"):
        if k in arrays and arrays[k].ndim != 2:
            raise PlotError(f"{source}: {k} must be 2-D [layers, units], has shape {list(arrays[k].shape)}")
    if "layer_z" in arrays:
        arrays["layer_z"] = arrays["layer_z"].reshape(-1)
    counts = {k: (len(v) if k == "layer_z" else v.shape[0]) for k, v in arrays.items()}
    if len(set(counts.values())) != 1:
        raise PlotError(f"{source}: masks disagree on the number of layers: {counts}")
    n = next(iter(counts.values()))
    layer_kept = [bool(v != 0) for v in arrays["layer_z"]] if "layer_z" in arrays else [True] * n
    alive = np.array(layer_kept, dtype=float)[:, None]

    heads_per_layer = head_kept = None
    if "head_z" in arrays:
        head_kept = (arrays["head_z"] != 0).astype(float) * alive
        heads_per_layer = [arrays["head_z"].shape[1]] * n
    inter_per_layer = inter_kept = None
    if "intermediate_z" in arrays:
        inter_per_layer = [arrays["intermediate_z"].shape[1]] * n
        inter_kept = [int(c) if k else 0 for c, k in zip((arrays["intermediate_z"] != 0).sum(axis=1), layer_kept)]
    return KeptStructure(source=source, layer_kept=layer_kept, heads_per_layer=heads_per_layer, head_kept=head_kept,
                         intermediate_per_layer=inter_per_layer, intermediate_kept=inter_kept)


def load_kept_structure(path: str | Path) -> KeptStructure:
    """From an export directory (its ``pruning_info.json``), a ``pruning_info.json`` file, or a zs ``.pt`` file."""
    path = Path(path)
    if path.is_dir():
        info_path = path / PRUNING_INFO_FILE
        if not info_path.is_file():
            raise PlotError(f"{path}: no {PRUNING_INFO_FILE} in this directory (pass an export directory, its "
                            "pruning_info.json or a saved masks file zs_s{step}.pt)")
        return kept_structure_from_pruning_info(_read_json(info_path, "pruning info"), str(info_path))
    if not path.exists():
        raise PlotError(f"{path}: no such file or directory")
    if path.suffix in (".pt", ".pth"):
        import torch

        try:
            zs = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported with its path
            raise PlotError(f"{path}: cannot load the masks with torch.load ({type(exc).__name__}: {exc})") from None
        return kept_structure_from_zs(zs, str(path))
    return kept_structure_from_pruning_info(_read_json(path, "pruning info"), str(path))


def plot_masks(structure: KeptStructure | str | Path, out: str | Path) -> Path:
    """Heatmap of kept heads per layer and bars of kept intermediate units per layer; dropped layers marked."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    s = structure if isinstance(structure, KeptStructure) else load_kept_structure(structure)
    n = s.n_layers
    if n == 0:
        raise PlotError(f"{s.source}: the base model has no layers to plot")
    fig = _figure(13, max(3.2, 0.42 * n + 1.8))
    ax_h, ax_i = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    dropped = [i for i, k in enumerate(s.layer_kept) if not k]
    ylabels = [f"layer {i}" + ("  (dropped)" if not k else "") for i, k in enumerate(s.layer_kept)]
    kept_color, pruned_color, dropped_color = "#2a7f62", "#e4e4e4", "#7a7a7a"

    if s.head_kept is not None and s.head_kept.shape[1] > 0:
        codes = s.head_kept.copy()  # 0 pruned, 1 kept, 2 dropped layer, NaN no such head
        for i in dropped:
            codes[i, ~np.isnan(codes[i])] = 2.0
        cmap = ListedColormap([pruned_color, kept_color, dropped_color]).with_extremes(bad="white")
        ax_h.imshow(np.ma.masked_invalid(codes), cmap=cmap, vmin=-0.5, vmax=2.5, aspect="auto",
                    interpolation="nearest")
        H = codes.shape[1]
        ax_h.set_xticks(range(H))
        ax_h.set_xticks(np.arange(-0.5, H, 1), minor=True)
        ax_h.set_yticks(np.arange(-0.5, n, 1), minor=True)
        ax_h.grid(which="minor", color="white", linewidth=1.2)
        ax_h.tick_params(which="minor", length=0)
        ax_h.set_xlabel("head")
        total = int(np.nansum(~np.isnan(s.head_kept)))
        kept = int(np.nansum(s.head_kept))
        for i in range(n):
            row = s.head_kept[i]
            if s.layer_kept[i]:
                label = f"{int(np.nansum(row))}/{int(np.sum(~np.isnan(row)))}"
            else:
                label = "dropped"
            ax_h.text(H - 0.5 + 0.15, i, label, va="center", ha="left", fontsize=8, clip_on=False)
        ax_h.set_title(f"Kept attention heads: {kept}/{total}")
        ax_h.legend(handles=[Patch(color=kept_color, label="kept"), Patch(color=pruned_color, label="pruned"),
                             Patch(color=dropped_color, label="layer dropped")],
                    loc="upper center", bbox_to_anchor=(0.5, -0.12 if n < 8 else -0.06), ncol=3, fontsize=8,
                    frameon=False)
        ax_h.set_yticks(range(n))
        ax_h.set_yticklabels(ylabels)
    else:
        _no_data(ax_h, "no head mask (heads not pruned)")

    if s.intermediate_kept is not None and s.intermediate_per_layer is not None:
        y = np.arange(n)
        totals = np.array(s.intermediate_per_layer, dtype=float)
        kept_units = np.array(s.intermediate_kept, dtype=float)
        ax_i.barh(y, totals, color=pruned_color, label="base width")
        colors = [kept_color if k else dropped_color for k in s.layer_kept]
        ax_i.barh(y, np.where(s.layer_kept, kept_units, totals), color=colors,
                  hatch=None, label="kept")
        for i in dropped:
            ax_i.barh(i, totals[i], color=dropped_color, hatch="//", edgecolor="white")
        xmax = max(totals.max(), 1.0)
        for i in range(n):
            text = (f"{int(kept_units[i])}/{int(totals[i])}" if s.layer_kept[i] else "layer dropped")
            ax_i.text(xmax * 1.01, i, text, va="center", ha="left", fontsize=8)
        ax_i.set_xlim(0, xmax * 1.3)
        ax_i.set_yticks(y)
        ax_i.set_yticklabels(ylabels)
        ax_i.invert_yaxis()
        ax_i.set_xlabel("intermediate (FFN) units")
        ax_i.set_title(f"Kept intermediate units: {int(kept_units.sum())}/{int(totals.sum())}")
    else:
        _no_data(ax_i, "no intermediate mask (FFN not pruned)")
    fig.suptitle(f"Kept structure: {s.n_layers - len(dropped)}/{s.n_layers} layers  ({_short(s.source)})",
                 fontsize=11)
    return _save(fig, out)


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]


# ====================================================================== training curves
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


# ====================================================================== pareto
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


# ====================================================================== efficiency
def plot_efficiency(results: Mapping[str, Any] | str | Path, out: str | Path) -> Path:
    """Throughput vs batch size per sequence length (base, pruned, base x FLOPs ratio) and speedups, per device."""
    res = results if isinstance(results, Mapping) else _read_json(Path(results), "efficiency results")
    source = "efficiency results" if isinstance(results, Mapping) else str(results)
    rows = res.get("results") if isinstance(res, Mapping) else None
    if not isinstance(rows, list) or not rows:
        raise PlotError(f"{source}: no 'results' entries "
                        "(expected the --output JSON of scripts/benchmark_efficiency.py)")
    for i, r in enumerate(rows):
        try:
            ok = (isinstance(r["device"], str) and int(r["seq_len"]) > 0 and int(r["batch_size"]) > 0
                  and all(r[m]["throughput_seq_per_s"] is not None for m in ("base", "pruned")) and "speedup" in r)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise PlotError(f"{source}: results[{i}] lacks device, seq_len, batch_size, speedup or "
                            "base/pruned throughput_seq_per_s")
    devices = list(dict.fromkeys(r["device"] for r in rows))
    seq_lens = sorted({int(r["seq_len"]) for r in rows})
    ncols = len(seq_lens) + 1
    fig = _figure(4.2 * ncols, 3.6 * len(devices) + 0.6)
    axes = fig.subplots(len(devices), ncols, squeeze=False)
    base_c, pruned_c = "#1f77b4", "#d62728"
    seq_colors = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2"]

    def xscale(ax, bs):
        if len(set(bs)) > 1 and max(bs) / max(min(bs), 1) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(bs)))
        ax.set_xticklabels([str(b) for b in sorted(set(bs))])
        ax.minorticks_off()

    for d, dev in enumerate(devices):
        for c, t in enumerate(seq_lens):
            ax = axes[d, c]
            pts = sorted((r for r in rows if r["device"] == dev and int(r["seq_len"]) == t),
                         key=lambda r: r["batch_size"])
            bs = [r["batch_size"] for r in pts]
            base = [r["base"]["throughput_seq_per_s"] for r in pts]
            pruned = [r["pruned"]["throughput_seq_per_s"] for r in pts]
            ax.plot(bs, base, marker="o", color=base_c, label="base")
            ax.plot(bs, pruned, marker="s", color=pruned_c, label="pruned")
            ratio = pts[0].get("flops_ratio") if pts else None
            if ratio:
                ax.plot(bs, [b * ratio for b in base], color=pruned_c, linestyle="--", linewidth=1,
                        label=f"base x FLOPs ratio ({ratio:.2f}x)")
            xscale(ax, bs)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{dev}: seq_len {t}")
            ax.set_xlabel("batch size")
            ax.set_ylabel("throughput (sequences/s)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax = axes[d, -1]
        all_bs = []
        for i, t in enumerate(seq_lens):
            pts = sorted((r for r in rows if r["device"] == dev and int(r["seq_len"]) == t),
                         key=lambda r: r["batch_size"])
            bs = [r["batch_size"] for r in pts]
            all_bs += bs
            color = seq_colors[i % len(seq_colors)]
            ax.plot(bs, [r["speedup"] for r in pts], marker="o", color=color, label=f"measured, T={t}")
            ratio = pts[0].get("flops_ratio") if pts else None
            if ratio:
                ax.axhline(ratio, color=color, linestyle="--", linewidth=1, label=f"FLOPs ratio, T={t}")
        ax.axhline(1.0, color="0.5", linewidth=0.8)
        xscale(ax, all_bs)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{dev}: speedup (base / pruned latency)")
        ax.set_xlabel("batch size")
        ax.set_ylabel("speedup (x)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    models = res.get("models", {})
    dirs = [Path(str(models.get(r, {}).get("dir", r))) for r in ("base", "pruned")]
    names = [d.name for d in dirs]
    if names[0] == names[1]:  # e.g. two directories called "model": show their parents too
        names = [f"{d.parent.name}/{d.name}" for d in dirs]
    fig.suptitle(f"Efficiency: {names[0]} (base) vs {names[1]} (pruned)", fontsize=11)
    return _save(fig, out)


# ====================================================================== CLI (scripts/plot.py)
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
    q = sub.add_parser("pareto", help='parameters vs Spearman of {"runs": [...]} (see bge_pruning/plots.py), or of '
                                      "evaluate_model.py reports (one point per model and baseline)")
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
