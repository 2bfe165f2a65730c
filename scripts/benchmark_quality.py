#!/usr/bin/env python
"""Quality benchmark v2 (bge_pruning.benchmarks.quality): L0 uniform / global vs layer-drop vs the base model,
scored on STS-B dev and on SciFact claims no run trains on. ``--help`` for the options."""
from __future__ import annotations

import sys

from bge_pruning.benchmarks.quality import main

if __name__ == "__main__":
    sys.exit(main())
