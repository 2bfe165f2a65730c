"""Replacing an export never leaves the path without a model, and a killed export's leftovers are recovered."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bge_pruning.export.install import exchange, recover_leftovers

EXPORT = textwrap.dedent("""
    import os, sys
    from bge_pruning.export import export_pruned_model
    from bge_pruning.export import install
    from bge_pruning.models.loading import load_hf_model
    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    base, out, note, kill = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    if kill == "after_exchange":  # die right after the atomic swap, before the old export is deleted
        install.TempExportDir.release = lambda self, remove: os._exit(9) if remove else None
    elif kill == "between_renames":  # no exchange on this system; die between moving the old out and the new in
        install.exchange = lambda a, b: False
        import bge_pruning.export.hf_export as hf
        real, calls = os.replace, []
        def replace(a, b):
            if os.path.abspath(out) in (os.path.abspath(a), os.path.abspath(b)):
                calls.append((a, b))  # 1: old export aside, 2: new export in
                if len(calls) == 2:
                    os._exit(9)
            return real(a, b)
        hf.os.replace = replace
    hf_model, tok = load_hf_model(base)
    export_pruned_model(MaskedBGEM3Backbone.from_hf_model(hf_model), out, tok, None, info={"note": note},
                        overwrite=True)
""")


def _export(base: Path, out: Path, note: str, kill: str = "none") -> int:
    return subprocess.run([sys.executable, "-c", EXPORT, str(base), str(out), note, kill], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1]).returncode


def _note(out: Path) -> str:
    return json.loads((out / "pruning_info.json").read_text())["note"]


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("new")
    (b / "y").write_text("old")
    if not exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the two-rename fallback is tested below")
    assert (b / "x").read_text() == "new" and (a / "y").read_text() == "old"


@pytest.mark.slow
def test_kill_after_exchange_leaves_the_new_export_and_recovery_cleans_up(tmp_path, tiny_xlmr_path):
    out = tmp_path / "model"
    assert _export(tiny_xlmr_path, out, "first") == 0
    assert _export(tiny_xlmr_path, out, "second", kill="after_exchange") == 9
    assert _note(out) == "second"  # the path held a whole model throughout: now the new one
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".model.export-tmp-") and p.is_dir()]
    assert len(leftovers) == 1 and _note(leftovers[0]) == "first"  # the old export, not yet deleted
    messages = recover_leftovers(out)
    assert len(messages) == 1 and "temporary files of an interrupted export" in messages[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.slow
def test_kill_between_renames_is_restored(tmp_path, tiny_xlmr_path):
    out = tmp_path / "model"
    assert _export(tiny_xlmr_path, out, "first") == 0
    assert _export(tiny_xlmr_path, out, "second", kill="between_renames") == 9
    assert not out.exists()  # the window the fallback has; recovery closes it
    messages = recover_leftovers(out)
    assert any(m.startswith("restored the previous export") for m in messages)
    assert any("temporary files of an interrupted export" in m for m in messages)
    assert _note(out) == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_live_exports_temporary_directory_is_left_alone(tmp_path):
    from bge_pruning.export.install import TempExportDir

    out = tmp_path / "model"
    held = TempExportDir(out)
    (held.path / "model.safetensors").write_bytes(b"partial")
    assert recover_leftovers(out) == [] and held.path.exists()
    held.release(remove=False)  # its process is gone (lock released): now it is a leftover
    assert len(recover_leftovers(out)) == 1 and not held.path.exists()
