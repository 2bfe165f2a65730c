"""Running MTEB (mteb 2.x) on an :class:`EmbeddingModel`, including local custom tasks that work offline.

* :class:`MtebEncoder` implements mteb's ``EncoderProtocol`` (subclass of ``mteb.models.abs_encoder.AbsEncoder``):
  ``encode(inputs: DataLoader[BatchedInput], *, task_metadata, hf_split, hf_subset, prompt_type, **kw)``
  receives a torch DataLoader whose batches are dicts with a ``"text"`` list (for retrieval corpora
  ``"text"`` already is "title body"); it returns a float32 array [N, d]. Similarity is cosine.
* :func:`local_sts_task` builds an ``AbsTaskSTS`` over a local STS file (any layout ``bge_pruning.data.load_sts``
  reads); :func:`local_retrieval_task` an ``AbsTaskRetrieval`` over a local BEIR directory
  (``bge_pruning.data.load_beir``). Their ``load_data`` never touches the hub.
* :func:`run_mteb` runs tasks given as task objects, local paths (a file -> STS task, a directory with
  ``corpus.jsonl`` -> BEIR retrieval task, another directory -> STS split files) or mteb task names
  (``"STSBenchmark"``, loaded by mteb from the hub as usual).

mteb reports scores in [0, 1] (``main_score`` of an STS task is ``cosine_spearman``, of a retrieval
task ``ndcg_at_10``); :func:`run_mteb` returns them unchanged.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _task_name(prefix: str, path: Path) -> str:
    return f"{prefix}_{_safe(path.name if path.is_dir() else path.stem)}"


def model_identity(spec: str, model_dir: str | Path) -> tuple[str, str]:
    """``(name, revision)`` under which mteb files a model's results, so a pruned model and its base never
    share a folder: a project export is ``bge_pruning/<base>-pruned-<N>M`` (from its pruning_info.json), the
    embedded MiniLM its Hub id, a hub id itself, any other directory ``local/<name>``; the revision is the
    first 12 hex digits of the weights' sha256 (``local`` when there is no weights file)."""
    import hashlib

    from bge_pruning.export.model_card import EMBEDDED_HUB_IDS, hub_id
    from bge_pruning.pruning_info import PruningInfo

    model_dir = Path(model_dir)
    info = PruningInfo.load(model_dir)
    if info is not None and info.params:
        base = info.base_model_hub_id or hub_id(info.base_model) or str(info.base_model or "")
        base_name = _safe(Path(base).name or "model")
        name = f"bge_pruning/{base_name}-pruned-{info.params['after']['total'] / 1e6:.1f}M"
    elif spec in EMBEDDED_HUB_IDS:
        name = EMBEDDED_HUB_IDS[spec]
    elif hub_id(spec) and not Path(spec).exists():
        name = spec
    else:
        folder = model_dir.parent.name if model_dir.name == "model" and model_dir.parent.name else model_dir.name
        name = f"local/{_safe(folder)}"
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return name, "local"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return name, digest.hexdigest()[:12]


def make_mteb_encoder(model, name: str | None = None, revision: str = "local"):
    """An mteb ``EncoderProtocol`` object for ``model`` (an EmbeddingModel), filed as ``name`` / ``revision``."""
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ScoringFunction

    class MtebEncoder(AbsEncoder):
        """mteb encoder around an EmbeddingModel: dense vectors, cosine similarity, no prompts."""

        def __init__(self, model, name: str | None = None) -> None:
            self.model = model
            model_name = name or f"bge_pruning/{_safe(model.name)}"
            self.mteb_model_meta = ModelMeta.create_empty(overwrites={
                "name": model_name,
                "revision": revision,
                "n_parameters": sum(p.numel() for p in model.model.parameters()),
                "embed_dim": model.dim,
                "max_tokens": model.max_length,
                "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["PyTorch"],
                "modalities": ["text"],
            })

        def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
                   **kwargs: Any) -> np.ndarray:
            texts: list[str] = []
            for batch in inputs:
                if "text" not in batch:
                    raise ValueError(f"{task_metadata.name}: MtebEncoder only encodes text; batch keys "
                                     f"{sorted(batch)}")
                texts.extend(batch["text"])
            return self.model.encode(texts, batch_size=int(kwargs.get("batch_size", 32)),
                                     show_progress=bool(kwargs.get("show_progress_bar", True)))

        def similarity(self, embeddings1, embeddings2):
            from mteb.similarity_functions import cos_sim

            return cos_sim(embeddings1, embeddings2)

        def similarity_pairwise(self, embeddings1, embeddings2):
            from mteb.similarity_functions import pairwise_cos_sim

            return pairwise_cos_sim(embeddings1, embeddings2)

    return MtebEncoder(model, name)


def _metadata(name: str, path: Path, split: str, task_type: str, main_score: str, description: str):
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name=name,
        dataset={"path": str(path), "revision": "local"},
        description=description,
        type=task_type,
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score=main_score,
    )


def local_sts_task(path: str | Path, split: str = "test", name: str | None = None,
                   max_examples: int | None = None, min_score: float = 0.0, max_score: float = 5.0):
    """An ``AbsTaskSTS`` over a local STS file (or a directory of split files) read by ``load_sts``.

    The task's split is called ``split``; for a directory it also picks the file (``sts-<split>.csv``...).
    """
    from datasets import Dataset
    from mteb.abstasks.sts import AbsTaskSTS

    from bge_pruning.data import load_sts

    src = Path(path).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"{src}: local STS file not found")
    task_name = name or _task_name("LocalSTS", src)
    metadata = _metadata(task_name, src, split, "STS", "cosine_spearman",
                         f"Local STS pairs from {src} (split {split}).")

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        pairs = load_sts(str(src), split, max_examples=max_examples)
        ds = Dataset.from_dict({"sentence1": [p.sentence1 for p in pairs],
                                "sentence2": [p.sentence2 for p in pairs],
                                "score": [float(p.score) for p in pairs]})
        self.dataset = {"default": {split: ds}}
        self.data_loaded = True

    cls = type(re.sub(r"\W", "_", task_name), (AbsTaskSTS,), {
        "metadata": metadata, "min_score": min_score, "max_score": max_score, "load_data": load_data})
    return cls()


