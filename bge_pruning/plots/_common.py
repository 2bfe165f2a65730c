"""What every figure shares: an Agg canvas without pyplot, the checked save, the input readers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import PlotError
from ..pruning_info import PRUNING_INFO_FILE  # noqa: F401  (re-exported by bge_pruning.plots)

IMAGE_SUFFIXES = (".png", ".pdf", ".svg")
ZS_KEYS = ("head_z", "intermediate_z", "layer_z")


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


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]
