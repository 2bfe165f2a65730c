"""Small Composer callbacks, one job each."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from composer import Callback, Logger, State
from composer.callbacks import NaNMonitor
from composer.loggers import LoggerDestination
from composer.utils import dist

# TrainingOutOfMemoryError: raised by training.run, importable from here as before
from ..errors import NonFiniteLossError, TrainingOutOfMemoryError  # noqa: F401


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


LATEST_CHECKPOINT = "latest-rank0.pt"  # Composer's default save_latest_filename, for rank 0 (monolithic saves)


def latest_checkpoint(save_folder: str | None) -> Path | None:
    """The checkpoint ``{save_folder}/latest-rank0.pt`` points at, or None when there is none yet."""
    if save_folder is None:
        return None
    link = Path(save_folder) / LATEST_CHECKPOINT
    return link.resolve() if link.exists() else None


class NonFiniteLossGuard(NaNMonitor):
    """Stops training at the first non-finite loss or weight, naming the step and the last good checkpoint.

    Built on Composer's ``NaNMonitor``, which checks the loss for NaN after each forward pass (``after_loss``)
    and raises a bare ``RuntimeError``. This guard adds:

    * ``inf`` as well as NaN (``NaNMonitor`` looks at ``torch.isnan`` only, and an infinite loss gives NaN
      weights one step later);
    * the name and value of each non-finite loss part (``total``, ``cosent``, ...), the 1-based step, and advice
      naming the last good checkpoint, as a ``NonFiniteLossError`` (a ``UserError``: one line, exit 2). The error
      comes before the backward pass and the optimizer step, so the weights and every checkpoint written so far
      stay as they were;
    * after each optimizer step (``batch_end``, which Composer runs before ``batch_checkpoint``): the weights
      must be finite, so an update that overflowed although the loss was finite never reaches a checkpoint.

    Args:
        save_folder: the run's ``train.save_folder``, where the advice looks for ``latest-rank0.pt``.
    """

    def __init__(self, save_folder: str | None = None) -> None:
        super().__init__()
        self.save_folder = save_folder

    def _advice(self) -> str:
        ckpt = latest_checkpoint(self.save_folder)
        where = (f"the last good checkpoint is {ckpt}" if ckpt is not None
                 else f"no checkpoint was written before it (train.save_folder: {self.save_folder})")
        then = ("rerun with train.autoresume=true to continue from that checkpoint" if ckpt is not None
                else "rerun (from the start: there is nothing to resume)")
        return f"{where}. Lower train.lr / train.l0_lr / train.lag_lr (or train in fp32), then {then}."

    @staticmethod
    def _parts(loss: Any) -> list[tuple[str, Any]]:
        """(name, tensor) of each loss part, for the loss types ``NaNMonitor`` accepts (tensor, sequence, dict)."""
        if isinstance(loss, dict):
            return list(loss.items())
        if isinstance(loss, (list, tuple)):
            return [(f"loss[{i}]", v) for i, v in enumerate(loss)]
        return [("total", loss)]

    def after_loss(self, state: State, logger: Logger) -> None:
        # isfinite covers NaN (what NaNMonitor looks for) and inf (what it does not); our error names the parts
        # and the last good checkpoint. A finite loss still goes through NaNMonitor for its check of the loss type.
        bad = {k: v.item() if v.numel() == 1 else "non-finite" for k, v in self._parts(state.loss)
               if torch.is_tensor(v) and not torch.isfinite(v).all()}
        if bad:
            step = int(state.timestamp.batch.value) + 1  # the step being computed (1-based)
            shown = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise NonFiniteLossError(f"non-finite loss at step {step} ({shown}): training stopped before that "
                                     f"step's update; {self._advice()}")
        super().after_loss(state, logger)

    def batch_end(self, state: State, logger: Logger) -> None:
        params = [(n, p) for n, p in _model(state).named_parameters()]
        if not params:
            return
        local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for _, p in params]
        finite = torch.stack([torch.isfinite(t).all() if t.numel() else torch.ones((), dtype=torch.bool,
                                                                                       device=t.device)
                              for t in local])
        if not bool(finite.all()):
            names = [n for (n, _), ok in zip(params, finite.tolist()) if not ok]
            step = int(state.timestamp.batch.value)
            raise NonFiniteLossError(
                f"non-finite weights after the optimizer update of step {step} ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''}) although the loss was finite: training stopped before "
                f"that step's checkpoint; {self._advice()}")


class CompleteOptimizerState(Callback):
    """Gives every optimized parameter its (zero) Adam state before the first step, so checkpoints resume.

    A parameter that never receives a gradient (the CLS pooler, which BGE-M3 does not use; a head whose loss
    weight is 0) never gets DecoupledAdamW state, so Composer's checkpoints lack it, and torch 2.7's
    ``set_optimizer_state_dict`` then fails to load them (``KeyError: 'backbone.pooler.dense.weight'``):
    autoresume would be impossible. The state created here is exactly what DecoupledAdamW creates lazily at a
    parameter's first gradient (step 0, zero moments), so training is unchanged; parameters without a
    gradient are skipped by the optimizer and keep it as it is. State loaded from a checkpoint is kept.
    """

    def fit_start(self, state: State, logger: Logger) -> None:
        from composer.optim import DecoupledAdamW

        for opt in state.optimizers:
            if not isinstance(opt, DecoupledAdamW):
                continue
            for group in opt.param_groups:
                for p in group["params"]:
                    if not p.requires_grad or opt.state.get(p):
                        continue
                    s = {"step": torch.zeros((), dtype=torch.float, device=p.device),
                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                    if group.get("amsgrad"):
                        s["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    opt.state[p] = s


class ReplicatedGradSync(Callback):
    """Averages the gradients of a module that every rank holds whole, outside DDP/FSDP (the L0 module under FSDP).

    Runs after the backward passes of all micro-batches and before the optimizer step (``after_train_batch``).
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def after_train_batch(self, state: State, logger: Logger) -> None:
        world = dist.get_world_size()
        if world == 1:
            return
        for p in self.module.parameters():
            if p.grad is None:  # every rank must join every all-reduce
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)


class JsonlLogger(LoggerDestination):
    """Writes every logged metric as one JSON line per step (for plots and reports).

    Resumable: each checkpoint records how many bytes of the log it covers (``state_dict``). A run resumed
    from that checkpoint first cuts the log back to that length, dropping the rows of the steps after the
    checkpoint that the killed run had logged, then appends; so every step appears once, as in an
    uninterrupted run.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = None
        self._resume_bytes: int | None = None

    def state_dict(self) -> dict[str, Any]:
        if self._file is None:
            return {}
        self._file.flush()
        return {"log_bytes": self._file.tell()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "log_bytes" in state:
            self._resume_bytes = int(state["log_bytes"])

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._file = open(self.path, "a")
        if self._resume_bytes is not None and self._file.tell() > self._resume_bytes:
            self._file.truncate(self._resume_bytes)  # append mode: later writes go to the (new) end
        self._resume_bytes = None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if dist.get_global_rank() != 0:
            return
        if self._file is None:
            self._open()
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