def local_retrieval_task(path: str | Path, split: str = "test", name: str | None = None,
                         max_queries: int | None = None, k_values: Sequence[int] = (1, 3, 5, 10, 20, 100, 1000)):
    """An ``AbsTaskRetrieval`` over a local BEIR directory read by ``bge_pruning.data.load_beir``."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    from bge_pruning.data import load_beir

    src = Path(path).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: local BEIR directory not found")
    task_name = name or _task_name("LocalRetrieval", src)
    metadata = _metadata(task_name, src, split, "Retrieval", "ndcg_at_10",
                         f"Local BEIR retrieval data from {src} (split {split}).")

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        corpus, queries, qrels = load_beir(str(src), split)
        qids = [q for q in queries if q in qrels]
        if max_queries is not None:
            qids = qids[:max_queries]
        keep = set(qids)
        docs = [(str(d), t.get("title", "") if isinstance(t, dict) else "",
                 t["text"] if isinstance(t, dict) else t) for d, t in corpus.items()]
        self.dataset = {"default": {split: {
            "corpus": Dataset.from_dict({"id": [d[0] for d in docs], "title": [d[1] for d in docs],
                                         "text": [d[2] for d in docs]}),
            "queries": Dataset.from_dict({"id": [str(q) for q in qids], "text": [queries[q] for q in qids]}),
            "relevant_docs": {str(q): {str(d): int(r) for d, r in qrels[q].items()} for q in qids if q in keep},
            "top_ranked": None,
        }}}
        self.data_loaded = True

    cls = type(re.sub(r"\W", "_", task_name), (AbsTaskRetrieval,), {
        "metadata": metadata, "k_values": tuple(k_values), "load_data": load_data})
    return cls()


def split_of_file(path: Path) -> str:
    """The split a local STS file holds, from its name: sts-dev.csv is ``validation`` (as the Hub's STS-B),
    a train file ``train``, anything else ``test``. (Results of dev data must not be filed as test.)"""
    stem = path.stem.lower() if path.is_file() else ""
    if re.search(r"(^|[-_.])(dev|validation|val)($|[-_.])", stem):
        return "validation"
    if re.search(r"(^|[-_.])train($|[-_.])", stem):
        return "train"
    return "test"


def resolve_task(task: Any, split: str | None = None, max_examples: int | None = None):
    """A task object from a task object, a local path or an mteb task name.

    A local file is an STS task; a local directory is a BEIR retrieval task when it holds ``corpus.jsonl``,
    else a directory of STS split files. ``split`` (default ``"test"``) applies to local tasks only.
    """
    from mteb.abstasks.abstask import AbsTask

    if isinstance(task, AbsTask):
        return task
    if not isinstance(task, (str, Path)):
        raise TypeError(f"mteb task must be a task object, a local path or a task name, got {task!r}")
    path = Path(task).expanduser()
    if path.is_file() or (path.is_dir() and not (path / "corpus.jsonl").is_file()):
        return local_sts_task(path, split=split or split_of_file(path), max_examples=max_examples)
    if path.is_dir():
        return local_retrieval_task(path, split=split or "test", max_queries=max_examples)
    from bge_pruning.data.errors import looks_like_local_path

    if looks_like_local_path(str(task)):
        raise FileNotFoundError(f"{task}: local MTEB task file or directory not found")
    if split is not None:
        raise ValueError(f"{task}: a split can only be given for a local task; mteb tasks use their eval_splits")
    import mteb

    try:
        return mteb.get_task(str(task))
    except KeyError as e:
        raise ValueError(f"{task}: not a known mteb task name ({e})") from None


def run_mteb(model, tasks: Sequence[Any], output_dir: str | Path | None = None, batch_size: int = 32,
             show_progress: bool = True, max_examples: int | None = None,
             identity: tuple[str, str] | None = None) -> dict[str, dict]:
    """Run ``tasks`` on ``model`` (an EmbeddingModel or an mteb encoder) and return
    ``{task_name: {"main_score": float, "main_score_name": str, "scores": {split: [per-subset dicts]}}}``
    (``main_score``: mean over splits and subsets, in mteb's [0, 1] scale).

    Results are written by mteb's ``ResultCache`` under ``output_dir`` (always re-run, never read back),
    or not written when ``output_dir`` is None.
    """
    import mteb
    from mteb.cache import ResultCache

    encoder = model if hasattr(model, "mteb_model_meta") else make_mteb_encoder(model, *(identity or ()))
    task_objs = [resolve_task(t, max_examples=max_examples) for t in tasks]
    main_names = {t.metadata.name: t.metadata.main_score for t in task_objs}
    cache = ResultCache(cache_path=Path(output_dir)) if output_dir is not None else None
    result = mteb.evaluate(encoder, task_objs, cache=cache, overwrite_strategy="always",
                           encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress},
                           show_progress_bar=show_progress, co2_tracker=False)
    out: dict[str, dict] = {}
    for tr in result.task_results:
        mains = [s["main_score"] for split in tr.scores.values() for s in split]
        out[tr.task_name] = {"main_score": float(np.mean(mains)) if mains else float("nan"),
                             "main_score_name": main_names.get(tr.task_name, "main_score"),
                             "scores": {split: [dict(s) for s in subsets] for split, subsets in tr.scores.items()}}
    return out
