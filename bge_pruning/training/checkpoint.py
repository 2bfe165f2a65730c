"""Rebuild a ``ComposerBGEM3`` from a Composer checkpoint, offline.

``train.py`` writes, beside the checkpoints in ``train.save_folder``: the resolved run config
(``config.yaml``) and the base model's HF config, tokenizer and modeling code (``base_model/``, no
weights). With those the architecture is rebuilt without the hub and the checkpoint's weights loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ..models.composer_bge_m3 import ComposerBGEM3, build_model

RUN_CONFIG = "config.yaml"
BASE_MODEL_DIR = "base_model"


class CheckpointError(RuntimeError):
    pass


def save_run_files(folder: Path, cfg: Any, model: ComposerBGEM3) -> None:
    """Write the run config and the base model's config/tokenizer (not its weights) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / RUN_CONFIG)
    base = folder / BASE_MODEL_DIR
    model.backbone.config.save_pretrained(base)
    model.tokenizer.save_pretrained(base)


def _find_run_folder(checkpoint: Path) -> Path:
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / RUN_CONFIG).is_file():
            return folder
    raise CheckpointError(f"{checkpoint}: no {RUN_CONFIG} beside it; was it written by train.py?")


def load_composer_model(path: str | Path) -> ComposerBGEM3:
    """The model of a Composer checkpoint (``ep*-ba*-rank0.pt`` / ``latest-rank0.pt``) as it was trained."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    checkpoint = Path(path)
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    folder = _find_run_folder(checkpoint.resolve())
    cfg = OmegaConf.load(folder / RUN_CONFIG)
    base = folder / BASE_MODEL_DIR
    hf_config = AutoConfig.from_pretrained(base, trust_remote_code=True)
    hf_model = AutoModel.from_config(hf_config, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=True)
    model = build_model(cfg, hf_model=hf_model, tokenizer=tokenizer, with_teacher=False)
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]
        state = saved["model"]
    except (KeyError, RuntimeError, EOFError, TypeError) as e:
        raise CheckpointError(f"{checkpoint}: not a readable Composer checkpoint ({e})") from None
    # A checkpoint of a DDP-wrapped model may prefix keys with "module.".
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: does not match the run's model: missing={result.missing_keys[:5]} "
                              f"unexpected={result.unexpected_keys[:5]}")
    # Composer stores the clock as {"Timestamp": {"batch": N, ...}}.
    model.trained_steps = int(saved.get("timestamp", {}).get("Timestamp", {}).get("batch", 0))
    return model.eval()
