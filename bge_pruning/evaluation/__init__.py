"""Evaluating (pruned) sentence encoders: STS, paraphrase / BEIR retrieval, MTEB, and reports.

Heavy imports (torch, transformers, mteb) happen only when the corresponding name is used.
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "spearman": "metrics", "pearson": "metrics", "ranking_metrics": "metrics", "rank_documents": "metrics",
    "EmbeddingModel": "encoder", "InMemoryTransformer": "encoder", "ModelDirError": "encoder",
    "evaluate_sts": "sts",
    "evaluate_retrieval": "retrieval", "paraphrase_retrieval_from_sts": "retrieval",
    "make_mteb_encoder": "mteb_wrapper", "local_sts_task": "mteb_wrapper", "local_retrieval_task": "mteb_wrapper",
    "run_mteb": "mteb_wrapper",
    "format_table": "report", "build_report": "report", "write_json": "report", "retention": "report",
    "parse_task_spec": "tasks", "assign_labels": "tasks", "TaskSpec": "tasks", "TaskData": "tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
