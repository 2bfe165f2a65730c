"""Hard-concrete L0 masks and the Lagrangian toward an exact target shape (LLM-Shearing's math).

``Mask`` is one group of hard-concrete gates (Louizos et al., 2018) with LLM-Shearing's constants:
stretch limits (-0.1, 1.1), temperature 2/3, log-alpha initialised at 5 (+ N(0, 0.01)) and clamped to
[ln 0.01, ln 100]. Training samples ``z``; evaluation uses ``deterministic_z``, which keeps exactly
``target_mask_size`` units per row (so every kept layer has the same width) with soft values
sigmoid(log_alpha / T * 0.8) on the kept units.

``L0Module`` holds one mask per pruning module (``layer``, ``head``, ``intermediate``), a Lagrangian
term per module with its own lambda_1 / lambda_2 pushing that module's expected sparsity to its target
(warmed up linearly from ``start_sparsity`` over ``lagrangian_warmup_steps``), and the expected
parameter count computed with the same per-unit counts as ``shapes.count_params``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..shapes import (EncoderShape, count_params, params_per_head, params_per_intermediate_unit,
                      params_per_layer_fixed)

LIMIT_A, LIMIT_B, EPS = -0.1, 1.1, 1e-6
TEMPERATURE = 2.0 / 3.0
INIT_MEAN = 5.0  # LLM-Shearing starts every gate almost surely open
MAGICAL_NUMBER = 0.8  # LLM-Shearing's scale of log-alpha in the deterministic soft mask
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
PRUNING_MODULES = ("layer", "head", "intermediate")
DEAD_BELOW = 0.05  # a kept unit whose deterministic value is below this is kept in name only
MAX_SPARSITY_GAP = 0.05  # |expected - target| sparsity per module above which pruning is reported unconverged


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the config key."""


class Mask(nn.Module):
    """A [rows, size] (or [size]) group of hard-concrete gates."""

    def __init__(self, name: str, shape: tuple[int, ...], target_mask_size: int | None,
                 eval_target_model: bool = True) -> None:
        super().__init__()
        self.name = name
        self.z_loga = nn.Parameter(torch.empty(*shape))
        nn.init.normal_(self.z_loga, mean=INIT_MEAN, std=1e-2)
        self.mask_size = shape[-1]
        self.target_mask_size = target_mask_size
        self.eval_target_model = eval_target_model

    @property
    def target_sparsity(self) -> float | None:
        return None if self.target_mask_size is None else 1 - self.target_mask_size / self.mask_size

    def cdf_qz(self, z_loga: torch.Tensor | None = None) -> torch.Tensor:
        """P(gate == 0) under the stretched concrete distribution."""
        z_loga = self.z_loga if z_loga is None else z_loga
        xn = (0 - LIMIT_A) / (LIMIT_B - LIMIT_A)
        logits = math.log(xn) - math.log(1 - xn)
        return torch.sigmoid(logits * TEMPERATURE - z_loga).clamp(min=EPS, max=1 - EPS)

    def expected_score(self) -> torch.Tensor:
        """P(gate != 0) per unit; differentiable in log-alpha."""
        return 1 - self.cdf_qz()

    def expected_sparsity(self) -> torch.Tensor:
        """Expected share of pruned units per row (a scalar for 1-D masks)."""
        return 1 - self.expected_score().sum(-1) / self.mask_size

    def sample_z(self) -> torch.Tensor:
        eps = torch.empty_like(self.z_loga).uniform_(EPS, 1 - EPS)
        y = torch.sigmoid((torch.log(eps) - torch.log(1 - eps) + self.z_loga) / TEMPERATURE)
        return F.hardtanh(y * (LIMIT_B - LIMIT_A) + LIMIT_A, min_val=0.0, max_val=1.0)

    def _deterministic_row(self, z_loga: torch.Tensor) -> torch.Tensor:
        if self.target_mask_size is None or not self.eval_target_model:
            expected_zeros = z_loga.numel() - (1 - self.cdf_qz(z_loga)).sum().item()
        else:
            expected_zeros = self.mask_size - self.target_mask_size
        if not math.isfinite(expected_zeros):
            raise FloatingPointError(f"mask '{self.name}': log-alpha is not finite")
        num_zeros = round(expected_zeros)
        soft = torch.sigmoid(z_loga / TEMPERATURE * MAGICAL_NUMBER)
        if num_zeros > 0:
            _, idx = torch.topk(soft, k=num_zeros, largest=False)
            soft = soft.clone()
            soft[idx] = 0.0
        return soft

    @torch.no_grad()
    def deterministic_z(self) -> torch.Tensor:
        # Read through the clamp: between an optimizer step and the next forward (which clamps in place) the
        # log-alphas can sit past [ln 0.01, ln 100], and the deterministic mask must not depend on when it is read.
        rows = self.z_loga.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX).reshape(-1, self.mask_size)
        return torch.stack([self._deterministic_row(r) for r in rows]).reshape(self.z_loga.shape)

    @torch.no_grad()
    def constrain_parameters(self) -> None:
        self.z_loga.clamp_(min=LOG_ALPHA_MIN, max=LOG_ALPHA_MAX)

    def forward(self) -> torch.Tensor:
        return self.sample_z() if self.training else self.deterministic_z()


