"""Scored sentence pairs (STS): ``load_sts`` from a local file/directory or a Hugging Face dataset.

Local layouts, told apart by the first non-blank line:

* the STS Benchmark as published (``sts-train.csv``, ``sts-dev.csv``): tab-separated, no header, no quoting
  (sentences contain ``"``), CRLF or LF line endings, columns genre, file, year, id, score, sentence1,
  sentence2, and on some rows two trailing provenance columns, which are ignored;
* a header row naming ``sentence1``, ``sentence2`` and ``score`` (any order, other columns allowed):
  tab-separated without quoting, or comma-separated read with the csv module;
* ``.jsonl``: one ``{"sentence1": str, "sentence2": str, "score": number}`` object per line.

A directory holds one file per split: ``sts-<split>.csv``, ``<split>.tsv``, ``<split>.csv`` or ``<split>.jsonl``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from .errors import DataError, file_place, looks_like_local_path, resolve_local, row_place
from .hub import load_hub_dataset, require_columns

HEADER_COLUMNS = ("sentence1", "sentence2", "score")
STSB_COLUMNS = ("genre", "file", "year", "id", "score", "sentence1", "sentence2")
STSB_PROVENANCE_COLUMNS = 2  # trailing source columns on some STS-B rows, ignored


@dataclass(frozen=True)
class StsPair:
    sentence1: str
    sentence2: str
    score: float


def load_sts(source: str, split: str = "train", max_examples: int | None = None) -> list[StsPair]:
    """Sentence pairs with a similarity score, in source order (the first ``max_examples`` when given).

    ``source``: a local file, a directory with one file per split, or a Hugging Face dataset id with
    ``sentence1``/``sentence2``/``score`` columns (``mteb/stsbenchmark-sts``), read with ``split``.
    Malformed rows raise DataError naming ``file:line`` (or ``id[split][index]``); so does an empty result.
    """
    check_max_examples(max_examples)
    source = str(source)
    path = resolve_local(source)
    if path is not None:
        if path.is_dir():
            path = split_file(path, split)
        label = str(path)
        rows: Iterable[StsPair] = iter_sts_file(path)
    elif looks_like_local_path(source):
        raise DataError(f"{source}: file not found: {Path(source).expanduser().resolve()}")
    else:
        label = f"{source}[{split}]"
        rows = iter_sts_hub(source, split, max_examples)
    pairs = list(islice(rows, max_examples)) if max_examples is not None else list(rows)
    if not pairs:
        why = " (max_examples=0)" if max_examples == 0 else ""
        raise DataError(f"no examples in {label}{why}")
    return pairs


def check_max_examples(max_examples: int | None) -> None:
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 0):
        raise DataError(f"max_examples must be a non-negative integer or None, got {max_examples!r}")


def split_file(directory: Path, split: str) -> Path:
    """The file of ``split`` inside a directory of STS files."""
    names = (f"sts-{split}.csv", f"{split}.tsv", f"{split}.csv", f"{split}.jsonl")
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: no file for split {split!r}; looked for {', '.join(names)}")


def read_lines(path: Path) -> list[str]:
    """The file's lines (UTF-8, BOM dropped, CRLF or LF), without a phantom line after the final newline."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{file_place(path, line)}: not valid UTF-8 ({e.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def iter_sts_file(path: Path) -> Iterator[StsPair]:
    if path.suffix.lower() == ".jsonl":
        yield from iter_sts_jsonl(path)
        return
    lines = read_lines(path)
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        return
    head = lines[first]
    tab_names = [f.strip().lower() for f in head.split("\t")]
    if set(HEADER_COLUMNS) <= set(tab_names):
        yield from iter_sts_header_tsv(path, lines, first, tab_names)
        return
    comma_names = [f.strip().lower() for f in next(csv.reader([head]))]
    if set(HEADER_COLUMNS) <= set(comma_names):
        yield from iter_sts_header_csv(path, lines, first)
        return
    if "\t" in head:
        yield from iter_stsb(path, lines)
        return
    raise DataError(
        f"{file_place(path, first + 1)}: unrecognised layout: expected a header row naming sentence1, "
        "sentence2 and score (tab- or comma-separated), or the STS Benchmark layout (tab-separated "
        f"{', '.join(STSB_COLUMNS)}; no header)"
    )


