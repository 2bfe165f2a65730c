"""The one exception the data package raises for bad input (``DataError``, from ``bge_pruning.errors``), and how
it names the place.

Every message names the place the problem is at (at its start, except "no examples in <source>"), so a
user can open the file and fix it:

* a local file line: ``path/to/file.tsv:123: score 'abc' is not a number`` (1-based line numbers);
* a row of a Hugging Face dataset: ``mteb/stsbenchmark-sts[train][17]: empty sentence2``;
* a config key: ``data.train[1].proprtion: unknown key; valid keys: ...``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError  # noqa: F401 - re-exported (old import path)

# Local data files the loaders read; a source ending in one of these is a path, never a hub id.
LOCAL_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".txt")


def file_place(path: str | os.PathLike, line: int) -> str:
    """``path:line`` (1-based) as used at the start of a DataError message."""
    return f"{path}:{line}"


def row_place(dataset_id: str, split: str, index: int) -> str:
    """``dataset_id[split][index]`` (0-based row index) for a row of a Hugging Face dataset."""
    return f"{dataset_id}[{split}][{index}]"


def looks_like_local_path(source: str) -> bool:
    """True when ``source`` can only be meant as a local path (not a hub id like ``mteb/scifact``).

    Hub ids are ``name`` or ``owner/name``; a path has a data-file extension, starts with ``.``, ``/``
    or ``~``, uses a backslash, or has more than one ``/``.
    """
    s = str(source)
    if s.lower().endswith(LOCAL_SUFFIXES):
        return True
    if s.startswith((".", "/", "~")) or "\\" in s or os.sep != "/" and os.sep in s:
        return True
    return s.count("/") > 1


def resolve_local(source: str) -> Path | None:
    """The absolute path of ``source`` when it exists locally (relative to the current directory), else None."""
    p = Path(source).expanduser()
    if p.exists():
        return p.resolve()
    return None
