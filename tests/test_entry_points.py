"""The console commands of pyproject.toml's ``[project.scripts]`` and the ``python scripts/X.py`` / ``python train.py``
wrappers that run the same ``main()``."""
from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# Each documented command and the file users ran before the package had console scripts.
WRAPPERS = {
    "bge-train": "train.py",
    "bge-extract": "scripts/extract_pruned_model.py",
    "bge-evaluate": "scripts/evaluate_model.py",
    "bge-benchmark-efficiency": "scripts/benchmark_efficiency.py",
    "bge-benchmark-quality": "scripts/benchmark_quality.py",
    "bge-gpu-prune-check": "scripts/gpu_prune_check.py",
    "bge-plot": "scripts/plot.py",
    "bge-target-shapes": "scripts/target_shapes.py",
    "bge-prune-vocab": "scripts/prune_vocab.py",
}


def declared() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def target(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_file(relpath: str):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location("wrapper_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_documented_command_is_declared_and_importable():
    scripts = declared()
    assert set(scripts) == set(WRAPPERS)
    for name, spec in scripts.items():
        assert callable(target(spec)), name
        assert spec.split(":")[0].startswith("bge_pruning."), (name, spec)  # inside the package, not in scripts/
    # The installed metadata (`make install`, an editable install) names the same targets once it was installed
    # from this pyproject.toml; an older install without them is reinstalled by `make install`.
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
                 if ep.dist is not None and ep.dist.name.replace("-", "_") == "bge_pruning"}
    if installed:
        assert installed == scripts
        for ep in importlib.metadata.entry_points(group="console_scripts"):
            if ep.name in installed:
                assert ep.load() is target(scripts[ep.name])


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_runs_the_entry_point_main(name):
    """``python scripts/X.py`` calls the very function ``bge-X`` calls, and puts nothing on sys.path."""
    module = load_file(WRAPPERS[name])
    assert module.main is target(declared()[name])
    tree = ast.parse((ROOT / WRAPPERS[name]).read_text())
    assert "sys.path" not in ast.unparse(tree)
    assert len([n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]) == 0, "logic in a wrapper"


def test_no_script_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for p in [ROOT / "train.py", *sorted((ROOT / "scripts").glob("*.py"))]
                 if "sys.path" in ast.unparse(ast.parse(p.read_text()))]
    assert not offenders


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_help_of_each_command(name, capsys, monkeypatch):
    """``bge-X --help`` prints a usage line and exits 0 (console scripts call ``main()`` with sys.argv)."""
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as stop:
        target(declared()[name])()
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}"), out[:200]
