"""Plain texts: one text per line, a field of a jsonl file or of a Hugging Face dataset, or every text of
the project's STS / retrieval / BEIR sources.

``load_texts`` reads one file; ``load_text_source`` a ``data.train`` source of ``type: text`` (a file, an STS
file, a BEIR directory or a hub id; see its docstring); ``corpus_texts`` reads a corpus spec as the command
line writes it:

* ``PATH.txt`` or ``text:PATH``: one text per line (blank lines skipped);
* ``text:PATH.jsonl[:FIELD]``: the ``FIELD`` (default ``text``) of every line;
* ``hf:DATASET_ID[:SPLIT[:FIELD]]``: a column of a Hugging Face dataset (default split ``train``, column ``text``);
* ``sts:SOURCE[:SPLIT]``: both sentences of every pair (any source ``load_sts`` reads);
* ``retrieval:SOURCE[:SPLIT]``: query, positive and negatives of every triplet (``load_triplets``);
* ``beir:SOURCE[:SPLIT]`` or a BEIR directory: every document (title + text) and the split's queries.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import DataError, file_place, looks_like_local_path, resolve_local
from .retrieval import BeirSource, jsonl_records, load_beir, query_half, read_corpus
from .sts import parse_json_object, read_lines

KINDS = ("text", "hf", "sts", "retrieval", "beir")


def load_texts(source: str, field: str | Sequence[str] = "text", ids: str | None = None) -> list[str]:
    """Texts of a local ``.txt`` (one per line) or ``.jsonl`` file, in order; blank texts are skipped.

    For ``.jsonl``, ``field`` names the key of each object to read, or several keys whose (non-blank) values are
    joined with a space (``["title", "text"]`` for a BEIR ``corpus.jsonl``); every key must be present and hold
    a string. ``ids`` (``"even"`` / ``"odd"``, jsonl only) keeps the objects whose integer ``_id`` has that parity
    (duplicated texts follow the smallest id: :func:`bge_pruning.data.retrieval.query_half`).
    """
    path = resolve_local(str(source))
    if path is None:
        raise DataError(f"{source}: file not found: {Path(source).expanduser().resolve()}")
    if path.is_dir():
        raise DataError(f"{path}: a text source is a file (one text per line, or .jsonl with a {field!r} field)")
    fields = (field,) if isinstance(field, str) else tuple(field)
    lines = read_lines(path)
    texts: list[str] = []
    if path.suffix.lower() == ".jsonl":
        rows: list[tuple[str, Any, str]] = []  # (place, _id, text)
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            place = file_place(path, i)
            obj = parse_json_object(place, line)
            parts = []
            for f in fields:
                if f not in obj:
                    raise DataError(f"{place}: no field {f!r} (fields: {', '.join(sorted(obj))})")
                if not isinstance(obj[f], str):
                    raise DataError(f"{place}: field {f!r} must be a string, got {type(obj[f]).__name__}")
                parts.append(obj[f])
            if ids is not None and "_id" not in obj:
                raise DataError(f"{place}: no field '_id', which ids: {ids} selects by")
            rows.append((place, obj.get("_id"), " ".join(p for p in parts if p.strip())))
        half = query_half(ids, rows)
        texts = [text for _, qid, text in rows if text and (half is None or str(qid) in half)]
    else:
        if ids is not None:
            raise DataError(f"{path}: ids: {ids} selects by _id, which only a .jsonl file has")
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise DataError(f"no examples in {path}: no non-empty text")
    return texts


STS_SUFFIXES = (".tsv", ".csv")


def load_text_source(source: str, field: str | Sequence[str] | None = None, split: str = "train",
                     ids: str | None = None, max_examples: int | None = None) -> list[str]:
    """The texts of a ``data.train`` source of ``type: text`` (plain texts for label-free distillation), in order.

    * ``.txt`` (any file not named below): one text per line, blank lines skipped;
    * ``.jsonl``: ``field`` (default ``text``; a list joins several, e.g. ``[title, text]``) of each line;
      ``ids: even|odd`` keeps the lines whose integer ``_id`` has that parity;
    * ``.tsv`` / ``.csv``, or a directory of STS split files: both sentences of every pair (any layout
      :func:`bge_pruning.data.load_sts` reads; ``split`` picks the file of a directory);
    * a BEIR directory (``corpus.jsonl``): ``field: corpus`` (default) is every document as ``title + " " + text``;
      ``field: queries`` the queries with qrels in ``split``, filtered by ``ids`` (SciFact's training half:
      ``split: train, ids: odd``);
    * a Hugging Face dataset id: column ``field`` (default ``text``) of ``split``.

    Malformed lines raise DataError naming ``file:line``; a source without any non-blank text raises too. The
    first ``max_examples`` texts when given.
    """
    from .sts import check_max_examples

    check_max_examples(max_examples)
    source = str(source)
    path = resolve_local(source)
    if path is None:
        if looks_like_local_path(source):
            raise DataError(f"{source}: file not found: {Path(source).expanduser().resolve()}")
        if ids is not None:
            raise DataError(f"{source}: ids: {ids} is for a .jsonl file with _id or a BEIR directory's queries")
        if field is not None and not isinstance(field, str):
            raise DataError(f"{source}: field must be one column name for a Hugging Face dataset, got {list(field)}")
        texts = _hub_texts(source, split, field or "text")
    elif path.is_dir() and (path / "corpus.jsonl").is_file():
        texts = _beir_texts(path, field or "corpus", split, ids)
    elif path.is_dir() or path.suffix.lower() in STS_SUFFIXES:
        if field is not None or ids is not None:
            raise DataError(f"{path}: STS pairs give both sentences as texts; field and ids do not apply")
        from .sts import load_sts

        texts = [t for p in load_sts(str(path), split) for t in (p.sentence1, p.sentence2)]
    else:
        if field is not None and path.suffix.lower() != ".jsonl":
            raise DataError(f"{path}: one text per line: field applies to .jsonl files only")
        texts = load_texts(str(path), field or "text", ids)
    if max_examples is not None:
        texts = texts[:max_examples]
    if not texts:
        raise DataError(f"no examples in {source}" + (" (max_examples=0)" if max_examples == 0 else ""))
    return texts


def _beir_texts(path: Path, part: Any, split: str, ids: str | None) -> list[str]:
    if part == "queries":
        _, queries, _ = load_beir(str(path), split, ids)
        return [q for q in queries.values() if q.strip()]
    if part != "corpus":
        raise DataError(f"{path}: a BEIR directory's texts are 'corpus' or 'queries', got field {part!r}")
    if ids is not None:
        raise DataError(f"{path}: ids: {ids} selects queries; set field: queries (documents are not split by id)")
    corpus_file = path / "corpus.jsonl"
    beir = BeirSource(str(path), lambda: jsonl_records(corpus_file), None, None, corpus_name=str(corpus_file))
    return [t for t in read_corpus(beir).values() if t.strip()]


def _hub_texts(dataset_id: str, split: str, field: str) -> list[str]:
    from .hub import load_hub_dataset, require_columns

    ds = load_hub_dataset(dataset_id, split=split)
    require_columns(ds, (field,), f"{dataset_id}[{split}]")
    texts = [t for t in ds[field] if isinstance(t, str) and t.strip()]
    if not texts:
        raise DataError(f"no examples in {dataset_id}[{split}]: column {field!r} has no non-empty text")
    return texts


def parse_corpus_spec(spec: str) -> tuple[str, str, list[str]]:
    """``'sts:data/x.tsv:train'`` -> ``('sts', 'data/x.tsv', ['train'])``; a bare path gets its kind from its form."""
    kind, sep, rest = str(spec).partition(":")
    if sep and kind in KINDS:
        source, *extra = rest.split(":")
        if not source:
            raise DataError(f"corpus {spec!r}: no source after '{kind}:'")
        return kind, source, extra
    path = resolve_local(spec)
    if path is not None and path.is_dir() and (path / "corpus.jsonl").is_file():
        return "beir", spec, []
    if path is not None and path.is_file() and path.suffix.lower() in (".txt", ".jsonl"):
        return "text", spec, []
    if path is None and looks_like_local_path(spec):
        raise DataError(f"corpus {spec!r}: file not found: {Path(spec).expanduser().resolve()}")
    raise DataError(f"corpus {spec!r}: say what it holds with a prefix: {', '.join(k + ':' for k in KINDS)} "
                    "(a .txt file or a BEIR directory needs none)")


def corpus_texts(spec: str) -> list[str]:
    """Every text of one corpus spec (see the module docstring), in source order."""
    kind, source, extra = parse_corpus_spec(spec)
    if kind == "text":
        return load_texts(source, *extra[:1])
    if kind == "hf":
        split = extra[0] if extra else "train"
        return _hub_texts(source, split, extra[1] if len(extra) > 1 else "text")
    if kind == "sts":
        from .sts import load_sts

        return [t for p in load_sts(source, extra[0] if extra else "train") for t in (p.sentence1, p.sentence2)]
    if kind == "retrieval":
        triplets = _all_triplets(source, extra[0] if extra else "train")
        return [t for x in triplets for t in (x.query, x.positive, *x.negatives)]
    from .retrieval import load_beir

    corpus, queries, _ = load_beir(source, extra[0] if extra else "train")
    return list(corpus.values()) + list(queries.values())


def _all_triplets(source: str, split: str):
    """Triplets with every hard negative of a jsonl file (they are text the model sees too)."""
    from .retrieval import iter_jsonl_triplets, load_triplets

    path = resolve_local(source)
    if path is not None and path.is_file() and path.suffix.lower() == ".jsonl":
        triplets = list(iter_jsonl_triplets(path, None))
        if not triplets:
            raise DataError(f"no examples in {path}")
        return triplets
    return load_triplets(source, split)
