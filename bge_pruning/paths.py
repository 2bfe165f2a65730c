"""Probing output paths before work starts, so a run never learns after hours that it cannot write its result."""
from __future__ import annotations

import tempfile
from pathlib import Path


def unwritable(path: str | Path) -> str | None:
    """Why a file or directory could not be created at ``path``, or None. Missing parent directories are
    fine (they are created on write): the nearest existing ancestor is probed with a temporary file."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        parent = path
    else:
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".probe-"):
            pass
    except OSError as e:
        return f"cannot write in {parent} ({e.strerror or e})"
    return None
