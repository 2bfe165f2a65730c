"""Plain texts: one text per line, a field of a jsonl file or of a Hugging Face dataset, or every text of
the project's STS / retrieval / BEIR sources.

``load_texts`` reads one source; ``corpus_texts`` reads a corpus spec as the command line writes it:

* ``PATH.txt`` or ``text:PATH``: one text per line (blank lines skipped);
* ``text:PATH.jsonl[:FIELD]``: the ``FIELD`` (default ``text``) of every line;
* ``hf:DATASET_ID[:SPLIT[:FIELD]]``: a column of a Hugging Face dataset (default split ``train``, column ``text``);
* ``sts:SOURCE[:SPLIT]``: both sentences of every pair (any source ``load_sts`` reads);
* ``retrieval:SOURCE[:SPLIT]``: query, positive and negatives of every triplet (``load_triplets``);
* ``beir:SOURCE[:SPLIT]`` or a BEIR directory: every document (title + text) and the split's queries.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DataError, file_place, looks_like_local_path, resolve_local
from .sts import parse_json_object, read_lines

KINDS = ("text", "hf", "sts", "retrieval", "beir")


def load_texts(source: str, field: str = "text") -> list[str]:
    """Texts of a local ``.txt`` (one per line) or ``.jsonl`` file (``field`` of each object), in order."""
    path = resolve_local(str(source))
    if path is None:
        raise DataError(f"{source}: file not found: {Path(source).expanduser().resolve()}")
    if path.is_dir():
        raise DataError(f"{path}: a text source is a file (one text per line, or .jsonl with a {field!r} field)")
    lines = read_lines(path)
    texts: list[str] = []
    if path.suffix.lower() == ".jsonl":
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            place = file_place(path, i)
            obj = parse_json_object(place, line)
            if field not in obj:
                raise DataError(f"{place}: no field {field!r} (fields: {', '.join(sorted(obj))})")
            if not isinstance(obj[field], str):
                raise DataError(f"{place}: field {field!r} must be a string, got {type(obj[field]).__name__}")
            texts.append(obj[field])
    else:
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise DataError(f"no examples in {path}: no non-empty text")
    return texts


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
