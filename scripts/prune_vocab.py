#!/usr/bin/env python
"""Trim a model's vocabulary to the tokens a corpus uses.

`bge-prune-vocab` once installed; the code and its --help: ``bge_pruning.cli.prune_vocab``.
"""
import sys

from bge_pruning.cli.prune_vocab import main

if __name__ == "__main__":
    sys.exit(main())
