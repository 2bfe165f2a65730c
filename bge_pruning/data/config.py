"""The ``data.train`` source list: validation with key-path errors, and the ``--dataset`` shortcuts."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, looks_like_local_path, resolve_local
from .retrieval import ID_RULES  # ``ids``: keep the queries whose integer id has this parity (a fixed holdout split)

SOURCE_KEYS = ("name", "type", "source", "split", "proportion", "max_examples", "n_negatives", "field", "ids")
SOURCE_TYPES = ("sts", "retrieval", "text")

DEFAULT_MAX_LENGTH = 128
SHORTCUTS = ("sts", "msmarco", "mteb/<task>")


@dataclass(frozen=True)
class SourceSpec:
    """One validated ``data.train`` entry; ``source`` is an absolute path for local data, else a hub id."""
    key: str  # "data.train[i]", for messages
    name: str
    type: str
    source: str
    split: str = "train"
    proportion: float = 1.0
    max_examples: int | None = None
    n_negatives: int = 0
    field: str | tuple[str, ...] | None = None  # type text: what to read (see bge_pruning.data.text.load_text_source)
    ids: str | None = None  # "even" | "odd": only queries with such ids (retrieval, text of queries)


def to_plain(cfg: Any) -> Any:
    """A plain dict/list from an OmegaConf config (resolving interpolations); other values unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return cfg
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_data_config(data_cfg: Any) -> tuple[int, list[SourceSpec]]:
    """``(max_length, sources)`` from the ``data`` section (a whole config with a ``data`` key works too).

    Errors name the key path: ``data.train[1].proprtion: unknown key; valid keys: ...``. Relative local paths
    resolve against the current directory; a missing one raises ``data.train[i].source: file not found: ...``.
    """
    cfg = to_plain(data_cfg)
    if not isinstance(cfg, dict):
        raise DataError(f"data: expected a mapping with max_length and train, got {type(cfg).__name__}")
    if "train" not in cfg and isinstance(cfg.get("data"), dict):
        cfg = cfg["data"]
    max_length = cfg.get("max_length", DEFAULT_MAX_LENGTH)
    if not _is_int(max_length) or max_length < 2:
        raise DataError(f"data.max_length: must be an integer >= 2, got {max_length!r}")
    train = cfg.get("train")
    if not isinstance(train, list) or not train:
        raise DataError(f"data.train: expected a non-empty list of sources, got {train!r}")
    specs = [parse_source(f"data.train[{i}]", entry) for i, entry in enumerate(train)]
    seen: dict[str, str] = {}
    for s in specs:
        if s.name in seen:
            raise DataError(f"{s.key}.name: duplicate name {s.name!r} (also {seen[s.name]}); names must be unique")
        seen[s.name] = s.key
    return max_length, specs


