"""Turning lists of examples into model-ready batches (padding to the longest text in the batch).

Batch layouts (tensors are CPU; the trainer moves them):

* STS: ``{"task": "sts", "a": enc, "b": enc, "scores": float32[B]}``;
* text: ``{"task": "text", "texts": enc}`` (plain texts, no labels: teacher distillation only);
* retrieval: ``{"task": "retrieval", "query": enc, "passages": enc, "n_passages_per_query": 1 + n}`` where
  ``passages`` holds, per query in order, its positive then its ``n`` negatives (query i's positive is row
  ``i * (1 + n)``);

with ``enc = {"input_ids": long[N, T], "attention_mask": long[N, T]}``. No ``token_type_ids``: XLM-R has a
single token type and BERT's default zeros are what the model uses without them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .retrieval import Triplet
from .sts import StsPair

CHARS_PER_TOKEN_CAP = 64  # characters kept per allowed token before tokenizing (see _Encoder.encode)


class _Encoder:
    def __init__(self, tokenizer: Any, max_length: int) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # Truncation to max_length tokens happens after tokenizing the whole text: cap the characters first,
        # at far more than max_length tokens ever span, so a 5 MB line costs microseconds, not a minute.
        cap = CHARS_PER_TOKEN_CAP * self.max_length
        texts = [t[:cap] for t in texts]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_token_type_ids=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class PairCollator(_Encoder):
    """``list[StsPair]`` -> ``{"task": "sts", "a", "b", "scores"}``."""

    def __call__(self, pairs: Sequence[StsPair]) -> dict[str, Any]:
        if not pairs:
            raise ValueError("PairCollator: empty batch")
        return {
            "task": "sts",
            "a": self.encode([p.sentence1 for p in pairs]),
            "b": self.encode([p.sentence2 for p in pairs]),
            "scores": torch.tensor([p.score for p in pairs], dtype=torch.float32),
        }


class TextCollator(_Encoder):
    """``list[str]`` -> ``{"task": "text", "texts"}``: single texts for label-free distillation."""

    def __call__(self, texts: Sequence[str]) -> dict[str, Any]:
        if not texts:
            raise ValueError("TextCollator: empty batch")
        return {"task": "text", "texts": self.encode(list(texts))}


class TripletCollator(_Encoder):
    """``list[Triplet]`` -> ``{"task": "retrieval", "query", "passages", "n_passages_per_query"}``;
    each triplet contributes its positive and its first ``n_negatives`` negatives."""

    def __init__(self, tokenizer: Any, max_length: int, n_negatives: int = 0) -> None:
        super().__init__(tokenizer, max_length)
        if isinstance(n_negatives, bool) or not isinstance(n_negatives, int) or n_negatives < 0:
            raise ValueError(f"n_negatives must be a non-negative integer, got {n_negatives!r}")
        self.n_negatives = n_negatives

    def __call__(self, triplets: Sequence[Triplet]) -> dict[str, Any]:
        if not triplets:
            raise ValueError("TripletCollator: empty batch")
        passages: list[str] = []
        for i, t in enumerate(triplets):
            if len(t.negatives) < self.n_negatives:
                raise ValueError(f"TripletCollator: triplet {i} has {len(t.negatives)} negative(s), "
                                 f"n_negatives is {self.n_negatives}")
            passages.append(t.positive)
            passages.extend(t.negatives[: self.n_negatives])
        return {
            "task": "retrieval",
            "query": self.encode([t.query for t in triplets]),
            "passages": self.encode(passages),
            "n_passages_per_query": 1 + self.n_negatives,
        }

