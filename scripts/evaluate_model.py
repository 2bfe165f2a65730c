#!/usr/bin/env python
"""Evaluate a model directory (optionally against a baseline) on STS, retrieval and MTEB tasks.

`bge-evaluate` once installed; the code and its --help: ``bge_pruning.cli.evaluate``.
"""
import sys

from bge_pruning.cli.evaluate import PARAMS, TaskData, TaskSpec, assign_labels, main, parse_task_spec  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