def parse_source(key: str, entry: Any) -> SourceSpec:
    if not isinstance(entry, dict):
        raise DataError(f"{key}: expected a mapping with keys {', '.join(SOURCE_KEYS)}, got {entry!r}")
    for k in entry:
        if k not in SOURCE_KEYS:
            close = difflib.get_close_matches(str(k), SOURCE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{key}.{k}: unknown key; valid keys: {', '.join(SOURCE_KEYS)}{hint}")
    typ = entry.get("type")
    if typ is None:
        raise DataError(f"{key}.type: missing; one of {', '.join(SOURCE_TYPES)}")
    if typ not in SOURCE_TYPES:
        raise DataError(f"{key}.type: unknown type {typ!r}; one of {', '.join(SOURCE_TYPES)}")
    source = entry.get("source")
    if source is None:
        raise DataError(f"{key}.source: missing; a local file/directory or a Hugging Face dataset id")
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"{key}.source: must be a non-empty string, got {source!r}")
    split = entry.get("split", "train")
    if split is None:
        split = "train"
    if not isinstance(split, str) or not split:
        raise DataError(f"{key}.split: must be a non-empty string, got {split!r}")
    proportion = entry.get("proportion", 1.0)
    if proportion is None:
        proportion = 1.0
    if isinstance(proportion, bool) or not isinstance(proportion, (int, float)) or not math.isfinite(proportion) \
            or proportion <= 0:
        raise DataError(f"{key}.proportion: must be a positive number, got {proportion!r}")
    max_examples = entry.get("max_examples")
    if max_examples is not None and (not _is_int(max_examples) or max_examples <= 0):
        raise DataError(f"{key}.max_examples: must be a positive integer or null, got {max_examples!r}")
    n_negatives = entry.get("n_negatives", 0)
    if n_negatives is None:
        n_negatives = 0
    if not _is_int(n_negatives) or n_negatives < 0:
        raise DataError(f"{key}.n_negatives: must be a non-negative integer, got {n_negatives!r}")
    if typ != "retrieval" and n_negatives:
        raise DataError(f"{key}.n_negatives: only valid for type retrieval (this source is type {typ})")
    field = entry.get("field")
    if field is not None:
        if typ != "text":
            raise DataError(f"{key}.field: only valid for type text (this source is type {typ})")
        if isinstance(field, list) and field and all(isinstance(f, str) and f.strip() for f in field):
            field = tuple(field)
        elif not isinstance(field, str) or not field.strip():
            raise DataError(f"{key}.field: must be a field name or a list of field names joined with a space "
                            f"(e.g. [title, text]), got {field!r}")
    ids = entry.get("ids")
    if ids is not None:
        if typ == "sts":
            raise DataError(f"{key}.ids: only valid for types retrieval and text (query ids); this source is type sts")
        if ids not in ID_RULES:
            raise DataError(f"{key}.ids: must be one of {', '.join(ID_RULES)} (keep the queries whose integer id is "
                            f"even / odd), got {ids!r}")
    name = entry.get("name", source)
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{key}.name: must be a non-empty string, got {name!r}")
    local = resolve_local(source)
    if local is not None:
        source = str(local)
    elif looks_like_local_path(source):
        raise DataError(f"{key}.source: file not found: {Path(source).expanduser().resolve()}")
    if typ == "text" and local is not None:
        check_text_source(key, local, field, ids)
    return SourceSpec(key, name, typ, source, split, float(proportion), max_examples, n_negatives, field, ids)


def check_text_source(key: str, path: Path, field: str | tuple[str, ...] | None, ids: str | None) -> None:
    """What ``field`` / ``ids`` a local text source takes, by its form (see ``load_text_source``)."""
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        if field is not None and field not in ("corpus", "queries"):
            raise DataError(f"{key}.field: a BEIR directory's texts are 'corpus' (title + text of every document, "
                            f"the default) or 'queries' (the queries of the split), got {field!r}")
        if ids is not None and field != "queries":
            raise DataError(f"{key}.ids: selects queries by id; set field: queries (documents are not split by id)")
    elif path.is_file() and path.suffix.lower() == ".jsonl":
        return
    elif field is not None:
        raise DataError(f"{key}.field: only for a .jsonl file, a BEIR directory or a Hugging Face dataset; "
                        f"{path.name} holds plain texts")
    elif ids is not None:
        raise DataError(f"{key}.ids: only for a .jsonl file with an _id field or a BEIR directory's queries")


def dataset_shortcut(name: str) -> list[dict]:
    """The ``data.train`` list for ``train.py CONFIG --dataset sts|msmarco|mteb/<task>``; anything else raises
    DataError (a ValueError) listing the valid choices."""
    if name == "sts":
        return [{"name": "stsb", "type": "sts", "source": "mteb/stsbenchmark-sts", "split": "train"}]
    if name == "msmarco":
        return [{"name": "msmarco", "type": "retrieval", "source": "ms_marco", "split": "train",
                 "n_negatives": 1}]
    if isinstance(name, str) and name.startswith("mteb/"):
        task = name[len("mteb/"):]
        if task and "/" not in task and task.strip() == task:
            return [{"name": task, "type": "retrieval", "source": name, "split": "train", "n_negatives": 0}]
    raise DataError(f"--dataset: unknown dataset {name!r}; valid choices: {', '.join(SHORTCUTS)}")
