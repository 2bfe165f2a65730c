"""The throughput figure of ``scripts/benchmark_efficiency.py --output`` results."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import PlotError
from ._common import _figure, _read_json, _save


def plot_efficiency(results: Mapping[str, Any] | str | Path, out: str | Path) -> Path:
    """Throughput vs batch size per sequence length (base, pruned, base x FLOPs ratio) and speedups, per device."""
    res = results if isinstance(results, Mapping) else _read_json(Path(results), "efficiency results")
    source = "efficiency results" if isinstance(results, Mapping) else str(results)
    rows = res.get("results") if isinstance(res, Mapping) else None
    if not isinstance(rows, list) or not rows:
        raise PlotError(f"{source}: no 'results' entries (expected the --output JSON of "
                        "scripts/benchmark_efficiency.py)")
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
