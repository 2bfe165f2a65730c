#!/usr/bin/env python
"""Export a Composer checkpoint as a verified Hugging Face model directory.

`bge-extract` once installed; the code and its --help: ``bge_pruning.cli.extract``.
"""
import sys

from bge_pruning.cli.extract import EXPORT_DTYPES, QUANTIZE_CHOICES, main  # noqa: F401 - tests read the choices here

if __name__ == "__main__":
    sys.exit(main())
