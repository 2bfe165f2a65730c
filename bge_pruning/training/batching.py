"""How Composer counts and splits our batches (dicts of tokenized groups)."""
from __future__ import annotations

from typing import Any

from ..data import num_samples_in_batch


def _rows(tokens: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] for k, v in tokens.items()}


def split_batch(batch: dict[str, Any], microbatch_size: int | float) -> list[dict[str, Any]]:
    """Split a batch into microbatches of ``microbatch_size`` examples (pairs, texts, or queries with their passages).

    In-batch negatives are then drawn from the microbatch: a smaller microbatch sees fewer negatives.
    """
    size = int(microbatch_size)
    n = num_samples_in_batch(batch)
    out = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        if batch["task"] == "sts":
            mb = {"task": "sts", "a": _rows(batch["a"], start, stop), "b": _rows(batch["b"], start, stop),
                  "scores": batch["scores"][start:stop]}
        elif batch["task"] == "text":
            mb = {"task": "text", "texts": _rows(batch["texts"], start, stop)}
        else:
            k = int(batch["n_passages_per_query"])
            mb = {"task": "retrieval", "query": _rows(batch["query"], start, stop),
                  "passages": _rows(batch["passages"], start * k, stop * k), "n_passages_per_query": k}
        for key in batch:
            mb.setdefault(key, batch[key])
        out.append(mb)
    return out
