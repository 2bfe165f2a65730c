#!/usr/bin/env python
"""Prune (or finetune) a BERT-family sentence encoder toward a target shape: python train.py CONFIG.

`bge-train` once installed; the code and its --help: ``bge_pruning.cli.train``.
"""
import sys

from bge_pruning.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
