"""Small Composer callbacks, one job each."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from composer import Callback, Logger, State
from composer.loggers import LoggerDestination
from composer.utils import dist


def _model(state: State) -> Any:
    model = state.model
    return model.module if hasattr(model, "module") else model


class PruningCallback(Callback):
    """Drives the L0 module from the Composer clock and records its state.

    * before each batch: gives the L0 module the current step (for the target-sparsity warmup) as an
      attribute, never through the batch;
    * after each batch: logs expected sparsity per module and overall, targets, lambdas, expected size;
    * after each evaluation: saves the deterministic masks to ``{save_folder}/masks/zs_s{step}.pt``.
    """

    def __init__(self, save_folder: str | None = None) -> None:
        self.save_folder = save_folder

    def batch_start(self, state: State, logger: Logger) -> None:
        model = _model(state)
        if model.l0_module is not None:
            model.l0_module.current_step = int(state.timestamp.batch.value)

    def batch_end(self, state: State, logger: Logger) -> None:
        model = _model(state)
        model.trained_steps = int(state.timestamp.batch.value)
        if model.l0_module is not None and model.last_metrics:
            logger.log_metrics({f"l0/{k}": v for k, v in model.last_metrics.items()})

    def eval_end(self, state: State, logger: Logger) -> None:
        model = _model(state)
        if model.l0_module is None or self.save_folder is None or dist.get_global_rank() != 0:
            return
        folder = Path(self.save_folder) / "masks"
        folder.mkdir(parents=True, exist_ok=True)
        zs = {k: v.detach().float().cpu() for k, v in model.l0_module.deterministic_zs().items()}
        torch.save(zs, folder / f"zs_s{int(state.timestamp.batch.value)}.pt")


class NonFiniteLossError(FloatingPointError):
    pass


class NonFiniteLossGuard(Callback):
    """Stops training at the first non-finite loss, naming the step; checkpoints already written stay."""

    def after_backward(self, state: State, logger: Logger) -> None:
        loss = state.loss
        values = loss.values() if isinstance(loss, dict) else [loss]
        for v in values:
            if torch.is_tensor(v) and not torch.isfinite(v).all():
                step = int(state.timestamp.batch.value)
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} (batch {step + 1}): training stopped; the last good "
                    f"checkpoint is the latest one in train.save_folder. Lower train.lr / train.lag_lr, or use "
                    f"fp32 precision.")


class JsonlLogger(LoggerDestination):
    """Writes every logged metric as one JSON line per step (for plots and reports)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if dist.get_global_rank() != 0:
            return
        if self._file is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._file = open(self.path, "a")
        row = {"step": step}
        for k, v in metrics.items():
            v = v.item() if torch.is_tensor(v) and v.numel() == 1 else v
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                row[k] = v
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self, state: State, logger: Logger) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
