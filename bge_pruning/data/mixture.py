"""A deterministic mixture of sources as a dataset of whole batches, and the training DataLoader.

``MixtureBatches`` plans the whole sequence at construction (cheap: indices only) and tokenizes a batch
when it is read. Plan, from ``seed``:

1. each source's examples are shuffled with a generator seeded by (seed, crc32(name), cycle);
2. each shuffle is cut into batches of ``batch_size`` (the incomplete last one dropped);
3. sources are interleaved by smooth weighted round-robin: step t takes the source whose share so far is
   furthest below its proportion (ties: the earlier source), so 0.75/0.25 gives A A B A, A A B A, ...;
4. the sequence stops just before any source would repeat a batch, or, when ``num_batches`` is given, it is
   exactly that long, a source that runs out starting a new cycle with a fresh seeded shuffle.

With ``group`` G > 1 (the world size of a multi-process run), step 3 chooses a source for each run of G
consecutive batches, which then all come from it: rank r of G reads batches r, r + G, ... (a non-shuffling
DistributedSampler), so in every optimizer step all ranks train on the same source (the same task, the same
loss terms: Composer all-reduces the loss parts by name, and ranks with different parts would deadlock).
G = 1 is the single-process plan.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .collate import PairCollator, TextCollator, TripletCollator
from .config import parse_data_config
from .errors import DataError
from .retrieval import load_triplets
from .sts import load_sts
from .text import load_text_source


@dataclass(frozen=True)
class MixtureSource:
    """A named list of examples, the collator that batches them, and its share of the batches."""
    name: str
    examples: Sequence[Any]
    collate: Callable[[list], dict]
    proportion: float = 1.0


class MixtureBatches(Dataset):
    """Map-style dataset whose item i is the i-th collated batch, from one source, with ``"source": name``."""

    def __init__(self, sources: Sequence[MixtureSource], batch_size: int, seed: int,
                 num_batches: int | None = None, group: int = 1) -> None:
        if not sources:
            raise ValueError("MixtureBatches: no sources")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"MixtureBatches: batch_size must be a positive integer, got {batch_size!r}")
        if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                        or num_batches < 1):
            raise ValueError(f"MixtureBatches: num_batches must be a positive integer or None, got {num_batches!r}")
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"MixtureBatches: group must be a positive integer, got {group!r}")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"MixtureBatches: source names must be unique, got {names}")
        for s in sources:
            if isinstance(s.proportion, bool) or not isinstance(s.proportion, (int, float)) \
                    or not math.isfinite(s.proportion) or s.proportion <= 0:
                raise ValueError(f"MixtureBatches: source {s.name!r}: proportion must be positive, "
                                 f"got {s.proportion!r}")
            if len(s.examples) < batch_size:
                raise DataError(f"source {s.name!r}: {len(s.examples)} example(s), fewer than one batch "
                                f"(batch_size {batch_size})")
        self.sources = list(sources)
        self.batch_size = batch_size
        self.seed = int(seed)
        total = sum(float(s.proportion) for s in sources)
        self.shares = [float(s.proportion) / total for s in sources]
        self.batches_per_cycle = [len(s.examples) // batch_size for s in sources]
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self.group = group
        self.plan = self._make_plan(num_batches)  # [(source index, cycle, batch index in cycle)]
        if not self.plan:
            raise DataError(f"sources {names}: fewer than {group} batches (one per process) in every source "
                            f"(batch_size {batch_size}); use fewer processes or a smaller train.batch_size")

    def _make_plan(self, num_batches: int | None) -> list[tuple[int, int, int]]:
        counts = [0] * len(self.sources)  # batches taken per source
        steps = [0] * len(self.sources)  # runs of ``group`` batches taken per source
        plan: list[tuple[int, int, int]] = []
        t = 0
        while num_batches is None or len(plan) < num_batches:
            deficits = [share * (t + 1) - c for share, c in zip(self.shares, steps)]
            best = max(deficits)
            k = next(i for i, d in enumerate(deficits) if d >= best - 1e-9)
            run = [divmod(counts[k] + j, self.batches_per_cycle[k]) for j in range(self.group)]
            if num_batches is None and run[-1][0] > 0:
                break  # source k would repeat: one epoch of the mixture ends here
            plan.extend((k, cycle, b) for cycle, b in run)
            counts[k] += self.group
            steps[k] += 1
            t += 1
        return plan if num_batches is None else plan[:num_batches]

    def _perm(self, k: int, cycle: int) -> np.ndarray:
        key = (k, cycle)
        if key not in self._perms:
            src = self.sources[k]
            entropy = [self.seed & 0xFFFFFFFFFFFFFFFF, zlib.crc32(src.name.encode("utf-8")), cycle]
            self._perms[key] = np.random.default_rng(entropy).permutation(len(src.examples))
        return self._perms[key]

    def __len__(self) -> int:
        return len(self.plan)

    def batch_indices(self, i: int) -> tuple[str, list[int]]:
        """(source name, example indices) of batch ``i``, without collating."""
        k, cycle, b = self.plan[i]
        idx = self._perm(k, cycle)[b * self.batch_size:(b + 1) * self.batch_size]
        return self.sources[k].name, idx.tolist()

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"MixtureBatches: index {i} out of range ({len(self)} batches)")
        name, idx = self.batch_indices(i)
        src = self.sources[self.plan[i][0]]
        batch = dict(src.collate([src.examples[j] for j in idx]))
        batch["source"] = name
        return batch


def build_sources(data_cfg: Any, tokenizer: Any) -> list[MixtureSource]:
    """Load every ``data.train`` source (validated first, so config errors come before any loading)."""
    max_length, specs = parse_data_config(data_cfg)
    sources = []
    for s in specs:
        if s.type == "sts":
            examples: list = load_sts(s.source, s.split, s.max_examples)
            collate: Callable = PairCollator(tokenizer, max_length)
        elif s.type == "text":
            examples = load_text_source(s.source, s.field, s.split, s.ids, s.max_examples)
            collate = TextCollator(tokenizer, max_length)
        else:
            examples = load_triplets(s.source, s.split, s.n_negatives, s.max_examples, s.ids)
            collate = TripletCollator(tokenizer, max_length, s.n_negatives)
        sources.append(MixtureSource(s.name, examples, collate, s.proportion))
    return sources


def build_train_dataloader(data_cfg: Any, tokenizer: Any, batch_size: int, seed: int,
                           num_batches: int | None = None) -> DataLoader:
    """DataLoader over ``MixtureBatches`` (items are whole batches: ``batch_size=None``, ``num_workers=0``).

    ``batch_size`` is the examples per batch on each rank. Under ``torch.distributed`` with world size W > 1 the
    sampler is ``DistributedSampler(shuffle=False)`` (rank r gets batches r, r + W, ...) over a plan whose
    runs of W batches share a source (``group=W``), else sequential.
    """
    world = torch.distributed.get_world_size() if torch.distributed.is_available() \
        and torch.distributed.is_initialized() else 1
    dataset = MixtureBatches(build_sources(data_cfg, tokenizer), batch_size, seed, num_batches, group=world)
    if world > 1:
        sampler: Any = DistributedSampler(dataset, shuffle=False)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=0)


def num_samples_in_batch(batch: dict[str, Any]) -> int:
    """Examples in a collated batch (pairs, queries or texts).

    For Composer's ``DataSpec(get_num_samples_in_batch=...)``.
    """
    if batch.get("task") == "sts":
        return int(batch["scores"].shape[0])
    if batch.get("task") == "retrieval":
        return int(batch["query"]["input_ids"].shape[0])
    if batch.get("task") == "text":
        return int(batch["texts"]["input_ids"].shape[0])
    raise ValueError(f"not a collated batch (task {batch.get('task')!r})")
