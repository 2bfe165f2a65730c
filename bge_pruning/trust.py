"""Whose code may run when a model directory is loaded.

A ``config.json`` with an ``auto_map`` makes transformers import Python files from the model directory
(``trust_remote_code=True``). The tools never pass that blindly. Remote code is allowed only

* for an export this project wrote: ``pruning_info.json`` beside it, an ``auto_map`` that names only
  ``modeling_pruned.*``, and a ``modeling_pruned.py`` byte-identical to the one this version ships
  (so the code that runs is the project's own), or
* when the user opts in (``model.trust_remote_code: true`` in a run config, ``--trust-remote-code`` on
  the command line).

Anything else that asks for remote code is refused with one line saying how to opt in. Hub ids are
loaded with stock classes only, unless the user opts in: their files cannot be checked before download.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import RemoteCodeError
from .pruning_info import PRUNING_INFO_FILE

MODELING_FILE = "modeling_pruned.py"


def shipped_modeling_source() -> bytes:
    """The modeling file this version of the project copies into its custom-class exports."""
    return (Path(__file__).resolve().parent / "export" / MODELING_FILE).read_bytes()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or unreadable: loading reports it; no remote code is asked for here
    return data if isinstance(data, dict) else {}


def remote_code_references(model_dir: str | Path) -> list[str]:
    """The ``auto_map`` entries (config.json and tokenizer_config.json) that would import code from the directory."""
    refs: list[str] = []
    for name in ("config.json", "tokenizer_config.json"):
        auto_map = _read_json(Path(model_dir) / name).get("auto_map")
        if isinstance(auto_map, dict):
            for value in auto_map.values():
                refs += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    return refs


def is_own_export(model_dir: str | Path) -> bool:
    """True for a directory this project exported: its remote code is exactly the shipped modeling file."""
    model_dir = Path(model_dir)
    refs = remote_code_references(model_dir)
    modeling = model_dir / MODELING_FILE
    return (bool(refs) and (model_dir / PRUNING_INFO_FILE).is_file()
            and all(r.split(".", 1)[0] == MODELING_FILE[:-3] and "--" not in r for r in refs)
            and modeling.is_file() and modeling.read_bytes() == shipped_modeling_source())


def resolve_trust(name_or_path: str, explicit: bool, what: str, opt_in: str) -> bool:
    """The ``trust_remote_code`` value to load ``name_or_path`` with, or RemoteCodeError.

    ``what`` names the place (a config key or argument), ``opt_in`` how the user says yes.
    """
    if explicit:
        return True
    path = Path(str(name_or_path)).expanduser()
    if not path.is_dir():
        return False  # a hub id (or a missing path, which loading reports): stock classes only
    refs = remote_code_references(path)
    if not refs:
        return False
    if is_own_export(path):
        return True
    files = sorted({r.split(".", 1)[0] + ".py" for r in refs})
    why = ("its modeling_pruned.py differs from the one this version of bge_pruning ships"
           if (path / MODELING_FILE).is_file() and (path / PRUNING_INFO_FILE).is_file()
           else "it is not an export written by bge_pruning")
    raise RemoteCodeError(f"{what}: {path} asks to run its own Python code ({', '.join(files)} via auto_map) and "
                          f"{why}; nothing was run. If you trust that code, {opt_in}")
