"""The ``--tasks`` grammar of the evaluation command (bge_pruning.evaluation.tasks)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bge_pruning.errors import SpecError
from bge_pruning.evaluation.tasks import TaskData, TaskSpec, assign_labels, parse_task_spec

ROOT = Path(__file__).resolve().parents[1]


def test_specs_labels_and_one_load_per_task(tmp_path):
    sts = tmp_path / "pairs.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"a{i}\tb{i}\t{i % 5}\n" for i in range(7)))
    specs = [parse_task_spec(f"sts:{sts}"), parse_task_spec(f"paraphrase:{sts}"), parse_task_spec(f"sts:{sts}"),
             parse_task_spec("retrieval:org/beir-set:dev")]
    assert [(s.kind, s.source, s.split) for s in specs] == [
        ("sts", str(sts), None), ("paraphrase", str(sts), None), ("sts", str(sts), None),
        ("retrieval", "org/beir-set", "dev")]
    assign_labels(specs)
    assert [s.label for s in specs] == ["sts:pairs.tsv", "paraphrase:pairs.tsv", "sts:pairs.tsv#2",
                                        "retrieval:beir-set:dev"]
    data = TaskData(max_examples=3)
    pairs = data.get(specs[0])
    assert len(pairs) == 3 and data.get(specs[0]) is pairs  # read once, cut to --max-examples
    assert data.get(specs[2]) is pairs  # the same spec twice (two labels) is read once too
    with pytest.raises(SpecError, match="bad task spec 'nli:x'"):
        parse_task_spec("nli:x")
    with pytest.raises(SpecError, match="is not a directory"):
        parse_task_spec(f"retrieval:{sts}")
    assert isinstance(specs[0], TaskSpec)


def test_the_grammar_loads_nothing_heavy():
    """A bad spec is reported before torch (and the models) load: importing the grammar imports no torch."""
    code = ("import sys; import bge_pruning.evaluation.tasks, bge_pruning.cli.evaluate; "
            "print(sorted(m for m in ('torch', 'transformers', 'mteb') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout, not whichever one is installed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_command_and_the_script_use_this_grammar():
    import bge_pruning.cli.evaluate as cli
    import bge_pruning.evaluation.tasks as tasks

    assert cli.parse_task_spec is tasks.parse_task_spec and cli.TaskData is tasks.TaskData
