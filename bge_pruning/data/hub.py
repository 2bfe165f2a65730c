"""Loading a Hugging Face dataset, with hub/offline failures turned into one clear DataError."""
from __future__ import annotations

from typing import Any

from .errors import DataError


def load_hub_dataset(dataset_id: str, config: str | None = None, split: str | None = None) -> Any:
    """``datasets.load_dataset(dataset_id, config, split=split)``; any failure becomes a DataError that names
    the dataset id (and config/split) and suggests a local file instead, without the library's deep traceback.

    With ``split=None`` the configuration must have exactly one split, which is returned.
    """
    label = dataset_id + (f"[{split}]" if split else "") + (f" (config {config!r})" if config else "")
    try:
        import datasets  # imported here: slow, and only needed for hub sources
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # network, offline mode, unknown id/config/split, bad cache...
        first_line = (str(e).strip().splitlines() or [""])[0]
        err = DataError(
            f"{label}: could not load the Hugging Face dataset ({type(e).__name__}: {first_line}). "
            "Offline (HF_HUB_OFFLINE=1) or without network, only datasets already in the local Hugging Face "
            "cache load; point `source` at a local copy instead (a .tsv/.csv/.jsonl file or a BEIR directory)."
        )
        err.original = e  # the underlying exception, for whoever needs the details
        raise err from None
    if split is None:
        if hasattr(ds, "keys"):
            splits = list(ds.keys())
            if len(splits) != 1:
                raise DataError(f"{label}: expected one split, found {splits}")
            ds = ds[splits[0]]
    return ds


def require_columns(ds: Any, columns: tuple[str, ...], label: str) -> None:
    """DataError naming ``label`` when ``ds`` lacks any of ``columns``."""
    have = list(ds.column_names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(f"{label}: missing column(s) {missing}; the dataset has {have}")
