"""The task grammar of ``bge-evaluate`` / ``scripts/evaluate_model.py --tasks``: ``PREFIX:ARGUMENT[:split]``.

Prefixes: ``sts`` (an STS file or hub dataset), ``paraphrase`` (STS pairs as paraphrase retrieval),
``retrieval`` (a BEIR directory or hub dataset) and ``mteb`` (an mteb task name, or a local STS file / BEIR
directory run through mteb). ``parse_task_spec`` checks a spec without loading anything heavy, so a typo is one
line before any model loads; ``TaskData`` loads each task's data once for the model and its baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError

PREFIXES = ("sts", "paraphrase", "retrieval", "mteb")
DEFAULT_SPLIT = "test"


@dataclass
class TaskSpec:
    spec: str
    kind: str
    source: str
    split: str | None
    label: str = ""


def parse_task_spec(spec: str) -> TaskSpec:
    """``PREFIX:ARGUMENT[:split]`` -> TaskSpec; SpecError for an unknown prefix or a missing local path."""
    from ..data.errors import looks_like_local_path, resolve_local

    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in PREFIXES or not rest.strip():
        raise SpecError(f"bad task spec {spec!r}: expected PREFIX:ARGUMENT with PREFIX one of "
                        f"{', '.join(PREFIXES)} (e.g. sts:data/sts-dev.csv, retrieval:data/scifact:test, "
                        "mteb:STSBenchmark)")
    source, split = rest, None
    if resolve_local(rest) is None and ":" in rest:
        head, _, tail = rest.rpartition(":")
        if head and tail and "/" not in tail:
            source, split = head, tail
    if resolve_local(source) is None and looks_like_local_path(source):
        kind = "directory" if prefix == "retrieval" else "file or directory"
        raise SpecError(f"task {spec!r}: {kind} not found: {Path(source).expanduser().resolve()}")
    if prefix == "retrieval" and resolve_local(source) is not None and not Path(source).expanduser().is_dir():
        raise SpecError(f"task {spec!r}: {source} is not a directory (a BEIR source is a directory with "
                        "corpus.jsonl, queries.jsonl and qrels/<split>.tsv)")
    return TaskSpec(spec=spec, kind=prefix, source=source, split=split)


def assign_labels(specs: list[TaskSpec]) -> None:
    """Short unique labels for the table: ``kind:name[:split]``."""
    seen: dict[str, int] = {}
    for t in specs:
        name = Path(t.source).name or t.source
        label = f"{t.kind}:{name}" + (f":{t.split}" if t.split else "")
        if label in seen:
            seen[label] += 1
            label = f"{label}#{seen[label]}"
        else:
            seen[label] = 1
        t.label = label


class TaskData:
    """Loads each task's data once, for both models."""

    def __init__(self, max_examples: int | None) -> None:
        self.max_examples = max_examples
        self._cache: dict[str, object] = {}

    def get(self, t: TaskSpec):
        if t.spec not in self._cache:
            self._cache[t.spec] = self._load(t)
        return self._cache[t.spec]

    def _load(self, t: TaskSpec):
        from ..data import load_beir, load_sts
        from .retrieval import paraphrase_retrieval_from_sts

        split = t.split or DEFAULT_SPLIT
        if t.kind == "sts":
            return load_sts(t.source, split, max_examples=self.max_examples)
        if t.kind == "paraphrase":
            return paraphrase_retrieval_from_sts(load_sts(t.source, split, max_examples=self.max_examples))
        if t.kind == "retrieval":
            corpus, queries, qrels = load_beir(t.source, split)
            if self.max_examples is not None:
                keep = [q for q in qrels if q in queries][: self.max_examples]
                qrels = {q: qrels[q] for q in keep}
                queries = {q: queries[q] for q in keep}
            return corpus, queries, qrels
        return None  # mteb: the task loads its own data

    def mteb_task(self, t: TaskSpec):
        """The mteb task object of an ``mteb:`` spec (built once; SpecError for an unknown task name)."""
        from .mteb_wrapper import resolve_task

        key = "mteb-task:" + t.spec
        if key not in self._cache:
            try:
                self._cache[key] = resolve_task(t.source, split=t.split, max_examples=self.max_examples)
            except (ValueError, FileNotFoundError) as e:
                raise SpecError(f"task {t.spec!r}: {e}") from None
        return self._cache[key]