def make_pair(place: str, s1: Any, s2: Any, score: Any) -> StsPair:
    """A validated pair; ``score`` may be a number or the text of one."""
    for name, s in (("sentence1", s1), ("sentence2", s2)):
        if not isinstance(s, str):
            raise DataError(f"{place}: {name} must be a string, got {type(s).__name__}")
        if not s.strip():
            raise DataError(f"{place}: {name} is empty")
    if isinstance(score, str):
        try:
            value = float(score.strip())
        except ValueError:
            raise DataError(f"{place}: score {score!r} is not a number") from None
    elif isinstance(score, (int, float)) and not isinstance(score, bool):
        value = float(score)
    else:
        raise DataError(f"{place}: score must be a number, got {score!r}")
    if not math.isfinite(value):
        raise DataError(f"{place}: score is {score!r}; it must be a finite number")
    return StsPair(s1, s2, value)


def iter_stsb(path: Path, lines: list[str]) -> Iterator[StsPair]:
    n = len(STSB_COLUMNS)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) not in (n, n + STSB_PROVENANCE_COLUMNS):
            raise DataError(
                f"{file_place(path, i + 1)}: expected {n} tab-separated columns ({', '.join(STSB_COLUMNS)}), "
                f"optionally followed by {STSB_PROVENANCE_COLUMNS} provenance columns; got {len(fields)}"
            )
        yield make_pair(file_place(path, i + 1), fields[5], fields[6], fields[4])


def header_index(path: Path, line: int, names: list[str]) -> dict[str, int]:
    for c in HEADER_COLUMNS:
        if names.count(c) > 1:
            raise DataError(f"{file_place(path, line)}: column {c!r} appears {names.count(c)} times in the header")
    return {c: names.index(c) for c in HEADER_COLUMNS}


def iter_sts_header_tsv(path: Path, lines: list[str], first: int, names: list[str]) -> Iterator[StsPair]:
    idx = header_index(path, first + 1, names)
    for i in range(first + 1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise DataError(f"{file_place(path, i + 1)}: expected {len(names)} tab-separated columns as in the "
                            f"header (line {first + 1}), got {len(fields)}")
        yield make_pair(file_place(path, i + 1), fields[idx["sentence1"]], fields[idx["sentence2"]],
                        fields[idx["score"]])


def iter_sts_header_csv(path: Path, lines: list[str], first: int) -> Iterator[StsPair]:
    reader = csv.reader(io.StringIO("\n".join(lines[first:]) + "\n", newline=""))
    header = [f.strip().lower() for f in next(reader)]
    idx = header_index(path, first + 1, header)
    done = reader.line_num  # physical lines consumed so far
    for fields in reader:
        start = first + done + 1  # 1-based line where this record starts
        done = reader.line_num
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(f"{file_place(path, start)}: expected {len(header)} comma-separated columns as in "
                            f"the header (line {first + 1}), got {len(fields)}")
        yield make_pair(file_place(path, start), fields[idx["sentence1"]], fields[idx["sentence2"]],
                        fields[idx["score"]])


def iter_sts_jsonl(path: Path) -> Iterator[StsPair]:
    for i, line in enumerate(read_lines(path)):
        if not line.strip():
            continue
        place = file_place(path, i + 1)
        obj = parse_json_object(place, line)
        missing = [k for k in HEADER_COLUMNS if k not in obj]
        if missing:
            raise DataError(f"{place}: missing key(s) {missing}; each line needs {list(HEADER_COLUMNS)}")
        yield make_pair(place, obj["sentence1"], obj["sentence2"], obj["score"])


def parse_json_object(place: str, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{place}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{place}: expected a JSON object, got {type(obj).__name__}")
    return obj


def iter_sts_hub(dataset_id: str, split: str, max_examples: int | None) -> Iterator[StsPair]:
    ds = load_hub_dataset(dataset_id, None, split)
    require_columns(ds, HEADER_COLUMNS, f"{dataset_id}[{split}]")
    if max_examples is not None and max_examples < len(ds):
        ds = ds.select(range(max_examples))
    for i, row in enumerate(ds):
        yield make_pair(row_place(dataset_id, split, i), row["sentence1"], row["sentence2"], row["score"])