@dataclass(frozen=True)
class TargetShape:
    n_layers: int
    n_heads: int
    intermediate_size: int


def parse_target(cfg: Mapping[str, Any] | None, base: EncoderShape, key: str = "l0_module.target_model") -> TargetShape:
    """Validate ``target_model: {n_layers, n_heads, intermediate_size}`` against the base shape."""
    if cfg is None:
        raise ConfigError(f"{key} is required: give n_layers, n_heads and intermediate_size of the pruned model")
    if not base.is_uniform:
        raise ConfigError("the base model must have the same width in every layer to be pruned toward a target")
    limits = {"n_layers": base.n_layers, "n_heads": base.heads_per_layer[0],
              "intermediate_size": base.intermediate_per_layer[0]}
    unknown = sorted(set(cfg) - set(limits))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; valid keys are {sorted(limits)}")
    values = {}
    for name, limit in limits.items():
        if name not in cfg:
            raise ConfigError(f"{key}.{name} is required (base model has {limit})")
        v = cfg[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
            raise ConfigError(f"{key}.{name} must be a whole number of units, got {v!r}")
        v = int(v)
        if not 1 <= v <= limit:
            raise ConfigError(f"{key}.{name} = {v} is outside 1..{limit} (the base model has {limit})")
        values[name] = v
    return TargetShape(**values)


class L0Module(nn.Module):
    """Masks for layers, heads and intermediate units with a per-module Lagrangian."""

    def __init__(self, base: EncoderShape, target: TargetShape, pruning_modules: tuple[str, ...] = PRUNING_MODULES,
                 start_sparsity: float = 0.0, lagrangian_warmup_steps: int = 0, eval_target_model: bool = True) -> None:
        super().__init__()
        unknown = [m for m in pruning_modules if m not in PRUNING_MODULES]
        if unknown:
            raise ConfigError(f"l0_module.pruning_modules: unknown module(s) {unknown}; valid: {list(PRUNING_MODULES)}")
        self.base = base
        self.target = target
        self.target_shape = base.with_target(target.n_layers if "layer" in pruning_modules else base.n_layers,
                                             target.n_heads if "head" in pruning_modules else base.heads_per_layer[0],
                                             target.intermediate_size if "intermediate" in pruning_modules
                                             else base.intermediate_per_layer[0])
        self.pruning_modules = tuple(pruning_modules)
        self.start_sparsity = float(start_sparsity)
        self.lagrangian_warmup_steps = int(lagrangian_warmup_steps)
        # The current training step; set by PruningCallback (never smuggled through the batch).
        self.current_step = 0

        L, H, I = base.n_layers, base.heads_per_layer[0], base.intermediate_per_layer[0]
        shapes = {"layer": ((L,), target.n_layers), "head": ((L, H), target.n_heads),
                  "intermediate": ((L, I), target.intermediate_size)}
        self.masks = nn.ModuleDict({m: Mask(m, shapes[m][0], shapes[m][1], eval_target_model)
                                    for m in self.pruning_modules})
        self.lambdas = nn.ParameterDict()
        for m in self.pruning_modules:
            self.lambdas[f"lambda_1_{m}"] = nn.Parameter(torch.tensor(0.0))
            self.lambdas[f"lambda_2_{m}"] = nn.Parameter(torch.tensor(0.0))

        d = base.hidden_size
        self.params_per_head = params_per_head(d, base.head_dim)
        self.params_per_intermediate_unit = params_per_intermediate_unit(d)
        self.params_per_layer_fixed = params_per_layer_fixed(d)
        self.prunable_model_size = count_params(base).encoder_layers
        self.target_model_size = count_params(self.target_shape).encoder_layers
        self.target_sparsity = 1 - self.target_model_size / self.prunable_model_size

    # ------------------------------------------------------------------ parameters
    def mask_parameters(self) -> list[nn.Parameter]:
        return [m.z_loga for m in self.masks.values()]

    def lambda_parameters(self) -> list[nn.Parameter]:
        return list(self.lambdas.values())

    def constrain_parameters(self) -> None:
        for mask in self.masks.values():
            mask.constrain_parameters()

    # ------------------------------------------------------------------ sparsity and size
    def _scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expected keep-probabilities as [L], [L, H], [L, I] (ones for modules not pruned)."""
        L, H, I = self.base.n_layers, self.base.heads_per_layer[0], self.base.intermediate_per_layer[0]
        ref = next(iter(self.masks.values())).z_loga
        ones = lambda *s: torch.ones(*s, device=ref.device, dtype=ref.dtype)  # noqa: E731
        layer = self.masks["layer"].expected_score() if "layer" in self.masks else ones(L)
        head = self.masks["head"].expected_score() if "head" in self.masks else ones(L, H)
        inter = self.masks["intermediate"].expected_score() if "intermediate" in self.masks else ones(L, I)
        return layer, head, inter

    def expected_num_params(self) -> torch.Tensor:
        """Expected encoder-layer parameter count, with the per-unit counts of ``count_params``."""
        layer, head, inter = self._scores()
        per_layer = (head.sum(-1) * self.params_per_head + inter.sum(-1) * self.params_per_intermediate_unit
                     + self.params_per_layer_fixed)
        return (layer * per_layer).sum()

    def get_target_sparsity(self, step: int, full_sparsity: float) -> float:
        if self.lagrangian_warmup_steps > 0:
            frac = min(1.0, step / self.lagrangian_warmup_steps)
            return self.start_sparsity + (full_sparsity - self.start_sparsity) * frac
        return full_sparsity

    def lagrangian_regularization(self, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over modules of lambda_1 (s - t) + lambda_2 (s - t)^2 and the metrics to log."""
        step = self.current_step if step is None else step
        loss = torch.zeros((), device=self.lambdas[f"lambda_1_{self.pruning_modules[0]}"].device)
        metrics: dict[str, float] = {}
        for name, mask in self.masks.items():
            expected = mask.expected_sparsity()
            target = self.get_target_sparsity(step, mask.target_sparsity)
            diff = expected - target
            loss = loss + (self.lambdas[f"lambda_1_{name}"] * diff + self.lambdas[f"lambda_2_{name}"] * diff ** 2).mean()
            metrics[f"expected_{name}_sparsity"] = expected.mean().item()
            metrics[f"target_{name}_sparsity"] = target
            metrics[f"lambda_1_{name}"] = self.lambdas[f"lambda_1_{name}"].item()
            metrics[f"lambda_2_{name}"] = self.lambdas[f"lambda_2_{name}"].item()
        expected_size = self.expected_num_params()
        metrics["expected_num_params"] = expected_size.item()
        metrics["target_num_params"] = float(self.target_model_size)
        metrics["expected_sparsity"] = 1 - expected_size.item() / self.prunable_model_size
        metrics["target_sparsity"] = self.get_target_sparsity(step, self.target_sparsity)
        return loss, metrics

    # ------------------------------------------------------------------ masks
    def forward(self) -> dict[str, torch.Tensor]:
        """Sampled masks when training, deterministic masks at eval: ``{layer_z, head_z, intermediate_z}``."""
        self.constrain_parameters()
        if self.training:
            return {f"{name}_z": mask.sample_z() for name, mask in self.masks.items()}
        return self.deterministic_zs()

    @torch.no_grad()
    def deterministic_zs(self) -> dict[str, torch.Tensor]:
        zs = {f"{name}_z": mask.deterministic_z() for name, mask in self.masks.items()}
        if "layer_z" in zs:
            # Post-LN layers cannot fold a soft layer value into weights (see MaskedBGEM3Backbone),
            # so kept layers are exactly 1 and dropped layers exactly 0.
            zs["layer_z"] = (zs["layer_z"] > 0).to(zs["layer_z"].dtype)
        return zs

    @torch.no_grad()
    def convergence_report(self, dead_below: float = DEAD_BELOW, max_gap: float = MAX_SPARSITY_GAP) -> dict[str, Any]:
        """How far the masks are from the target when they are cut: per module |expected - target| sparsity
        (the full target, not the warmup's) and the share of kept units whose deterministic value is below
        ``dead_below`` (exported at almost zero scale: kept in name only). ``converged`` is False, with the
        reasons in ``warnings``, when a gap exceeds ``max_gap`` or more than 5% of a module's kept units are dead."""
        zs = self.deterministic_zs()
        modules: dict[str, Any] = {}
        warnings: list[str] = []
        for name, mask in self.masks.items():
            expected = float(mask.expected_sparsity().mean())
            target = float(mask.target_sparsity) if mask.target_sparsity is not None else expected
            z = zs[f"{name}_z"]
            kept = z[z != 0]
            dead = float((kept < dead_below).float().mean()) if kept.numel() and name != "layer" else 0.0
            modules[name] = {"expected_sparsity": expected, "target_sparsity": target,
                             "gap": abs(expected - target), "kept_units": int(kept.numel()),
                             "dead_share": dead}
            if abs(expected - target) > max_gap:
                warnings.append(f"{name} masks: expected sparsity {expected:.3f} vs target {target:.3f}: the "
                                "Lagrangian had not converged when the masks were cut (train longer, or raise lag_lr)")
            if dead > 0.05:
                warnings.append(f"{name} masks: {dead:.1%} of the kept units have a deterministic value below "
                                f"{dead_below}; they are exported at almost zero scale")
        return {"modules": modules, "dead_below": dead_below, "max_gap": max_gap,
                "converged": not warnings, "warnings": warnings}

    def expected_shape(self) -> EncoderShape:
        """The shape the deterministic masks produce now."""
        zs = self.deterministic_zs()
        L = self.base.n_layers
        layers = zs["layer_z"] if "layer_z" in zs else torch.ones(L)
        heads = (zs["head_z"] != 0).sum(-1) if "head_z" in zs else torch.full((L,), self.base.heads_per_layer[0])
        inter = ((zs["intermediate_z"] != 0).sum(-1) if "intermediate_z" in zs
                 else torch.full((L,), self.base.intermediate_per_layer[0]))
        keep = [i for i in range(L) if layers[i] != 0]
        return EncoderShape(hidden_size=self.base.hidden_size, head_dim=self.base.head_dim,
                            heads_per_layer=tuple(int(heads[i]) for i in keep),
                            intermediate_per_layer=tuple(int(inter[i]) for i in keep),
                            vocab_size=self.base.vocab_size, max_position_embeddings=self.base.max_position_embeddings,
                            type_vocab_size=self.base.type_vocab_size, has_pooler=self.base.has_pooler)
