"""The kept-structure figure: kept heads per layer (heatmap) and kept FFN units per layer (bars), from an
export's ``pruning_info.json`` or a saved mask file."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PlotError
from ._common import PRUNING_INFO_FILE, ZS_KEYS, _figure, _no_data, _read_json, _save, _short


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
