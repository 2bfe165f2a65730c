"""The three optimizer groups of LLM-Shearing and the learning-rate schedule."""
from __future__ import annotations

from typing import Any

import torch
from composer.optim import (
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    LinearWithWarmupScheduler,
)

from ..models.l0_module import ConfigError


def param_groups(model: torch.nn.Module, lr: float, l0_lr: float, lag_lr: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """Model weights at ``lr``; mask log-alphas at ``l0_lr``; Lagrange multipliers at ``-lag_lr``.

    The negative learning rate turns the optimizer's descent into ascent for the multipliers, which makes
    the Lagrangian a min-max game (LLM-Shearing, after Wang et al. 2020). Masks and multipliers get no
    weight decay: decaying them would bias the sparsity they control.
    """
    l0 = getattr(model, "l0_module", None)
    l0_ids = {id(p) for p in l0.parameters()} if l0 is not None else set()
    main = [p for p in model.parameters() if id(p) not in l0_ids and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": main, "lr": lr, "weight_decay": weight_decay, "name": "model"}]
    if l0 is not None:
        groups.append({"params": l0.mask_parameters(), "lr": l0_lr, "weight_decay": 0.0, "name": "l0_masks"})
        groups.append({"params": l0.lambda_parameters(), "lr": -lag_lr, "weight_decay": 0.0, "name": "lagrangian"})
    return groups


def build_optimizer(model: torch.nn.Module, tcfg: Any) -> torch.optim.Optimizer:
    if tcfg.optimizer != "decoupled_adamw":
        raise ConfigError(f"train.optimizer: only 'decoupled_adamw' is supported, got {tcfg.optimizer!r}")
    # The types and signs (lr, l0_lr, lag_lr >= 0) are checked by bge_pruning.config; the sign of the multipliers'
    # group is applied here.
    lr, lag_lr = tcfg.lr, tcfg.lag_lr
    l0_lr = tcfg.l0_lr if tcfg.l0_lr is not None else lag_lr
    groups = param_groups(model, lr, l0_lr, lag_lr, tcfg.weight_decay)
    # DecoupledAdamW validates only the default lr; the per-group -lag_lr is intended.
    return DecoupledAdamW(groups, lr=lr, betas=tuple(tcfg.betas), eps=tcfg.eps, weight_decay=tcfg.weight_decay)


def build_scheduler(tcfg: Any):
    name, warmup = tcfg.scheduler, tcfg.warmup
    if name == "linear":
        return LinearWithWarmupScheduler(t_warmup=warmup, alpha_f=0.0)
    if name == "cosine":
        return CosineAnnealingWithWarmupScheduler(t_warmup=warmup, alpha_f=0.0)
    if name == "constant":
        return ConstantWithWarmupScheduler(t_warmup=warmup)
    raise ConfigError(f"train.scheduler must be linear, cosine or constant, got {name!r}")
