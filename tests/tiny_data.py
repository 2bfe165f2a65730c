"""Synthetic scored pairs for mechanics tests: the score is the honest word-overlap (Jaccard x 5)."""
from __future__ import annotations

import random
from pathlib import Path

from tiny_models import WORDS


def write_overlap_pairs(path: Path, n: int = 256, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = ["sentence1\tsentence2\tscore"]
    for _ in range(n):
        a = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        b = [w if rng.random() < rng.random() else rng.choice(WORDS) for w in a]
        score = 5 * len(set(a) & set(b)) / len(set(a) | set(b))
        lines.append(f"{' '.join(a)}.\t{' '.join(b)}.\t{score:.2f}")
    path.write_text("\n".join(lines) + "\n")
    return path
