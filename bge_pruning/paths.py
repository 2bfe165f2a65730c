"""Probing output paths before work starts, so a run never learns after hours that it cannot write its result."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def nearest_existing(path: str | Path) -> Path:
    """``path`` itself when it is a directory, else its nearest existing ancestor (where a write would land)."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        return path
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    return parent


def too_little_space(path: str | Path, needed: int) -> str | None:
    """Why ``needed`` bytes could not be written at ``path`` (5% and 50 MiB of headroom), or None."""
    parent = nearest_existing(path)
    free = shutil.disk_usage(parent).free
    if free < needed * 1.05 + 50 * 2**20:
        return f"the weights need {needed / 2**20:.0f} MiB, {parent} has {free / 2**20:.0f} MiB free"
    return None


def unwritable(path: str | Path) -> str | None:
    """Why a file or directory could not be created at ``path``, or None. Missing parent directories are
    fine (they are created on write): the nearest existing ancestor is probed with a temporary file."""
    parent = nearest_existing(path)
    if not parent.is_dir():
        return f"{parent} is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".probe-"):
            pass
    except OSError as e:
        return f"cannot write in {parent} ({e.strerror or e})"
    return None
