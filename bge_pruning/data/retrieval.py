"""Query/passage data: ``load_triplets`` for training and ``load_beir`` for evaluation.

Sources:

* a local ``.jsonl`` file of ``{"query": str, "pos": str | [str, ...], "neg": [str, ...]}`` (``neg`` optional):
  one Triplet per positive, with the first ``n_negatives`` negatives;
* a local BEIR directory: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``)
  and ``qrels/<split>.tsv`` (header ``query-id corpus-id score``);
* the Hugging Face ``ms_marco`` dataset (config ``v1.1``): positive = selected passage, negatives = the others;
* any other Hugging Face id (``mteb/<task>``): the BEIR layout as configs ``corpus``, ``queries`` and the
  default config holding the qrels splits.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from .errors import DataError, file_place, looks_like_local_path, resolve_local, row_place
from .hub import load_hub_dataset, require_columns
from .sts import check_max_examples, parse_json_object, read_lines

log = logging.getLogger(__name__)

MSMARCO_IDS = ("ms_marco", "microsoft/ms_marco")
MSMARCO_HUB_ID = "microsoft/ms_marco"
MSMARCO_CONFIG = "v1.1"
QRELS_HEADER = ("query-id", "corpus-id", "score")
HUB_BATCH = 10_000


@dataclass(frozen=True)
class Triplet:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()


ID_RULES = ("even", "odd")


def query_half(ids: str | None, records: Iterable[tuple[str, Any, str]],
               links: Iterable[tuple[str, str]] = ()) -> set[str] | None:
    """The query ids that the fixed holdout rule ``ids`` keeps, from ``(place, id, text)`` of EVERY query.

    ``"even"`` / ``"odd"`` keep the queries whose integer id has that parity, except that queries that are
    related go together, with the smallest id among them deciding the side: queries with the same text
    (whitespace and case aside; SciFact's train claims 85/86 and 89/90), and queries linked through a shared
    relevant document (``links``: ``(query id, document id)`` of the positive qrels). Without the second rule a
    scored query's relevant document is the trained positive of its neighbour: SciFact pairs most claims with a
    negated or number-changed twin that cites the same abstract (claims 10 and 11, 26 and 27), and id parity alone
    put 234 of its 413 even claims next to a trained claim with the same relevant abstract. The halves are
    disjoint, together hold every query, and share no relevant document. None (no rule) returns None. A
    non-integer id is a DataError at its place.
    """
    if ids is None:
        return None
    if ids not in ID_RULES:
        raise DataError(f"ids must be one of {', '.join(ID_RULES)} or None, got {ids!r}")
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: tuple[str, str], b: tuple[str, str]) -> None:
        parent[find(a)] = find(b)

    numbers: dict[str, int] = {}
    for place, qid, text in records:
        token = str(qid).strip() if isinstance(qid, (str, int)) and not isinstance(qid, bool) else ""
        if not re.fullmatch(r"-?[0-9]+", token):
            raise DataError(f"{place}: ids: {ids} splits queries by the parity of integer ids, but this id is {qid!r}")
        numbers[str(qid)] = int(token)
        union(("query", str(qid)), ("text", " ".join(str(text).split()).casefold()))
    for qid, did in links:
        if str(qid) in numbers:
            union(("query", str(qid)), ("doc", str(did)))
    smallest: dict[tuple[str, str], int] = {}
    for qid, n in numbers.items():
        root = find(("query", qid))
        smallest[root] = min(smallest.get(root, n), n)
    want = 0 if ids == "even" else 1
    return {qid for qid in numbers if smallest[find(("query", qid))] % 2 == want}


def positive_links(beir: BeirSource) -> list[tuple[str, str]]:
    """``(query id, document id)`` of every positive qrel of a BEIR source (what :func:`query_half` groups by)."""
    return [(qid, did) for _, qid, did, score in beir.qrels() if score > 0]


# ----------------------------------------------------------------------------------------------- triplets

def load_triplets(source: str, split: str = "train", n_negatives: int = 0,
                  max_examples: int | None = None, ids: str | None = None) -> list[Triplet]:
    """Training triplets (query, positive, first ``n_negatives`` hard negatives), in source order.

    Bad rows raise DataError naming ``file:line`` or ``id[split][index]``; an empty result raises too.
    BEIR-format sources have no hard negatives, so ``n_negatives`` must be 0 for them. ``ids`` (``"even"`` /
    ``"odd"``, BEIR-format sources only) keeps the queries whose integer id has that parity: a fixed split of a
    qrels file into a part to train on and a part to score (:func:`query_half`).
    """
    check_max_examples(max_examples)
    if isinstance(n_negatives, bool) or not isinstance(n_negatives, int) or n_negatives < 0:
        raise DataError(f"{source}: n_negatives must be a non-negative integer, got {n_negatives!r}")
    source = str(source)
    path = resolve_local(source)
    if path is not None:
        label = str(path)
        if path.is_dir():
            check_no_negatives(label, n_negatives)
            triplets = beir_triplets(local_beir(path, split), max_examples, ids)
        elif ids is not None:
            raise DataError(f"{path}: ids: {ids} selects BEIR queries by id; a {path.suffix} file of triplets has no "
                            "query ids")
        elif path.suffix.lower() == ".jsonl":
            triplets = take(iter_jsonl_triplets(path, n_negatives), max_examples)
        else:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; triplets come from a .jsonl file "
                            "or a BEIR directory (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    elif looks_like_local_path(source):
        raise DataError(f"{source}: file not found: {Path(source).expanduser().resolve()}")
    elif source in MSMARCO_IDS:
        if ids is not None:
            raise DataError(f"{source}: ids: {ids} selects BEIR queries by id; ms_marco triplets have no query ids")
        label = f"{MSMARCO_HUB_ID}[{split}]"
        triplets = msmarco_triplets(split, n_negatives, max_examples)
    else:
        label = f"{source}[{split}]"
        check_no_negatives(source, n_negatives)
        triplets = beir_triplets(hub_beir(source, split), max_examples, ids)
    if not triplets:
        why = " (max_examples=0)" if max_examples == 0 else ""
        raise DataError(f"no examples in {label}{why}")
    return triplets


def take(rows: Iterable[Triplet], max_examples: int | None) -> list[Triplet]:
    return list(islice(rows, max_examples)) if max_examples is not None else list(rows)


def check_no_negatives(label: str, n_negatives: int) -> None:
    if n_negatives:
        raise DataError(f"{label}: BEIR-format data has no hard negatives; use n_negatives: 0 "
                        f"(got {n_negatives})")


def text_value(place: str, key: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(f"{place}: {key} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{place}: {key} is empty")
    return value


def iter_jsonl_triplets(path: Path, n_negatives: int | None) -> Iterator[Triplet]:
    """Triplets of a jsonl file with the first ``n_negatives`` negatives of each row (all of them for None)."""
    for i, line in enumerate(read_lines(path)):
        if not line.strip():
            continue
        place = file_place(path, i + 1)
        obj = parse_json_object(place, line)
        for key in ("query", "pos"):
            if key not in obj:
                raise DataError(f"{place}: missing key {key!r}; each line needs query, pos (and optionally neg)")
        query = text_value(place, "query", obj["query"])
        pos = obj["pos"]
        if isinstance(pos, str):
            positives = [text_value(place, "pos", pos)]
        elif isinstance(pos, list) and pos:
            positives = [text_value(place, f"pos[{j}]", p) for j, p in enumerate(pos)]
        else:
            raise DataError(f"{place}: pos must be a string or a non-empty list of strings, got {pos!r}")
        neg = obj.get("neg")
        if neg is None:
            neg = []
        if not isinstance(neg, list):
            raise DataError(f"{place}: neg must be a list of strings, got {type(neg).__name__}")
        negatives = tuple(text_value(place, f"neg[{j}]", n) for j, n in enumerate(neg))
        if n_negatives is not None and len(negatives) < n_negatives:
            raise DataError(f"{place}: {len(negatives)} negative(s) in neg, but n_negatives is {n_negatives}")
        for p in positives:
            yield Triplet(query, p, negatives[:n_negatives])


def msmarco_triplets(split: str, n_negatives: int, max_examples: int | None) -> list[Triplet]:
    """One Triplet per selected passage; rows without a selected passage, or with fewer than ``n_negatives``
    unselected ones, give none (they are counted and reported in a warning)."""
    ds = load_hub_dataset(MSMARCO_HUB_ID, MSMARCO_CONFIG, split)
    require_columns(ds, ("query", "passages"), f"{MSMARCO_HUB_ID}[{split}]")
    out: list[Triplet] = []
    no_positive: list[int] = []
    few_negatives: list[int] = []
    i = -1
    for batch in ds.select_columns(["query", "passages"]).iter(batch_size=HUB_BATCH):
        for query, passages in zip(batch["query"], batch["passages"]):
            if max_examples is not None and len(out) >= max_examples:
                break
            i += 1
            place = row_place(MSMARCO_HUB_ID, split, i)
            query = text_value(place, "query", query)
            selected = passages.get("is_selected") if isinstance(passages, dict) else None
            texts = passages.get("passage_text") if isinstance(passages, dict) else None
            if not isinstance(selected, list) or not isinstance(texts, list) or len(selected) != len(texts):
                raise DataError(f"{place}: passages must hold equal-length lists is_selected and passage_text")
            pos = [text_value(place, f"passage_text[{j}]", t) for j, (t, s) in enumerate(zip(texts, selected)) if s]
            neg = [text_value(place, f"passage_text[{j}]", t) for j, (t, s) in enumerate(zip(texts, selected))
                   if not s]
            if not pos:
                no_positive.append(i)
                continue
            if len(neg) < n_negatives:
                few_negatives.append(i)
                continue
            out.extend(Triplet(query, p, tuple(neg[:n_negatives])) for p in pos)
        if max_examples is not None and len(out) >= max_examples:
            break
    if no_positive:
        log.warning("%s[%s]: %d of %d rows read have no selected passage and give no triplet (rows %s%s)",
                    MSMARCO_HUB_ID, split, len(no_positive), i + 1, no_positive[:5],
                    "..." if len(no_positive) > 5 else "")
    if few_negatives:
        log.warning("%s[%s]: %d of %d rows read have fewer than n_negatives=%d unselected passages and give no "
                    "triplet (rows %s%s)", MSMARCO_HUB_ID, split, len(few_negatives), i + 1, n_negatives,
                    few_negatives[:5], "..." if len(few_negatives) > 5 else "")
    return out[:max_examples] if max_examples is not None else out


# ------------------------------------------------------------------------------------------------ BEIR

@dataclass
class BeirSource:
    """A BEIR dataset as three record streams, each record (place, fields); read lazily."""
    label: str
    corpus: Any   # () -> Iterator[(place, {"_id", "title", "text"})]
    queries: Any  # () -> Iterator[(place, {"_id", "text"})]
    qrels: Any    # () -> Iterator[(place, query_id, corpus_id, score)]
    corpus_name: str = "corpus"
    queries_name: str = "queries"


def load_beir(source: str, split: str = "test",
              ids: str | None = None) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """``(corpus, queries, qrels)`` of a BEIR-format dataset (local directory or hub id such as ``mteb/scifact``).

    corpus: doc id -> ``title + " " + text`` (just the text when there is no title); queries: query id -> text,
    only the queries that have qrels in ``split`` (as BEIR's own loader); qrels: query id -> {doc id: relevance}.
    A qrel naming an unknown query or document, or a repeated (query, doc) pair, raises DataError at its row.
    ``ids`` (``"even"`` / ``"odd"``) keeps only the qrels (and so the queries) whose integer query id has that
    parity (:func:`query_half`: queries sharing a text or a relevant document follow the smallest id among
    them): score on one half, train on the other.
    """
    source = str(source)
    path = resolve_local(source)
    if path is not None:
        if not path.is_dir():
            raise DataError(f"{path}: a BEIR source is a directory with corpus.jsonl, queries.jsonl and "
                            "qrels/<split>.tsv")
        beir = local_beir(path, split)
    elif looks_like_local_path(source):
        raise DataError(f"{source}: directory not found: {Path(source).expanduser().resolve()}")
    else:
        beir = hub_beir(source, split)
    qrels: dict[str, dict[str, int]] = {}
    places: dict[tuple[str, str], str] = {}
    half = query_half(ids, query_records(beir), positive_links(beir) if ids else ())
    rows = [r for r in beir.qrels() if half is None or r[1] in half]
    for place, qid, did, score in rows:
        if did in qrels.get(qid, {}):
            raise DataError(f"{place}: repeated qrel ({qid!r}, {did!r}); first at {places[qid, did]}")
        qrels.setdefault(qid, {})[did] = score
        places[qid, did] = place
    if not qrels:
        raise DataError(f"no examples in {beir.label}: no qrels" + (f" with {ids} query ids" if ids else ""))
    corpus = read_corpus(beir)
    all_queries = read_queries(beir)
    for place, qid, did, _ in rows:
        check_known(place, beir, qid, did, all_queries, corpus)
    queries = {qid: all_queries[qid] for qid in qrels}
    return corpus, queries, qrels


def beir_triplets(beir: BeirSource, max_examples: int | None, ids: str | None = None) -> list[Triplet]:
    """One Triplet per qrel with score > 0 (and a query id kept by ``ids``), in qrels order; only the needed
    documents are kept."""
    half = query_half(ids, query_records(beir), positive_links(beir) if ids else ())
    relevant = [(place, qid, did) for place, qid, did, score in beir.qrels()
                if score > 0 and (half is None or qid in half)]
    if max_examples is not None:
        relevant = relevant[:max_examples]
    if not relevant:
        return []
    corpus = read_corpus(beir, keep={did for _, _, did in relevant})
    queries = read_queries(beir)
    out = []
    for place, qid, did in relevant:
        check_known(place, beir, qid, did, queries, corpus)
        if not corpus[did].strip():
            raise DataError(f"{place}: relevant document {did!r} has an empty title and text")
        out.append(Triplet(queries[qid], corpus[did]))
    return out


def check_known(place: str, beir: BeirSource, qid: str, did: str, queries: dict, corpus: dict) -> None:
    if qid not in queries:
        raise DataError(f"{place}: query-id {qid!r} is not in {beir.queries_name}")
    if did not in corpus:
        raise DataError(f"{place}: corpus-id {did!r} is not in {beir.corpus_name}")


def as_id(place: str, key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{place}: {key} must be a non-empty string, got {value!r}")
    return value


def as_relevance(place: str, value: Any) -> int:
    """An integer relevance grade from an int, an integral float, or their text."""
    v = value
    if isinstance(v, str):
        try:
            v = float(v.strip()) if any(c in v for c in ".eE") else int(v.strip())
        except ValueError:
            raise DataError(f"{place}: score {value!r} is not an integer") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise DataError(f"{place}: score {value!r} is not an integer")
    return int(v)


def read_corpus(beir: BeirSource, keep: set[str] | None = None) -> dict[str, str]:
    corpus: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for place, obj in beir.corpus():
        did = as_id(place, "_id", obj.get("_id"))
        if did in first_seen:
            raise DataError(f"{place}: repeated _id {did!r}; first at {first_seen[did]}")
        first_seen[did] = place
        if keep is not None and did not in keep:
            continue
        if "text" not in obj:
            raise DataError(f"{place}: missing key 'text'")
        text = text_value(place, "text", obj["text"], allow_empty=True)
        title = obj.get("title")
        title = "" if title is None else text_value(place, "title", title, allow_empty=True)
        corpus[did] = f"{title} {text}" if title.strip() and text.strip() else (text if text.strip() else title)
    return corpus


def query_records(beir: BeirSource) -> Iterator[tuple[str, str, str]]:
    """``(place, id, text)`` of every query (unchecked beyond the id; :func:`read_queries` checks the rest)."""
    for place, obj in beir.queries():
        yield place, as_id(place, "_id", obj.get("_id")), obj.get("text") if isinstance(obj.get("text"), str) else ""


def read_queries(beir: BeirSource) -> dict[str, str]:
    queries: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for place, obj in beir.queries():
        qid = as_id(place, "_id", obj.get("_id"))
        if qid in first_seen:
            raise DataError(f"{place}: repeated _id {qid!r}; first at {first_seen[qid]}")
        first_seen[qid] = place
        if "text" not in obj:
            raise DataError(f"{place}: missing key 'text'")
        queries[qid] = text_value(place, "text", obj["text"])
    return queries


def jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    """``(file:line, object)`` for every non-blank line of a jsonl file."""
    for i, line in enumerate(read_lines(path)):
        if line.strip():
            place = file_place(path, i + 1)
            yield place, parse_json_object(place, line)


def local_beir(directory: Path, split: str) -> BeirSource:
    corpus, queries = directory / "corpus.jsonl", directory / "queries.jsonl"
    qrels = directory / "qrels" / f"{split}.tsv"
    for f in (corpus, queries):
        if not f.is_file():
            raise DataError(f"{directory}: not a BEIR directory: missing {f.name}")
    if not qrels.is_file():
        have = sorted(p.stem for p in (directory / "qrels").glob("*.tsv")) if (directory / "qrels").is_dir() else []
        raise DataError(f"{directory}: no qrels for split {split!r} (missing qrels/{split}.tsv); splits here: {have}")

    def qrel_rows() -> Iterator[tuple[str, str, str, int]]:
        lines = read_lines(qrels)
        first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
        if first is None:
            return
        header = tuple(f.strip().lower() for f in lines[first].split("\t"))
        if header != QRELS_HEADER:
            raise DataError(f"{file_place(qrels, first + 1)}: expected the header "
                            f"{chr(9).join(QRELS_HEADER)!r} (tab-separated), got {lines[first]!r}")
        for i in range(first + 1, len(lines)):
            if not lines[i].strip():
                continue
            place = file_place(qrels, i + 1)
            fields = lines[i].split("\t")
            if len(fields) != 3:
                raise DataError(f"{place}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                                f"got {len(fields)}")
            yield (place, as_id(place, "query-id", fields[0]), as_id(place, "corpus-id", fields[1]),
                   as_relevance(place, fields[2]))

    return BeirSource(str(directory), lambda: jsonl_records(corpus), lambda: jsonl_records(queries), qrel_rows,
                      corpus_name=str(corpus), queries_name=str(queries))


def hub_beir(dataset_id: str, split: str) -> BeirSource:
    """The BEIR layout on the hub (``mteb/<task>``): configs ``corpus``, ``queries``, default = qrels splits.
    The datasets load when first read."""

    def records(config: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
        ds = load_hub_dataset(dataset_id, config, None)
        require_columns(ds, columns, f"{dataset_id} (config {config!r})")
        cols = list(columns) + [c for c in optional if c in ds.column_names]
        i = 0
        for batch in ds.select_columns(cols).iter(batch_size=HUB_BATCH):
            for values in zip(*(batch[c] for c in cols)):
                yield row_place(dataset_id, config, i), dict(zip(cols, values))
                i += 1

    def qrel_rows() -> Iterator[tuple[str, str, str, int]]:
        ds = load_hub_dataset(dataset_id, None, split)
        require_columns(ds, QRELS_HEADER, f"{dataset_id}[{split}]")
        i = 0
        for batch in ds.select_columns(list(QRELS_HEADER)).iter(batch_size=HUB_BATCH):
            for qid, did, score in zip(*(batch[c] for c in QRELS_HEADER)):
                place = row_place(dataset_id, split, i)
                yield place, as_id(place, "query-id", qid), as_id(place, "corpus-id", did), as_relevance(place, score)
                i += 1

    return BeirSource(f"{dataset_id}[{split}]", lambda: records("corpus", ("_id", "text"), ("title",)),
                      lambda: records("queries", ("_id", "text")), qrel_rows,
                      corpus_name=f"{dataset_id} (config 'corpus')", queries_name=f"{dataset_id} (config 'queries')")
