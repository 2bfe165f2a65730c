#!/usr/bin/env python
"""Print parameter counts of candidate target shapes for a base encoder.

`bge-target-shapes` once installed; the code and its --help: ``bge_pruning.cli.target_shapes``.
"""
import sys

from bge_pruning.cli.target_shapes import main

if __name__ == "__main__":
    sys.exit(main())
