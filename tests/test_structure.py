"""The package's structural rules, checked mechanically (issue 12, sections 2 and 3).

* One error family: every exception class defined under ``bge_pruning/`` subclasses ``bge_pruning.errors.UserError``
  (entry points catch that one class), except the few in ``NOT_USER_ERRORS``, each with its reason.
* Dependencies point one way: ``data`` and ``models`` never import ``training``, ``export`` or ``benchmarks``
  (read from the source with ``ast``, imports inside functions included); the benchmarks draw plots only from
  inside a function, so their math does not need matplotlib.
* Importing the config parser (and the quality benchmark's driver) does not import torch.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bge_pruning"

# "module.ClassName" -> why it is not a UserError. Keep it short: a class here is one entry points do not catch.
NOT_USER_ERRORS: dict[str, str] = {}

# package -> packages its modules must not import (directly, at any depth of the module)
FORBIDDEN_IMPORTS = {
    "data": ("training", "export", "benchmarks"),
    "models": ("training", "export", "benchmarks"),
}

# modules whose import must not load torch
TORCH_FREE = ("bge_pruning.errors", "bge_pruning.config", "bge_pruning.benchmarks.quality")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> list[tuple[int, str, bool]]:
    """(line, absolute module name, at module level) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:  # from . import x, y: each name may be a submodule
                    names = [f"{names[0]}.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        else:
            continue
        found += [(node.lineno, name, id(node) in top_level) for name in names]
    return found


def _package_files(*subdirs: str) -> list[Path]:
    base = PACKAGE.joinpath(*subdirs)
    files = sorted(base.rglob("*.py"))
    assert files, base
    return files


def test_every_exception_class_is_a_user_error():
    from bge_pruning.errors import UserError

    defined = []
    for path in _package_files():
        source = path.read_text()
        if "class " not in source:
            continue
        # Only modules that define a class with a base are imported (the shipped modeling file included).
        tree = ast.parse(source)
        if not any(isinstance(n, ast.ClassDef) and n.bases for n in ast.walk(tree)):
            continue
        module = importlib.import_module(_module_name(path))
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                defined.append(obj)
    names = {f"{c.__module__}.{c.__qualname__}": c for c in defined}
    # The family is found: a broken walk would pass with nothing to check.
    assert {"bge_pruning.errors.ConfigError", "bge_pruning.errors.ExportError",
            "bge_pruning.errors.BenchmarkError", "bge_pruning.config.DuplicateKeyError"} <= set(names)
    outside = sorted(n for n, c in names.items() if not issubclass(c, UserError) and n not in NOT_USER_ERRORS)
    assert not outside, (f"exception classes outside the UserError family: {outside}; derive them from a class of "
                         "bge_pruning.errors, or list them in NOT_USER_ERRORS with the reason")
    stale = sorted(set(NOT_USER_ERRORS) - set(names))
    assert not stale, f"NOT_USER_ERRORS lists classes that no longer exist: {stale}"


def test_scripts_define_no_exception_classes():
    """Errors of the entry points live in bge_pruning.errors too, so the family above sees them."""
    offenders = []
    for path in sorted([ROOT / "train.py", *(ROOT / "scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(b).endswith(("Error", "Exception")) for b in node.bases):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}")
    assert not offenders, offenders


def test_old_exception_imports_still_work():
    """The classes moved to bge_pruning.errors stay importable from the modules that raised them first."""
    import bge_pruning.errors as errors

    old = {"bge_pruning.models.l0_module": "ConfigError", "bge_pruning.config": "ConfigError",
           "bge_pruning.data": "DataError", "bge_pruning.data.errors": "DataError",
           "bge_pruning.evaluation.encoder": "ModelDirError", "bge_pruning.models.loading": "ModelLoadError",
           "bge_pruning.training.checkpoint": "CheckpointError", "bge_pruning.export": "ExportError",
           "bge_pruning.export.verify": "ExportError", "bge_pruning.training.callbacks": "NonFiniteLossError",
           "bge_pruning.plots": "PlotError", "bge_pruning.benchmarks.efficiency": "BenchmarkError",
           "bge_pruning.benchmarks.quality": "BenchmarkError", "bge_pruning.trust": "RemoteCodeError"}
    for module, name in old.items():
        assert getattr(importlib.import_module(module), name) is getattr(errors, name), (module, name)
    from bge_pruning.training.callbacks import TrainingOutOfMemoryError

    assert TrainingOutOfMemoryError is errors.TrainingOutOfMemoryError
    # The built-in bases callers catch them by are kept.
    for name, base in (("ConfigError", ValueError), ("DataError", ValueError), ("ModelDirError", ValueError),
                       ("ModelLoadError", RuntimeError), ("CheckpointError", RuntimeError),
                       ("ExportError", RuntimeError), ("NonFiniteLossError", FloatingPointError),
                       ("TrainingOutOfMemoryError", RuntimeError), ("PlotError", ValueError),
                       ("BenchmarkError", ValueError), ("SpecError", ValueError), ("RemoteCodeError", ValueError)):
        assert issubclass(getattr(errors, name), errors.UserError) and issubclass(getattr(errors, name), base), name
    import yaml

    from bge_pruning.config import DuplicateKeyError

    assert issubclass(DuplicateKeyError, errors.ConfigError) and issubclass(DuplicateKeyError, yaml.YAMLError)


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_dependencies_point_one_way(package):
    bad = []
    for path in _package_files(package):
        for line, name, _ in _imported_modules(path):
            parts = name.split(".")
            if parts[0] == "bge_pruning" and len(parts) > 1 and parts[1] in FORBIDDEN_IMPORTS[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not bad, f"bge_pruning.{package} must not import {', '.join(FORBIDDEN_IMPORTS[package])}: {bad}"


def test_import_resolution_sees_relative_imports():
    """The check above reads relative imports right (else it could never fail)."""
    found = {name for _, name, _ in _imported_modules(PACKAGE / "models" / "composer_bge_m3.py")}
    assert "bge_pruning.models.losses" in found and "bge_pruning.vocab" in found
    found = {name for _, name, _ in _imported_modules(PACKAGE / "training" / "losses.py")}
    assert found == {"bge_pruning.models.losses"}


def test_benchmarks_draw_plots_only_inside_functions():
    top = [f"{path.relative_to(ROOT)}:{line}" for path in _package_files("benchmarks")
           for line, name, module_level in _imported_modules(path)
           if module_level and name.startswith("bge_pruning.plots")]
    assert not top, f"the benchmark math must not need plots (matplotlib): {top}"


def test_importing_the_config_parser_does_not_import_torch():
    """(load_config itself checks durations with Composer's ensure_time, which loads torch when it runs.)"""
    code = ("import sys\n"
            f"for name in {TORCH_FREE!r}:\n"
            "    __import__(name)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'composer') if m in sys.modules))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def _ruff() -> str | None:
    """The ruff of this environment (next to its python, as `make install` puts it), else one on PATH."""
    beside = Path(sys.executable).parent / "ruff"
    return str(beside) if beside.is_file() else shutil.which("ruff")


def test_ruff_is_clean():
    """`make lint`: ruff with pyproject.toml's rules reports nothing on the whole repository."""
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the dev extra of requirements.lock; `make install` installs it)")
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ruff check . found problems:\n{proc.stdout}{proc.stderr}"
