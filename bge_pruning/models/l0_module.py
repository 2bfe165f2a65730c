"""Hard-concrete L0 masks and the Lagrangian toward an exact target shape (LLM-Shearing's math).

``Mask`` is one group of hard-concrete gates (Louizos et al., 2018) with LLM-Shearing's constants:
stretch limits (-0.1, 1.1), temperature 2/3, log-alpha initialised at 5 (+ N(0, 0.01)) and clamped to
[ln 0.01, ln 100]. Training samples ``z``; evaluation uses ``deterministic_z``, which keeps exactly
``target_mask_size`` units per row (so every kept layer has the same width) with soft values
sigmoid(log_alpha / T * 0.8) on the kept units.

``L0Module`` holds one mask per pruning module (``layer``, ``head``, ``intermediate``, and CoFi's sublayer
gates ``head_layer`` / ``mlp``, one per layer's attention / FFN sublayer) and the expected parameter count
computed with the same per-unit counts as ``shapes.count_params``. Two kinds of target:

* a uniform target shape (``TargetShape``, LLM-Shearing): a Lagrangian term per module with its own
  lambda_1 / lambda_2 pushing that module's expected sparsity to its target, and deterministic masks that
  keep exactly the target number of units in every row;
* a global target (``GlobalTarget``: a number of encoder-layer parameters, CoFi): ONE Lagrangian
  ``lambda_1 (s - t) + lambda_2 (s - t)^2`` on the expected sparsity ``s`` of all encoder-layer parameters;
  widths and depth are free per layer. Deterministic masks: see ``L0Module.deterministic_zs``.

Both warm the target sparsity up linearly from ``start_sparsity`` over ``lagrangian_warmup_steps``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..shapes import (
    EncoderShape,
    count_params,
    layer_params,
    params_per_attention_fixed,
    params_per_ffn_fixed,
    params_per_head,
    params_per_intermediate_unit,
    params_per_layer_fixed,
)

LIMIT_A, LIMIT_B, EPS = -0.1, 1.1, 1e-6
TEMPERATURE = 2.0 / 3.0
INIT_MEAN = 5.0  # LLM-Shearing starts every gate almost surely open
MAGICAL_NUMBER = 0.8  # LLM-Shearing's scale of log-alpha in the deterministic soft mask
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
PRUNING_MODULES = ("layer", "head", "intermediate", "head_layer", "mlp")
DEFAULT_PRUNING_MODULES = ("layer", "head", "intermediate")
SUBLAYER_MODULES = ("head_layer", "mlp")  # binary per-layer gates around the attention / FFN sublayer
GLOBAL_KEYS = ("n_params", "share")  # target_model keys of a global target
SHAPE_KEYS = ("n_layers", "n_heads", "intermediate_size")  # target_model keys of a uniform target shape
DEAD_BELOW = 0.05  # a kept unit whose deterministic value is below this is kept in name only
MAX_SPARSITY_GAP = 0.05  # |expected - target| sparsity per module above which pruning is reported unconverged


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


@dataclass(frozen=True)
class GlobalTarget:
    """A target number of encoder-layer parameters (``share`` of the base's), shape left free.

    ``given`` is the spelling the config used (``{"n_params": N}`` or ``{"share": s}``)."""

    n_params: int
    share: float
    given: Mapping[str, Any]


def parse_target(cfg: Mapping[str, Any] | None, base: EncoderShape,
                 key: str = "l0_module.target_model") -> TargetShape | GlobalTarget:
    """Validate ``target_model`` against the base shape: ``{n_layers, n_heads, intermediate_size}`` (a uniform
    target shape) or exactly one of ``{n_params: N}`` / ``{share: s}`` (a global target, ``GlobalTarget``)."""
    if cfg is None:
        raise ConfigError(f"{key} is required: give n_layers, n_heads and intermediate_size of the pruned model "
                          "(or n_params / share for a global target)")
    if not base.is_uniform:
        raise ConfigError("the base model must have the same width in every layer to be pruned toward a target")
    given = {k: v for k, v in cfg.items() if v is not None}
    if any(k in given for k in GLOBAL_KEYS):
        return _parse_global_target(given, base, key)
    limits = {"n_layers": base.n_layers, "n_heads": base.heads_per_layer[0],
              "intermediate_size": base.intermediate_per_layer[0]}
    unknown = sorted(set(cfg) - set(limits) - set(GLOBAL_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; valid keys are {sorted(limits)}")
    values = {}
    for name, limit in limits.items():
        if name not in cfg:
            raise ConfigError(f"{key}.{name} is required (base model has {limit})")
        v = cfg[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or float(v) != int(v):
            raise ConfigError(f"{key}.{name} must be a whole number of units, got {v!r}")
        v = int(v)
        if not 1 <= v <= limit:
            raise ConfigError(f"{key}.{name} = {v} is outside 1..{limit} (the base model has {limit})")
        values[name] = v
    return TargetShape(**values)


def _parse_global_target(cfg: Mapping[str, Any], base: EncoderShape, key: str) -> GlobalTarget:
    mixed = sorted(k for k in cfg if k in SHAPE_KEYS)
    unknown = sorted(set(cfg) - set(SHAPE_KEYS) - set(GLOBAL_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; a global target is {{n_params: N}} or {{share: s}}")
    if mixed or all(k in cfg for k in GLOBAL_KEYS):
        both = sorted(set(cfg) & set(GLOBAL_KEYS)) + mixed
        raise ConfigError(f"{key}: give one of n_params or share (a global target) or n_layers, n_heads and "
                          f"intermediate_size (a uniform shape), not {both}")
    full = count_params(base).encoder_layers
    d, dh = base.hidden_size, base.head_dim
    smallest = layer_params(d, dh, 1, 1)  # one layer with one head and one FFN unit
    if "share" in cfg:
        v = cfg["share"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < float(v) <= 1:
            raise ConfigError(f"{key}.share must be a number in (0, 1] (the kept share of encoder-layer "
                              f"parameters), got {v!r}")
        n_params = int(round(float(v) * full))
        if n_params < smallest:
            raise ConfigError(f"{key}.share = {v} keeps {n_params:,} parameters, fewer than one layer with one head "
                              f"and one FFN unit ({smallest:,})")
        return GlobalTarget(n_params=n_params, share=n_params / full, given={"share": float(v)})
    v = cfg["n_params"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or float(v) != int(v):
        raise ConfigError(f"{key}.n_params must be a whole number of encoder-layer parameters, got {v!r}")
    v = int(v)
    if not smallest <= v <= full:
        raise ConfigError(f"{key}.n_params = {v:,} is outside {smallest:,}..{full:,} (one layer with one head and "
                          f"one FFN unit .. the base model's encoder-layer parameters)")
    return GlobalTarget(n_params=v, share=v / full, given={"n_params": v})


class L0Module(nn.Module):
    """Masks for layers, heads, intermediate units (and whole attention / FFN sublayers) with a Lagrangian per
    module toward a uniform target shape, or one Lagrangian on the encoder's expected size (global target)."""

    def __init__(self, base: EncoderShape, target: TargetShape | GlobalTarget,
                 pruning_modules: tuple[str, ...] = DEFAULT_PRUNING_MODULES, start_sparsity: float = 0.0,
                 lagrangian_warmup_steps: int = 0, eval_target_model: bool = True) -> None:
        super().__init__()
        unknown = [m for m in pruning_modules if m not in PRUNING_MODULES]
        if unknown:
            raise ConfigError(f"l0_module.pruning_modules: unknown module(s) {unknown}; valid: {list(PRUNING_MODULES)}")
        if not pruning_modules:
            raise ConfigError(f"l0_module.pruning_modules is empty; choose from {list(PRUNING_MODULES)}")
        self.global_mode = isinstance(target, GlobalTarget)
        sublayers = [m for m in pruning_modules if m in SUBLAYER_MODULES]
        if sublayers and not self.global_mode:
            raise ConfigError(f"l0_module.pruning_modules: {sublayers} need a global target (model.l0_module."
                              "target_model: {n_params: N} or {share: s}); a uniform target shape keeps every sublayer")
        self.base = base
        self.target = target
        self.pruning_modules = tuple(pruning_modules)
        self.start_sparsity = float(start_sparsity)
        self.lagrangian_warmup_steps = int(lagrangian_warmup_steps)
        self.eval_target_model = bool(eval_target_model)
        # The current training step; set by PruningCallback (never smuggled through the batch).
        self.current_step = 0

        L, H, I = base.n_layers, base.heads_per_layer[0], base.intermediate_per_layer[0]
        shapes = {"layer": (L,), "head": (L, H), "intermediate": (L, I), "head_layer": (L,), "mlp": (L,)}
        if self.global_mode:
            self.target_shape = None  # widths and depth are free per layer
            sizes: dict[str, int | None] = {m: None for m in PRUNING_MODULES}
        else:
            self.target_shape = base.with_target(target.n_layers if "layer" in pruning_modules else L,
                                                 target.n_heads if "head" in pruning_modules else H,
                                                 target.intermediate_size if "intermediate" in pruning_modules else I)
            sizes = {"layer": target.n_layers, "head": target.n_heads, "intermediate": target.intermediate_size}
        self.masks = nn.ModuleDict({m: Mask(m, shapes[m], sizes[m], eval_target_model) for m in self.pruning_modules})
        self.lambdas = nn.ParameterDict()
        for suffix in ([""] if self.global_mode else [f"_{m}" for m in self.pruning_modules]):
            self.lambdas[f"lambda_1{suffix}"] = nn.Parameter(torch.tensor(0.0))
            self.lambdas[f"lambda_2{suffix}"] = nn.Parameter(torch.tensor(0.0))

        d = base.hidden_size
        self.params_per_head = params_per_head(d, base.head_dim)
        self.params_per_intermediate_unit = params_per_intermediate_unit(d)
        self.params_per_layer_fixed = params_per_layer_fixed(d)
        self.params_per_attention_fixed = params_per_attention_fixed(d)
        self.params_per_ffn_fixed = params_per_ffn_fixed(d)
        self.prunable_model_size = count_params(base).encoder_layers
        self.target_model_size = (target.n_params if self.global_mode
                                  else count_params(self.target_shape).encoder_layers)
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
    def _scores(self) -> dict[str, torch.Tensor]:
        """Expected keep-probabilities: layer [L], head [L, H], intermediate [L, I], head_layer [L], mlp [L]
        (ones for modules not pruned)."""
        L, H, I = self.base.n_layers, self.base.heads_per_layer[0], self.base.intermediate_per_layer[0]
        ref = next(iter(self.masks.values())).z_loga
        shapes = {"layer": (L,), "head": (L, H), "intermediate": (L, I), "head_layer": (L,), "mlp": (L,)}
        return {m: (self.masks[m].expected_score() if m in self.masks
                    else torch.ones(*shapes[m], device=ref.device, dtype=ref.dtype)) for m in PRUNING_MODULES}

    def expected_num_params(self) -> torch.Tensor:
        """Expected encoder-layer parameter count, with the per-unit counts of ``count_params``:
        sum over layers of
        P(layer) * (P(attention) * (E[heads] * per_head + 3d) + P(FFN) * (E[units] * per_unit + 3d))."""
        s = self._scores()
        heads = s["head"].sum(-1) * self.params_per_head
        inter = s["intermediate"].sum(-1) * self.params_per_intermediate_unit
        if not any(m in self.masks for m in SUBLAYER_MODULES):
            # The original expression, term for term: without sublayer gates the sums (and so the training) are
            # bit-identical to what they were before sublayer gates existed.
            return (s["layer"] * (heads + inter + self.params_per_layer_fixed)).sum()
        per_layer = (s["head_layer"] * (heads + self.params_per_attention_fixed)
                     + s["mlp"] * (inter + self.params_per_ffn_fixed))
        return (s["layer"] * per_layer).sum()

    def get_target_sparsity(self, step: int, full_sparsity: float) -> float:
        if self.lagrangian_warmup_steps > 0:
            frac = min(1.0, step / self.lagrangian_warmup_steps)
            return self.start_sparsity + (full_sparsity - self.start_sparsity) * frac
        return full_sparsity

    def lagrangian_regularization(self, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Uniform target: sum over modules of lambda_1 (s - t) + lambda_2 (s - t)^2 on each module's sparsity.
        Global target: one such term on the expected sparsity of all encoder-layer parameters. Returns the
        loss and the metrics to log."""
        step = self.current_step if step is None else step
        expected_size = self.expected_num_params()
        metrics: dict[str, float] = {}
        if self.global_mode:
            expected = 1 - expected_size / self.prunable_model_size
            target = self.get_target_sparsity(step, self.target_sparsity)
            diff = expected - target
            loss = self.lambdas["lambda_1"] * diff + self.lambdas["lambda_2"] * diff ** 2
            for name, mask in self.masks.items():
                metrics[f"expected_{name}_sparsity"] = mask.expected_sparsity().mean().item()
            metrics["lambda_1"] = self.lambdas["lambda_1"].item()
            metrics["lambda_2"] = self.lambdas["lambda_2"].item()
        else:
            loss = torch.zeros((), device=self.lambdas[f"lambda_1_{self.pruning_modules[0]}"].device)
            for name, mask in self.masks.items():
                expected = mask.expected_sparsity()
                target = self.get_target_sparsity(step, mask.target_sparsity)
                diff = expected - target
                loss = loss + (self.lambdas[f"lambda_1_{name}"] * diff
                               + self.lambdas[f"lambda_2_{name}"] * diff ** 2).mean()
                metrics[f"expected_{name}_sparsity"] = expected.mean().item()
                metrics[f"target_{name}_sparsity"] = target
                metrics[f"lambda_1_{name}"] = self.lambdas[f"lambda_1_{name}"].item()
                metrics[f"lambda_2_{name}"] = self.lambdas[f"lambda_2_{name}"].item()
        metrics["expected_num_params"] = expected_size.item()
        metrics["target_num_params"] = float(self.target_model_size)
        metrics["expected_sparsity"] = 1 - expected_size.item() / self.prunable_model_size
        metrics["target_sparsity"] = self.get_target_sparsity(step, self.target_sparsity)
        return loss, metrics

    # ------------------------------------------------------------------ masks
    def forward(self) -> dict[str, torch.Tensor]:
        """Sampled masks when training, deterministic masks at eval: ``{layer_z, head_z, intermediate_z, ...}``."""
        self.constrain_parameters()
        if self.training:
            return {f"{name}_z": mask.sample_z() for name, mask in self.masks.items()}
        return self.deterministic_zs()

    @torch.no_grad()
    def deterministic_zs(self) -> dict[str, torch.Tensor]:
        """The masks to prune with.

        Uniform target: every row keeps exactly its target number of units (the highest log-alphas) with the
        soft value sigmoid(log_alpha / T * 0.8); the layer mask is then made binary.

        Global target: first the binary gates (``layer``, ``head_layer``, ``mlp``): each keeps its expected
        number of gates, round(sum of P(z != 0)), the highest-scored (the rule of the layer mask without a
        target). Then the heads and FFN units of the kept sublayers, by ``eval_target_model``:

        * True (default), the budget rule: all those units are ranked together by P(z != 0) (log-alphas read
          through the clamp; ties in index order, heads before FFN units) and kept in that order while the
          encoder-layer size (the kept sublayers' fixed 3d each plus the kept units) stays within the target:
          the walk stops at the first unit that does not fit. So the kept size is at most the target and
          below it by less than that next unit's size (one head or one FFN unit), unless the kept layers' and
          sublayers' fixed parameters alone exceed it (``convergence_report`` says so);
        * False, CoFi's rule: each row keeps its expected number of units, round(sum of P(z != 0)).

        Kept units carry the soft value as above; units of removed layers / sublayers are 0.
        """
        zs = {f"{name}_z": mask.deterministic_z() for name, mask in self.masks.items()}
        if not self.global_mode:
            if "layer_z" in zs:
                # Post-LN layers cannot fold a soft layer value into weights (see MaskedBGEM3Backbone),
                # so kept layers are exactly 1 and dropped layers exactly 0.
                zs["layer_z"] = (zs["layer_z"] > 0).to(zs["layer_z"].dtype)
            return zs
        for name in ("layer", "head_layer", "mlp"):
            if f"{name}_z" in zs:
                zs[f"{name}_z"] = (zs[f"{name}_z"] > 0).to(zs[f"{name}_z"].dtype)
        att_on, ffn_on = self._sublayers_on(zs)
        if self.eval_target_model:
            for name, units in self._budget_units(att_on, ffn_on).items():
                mask = self.masks[name]
                soft = torch.sigmoid(mask.z_loga.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX) / TEMPERATURE * MAGICAL_NUMBER)
                zs[f"{name}_z"] = torch.where(units, soft, torch.zeros_like(soft))
        for name, on in (("head", att_on), ("intermediate", ffn_on)):
            if f"{name}_z" in zs:
                zs[f"{name}_z"] = zs[f"{name}_z"] * on.to(zs[f"{name}_z"].dtype).unsqueeze(-1)
        return zs

    def _sublayers_on(self, zs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layer: is its attention / FFN sublayer kept (its layer kept and its own gate open)?"""
        L = self.base.n_layers
        on = lambda key: zs[key].reshape(L) != 0 if key in zs else torch.ones(L, dtype=torch.bool)  # noqa: E731
        return on("layer_z") & on("head_layer_z"), on("layer_z") & on("mlp_z")

    def _fixed_params(self, att_on: torch.Tensor, ffn_on: torch.Tensor) -> int:
        """Parameters of the kept sublayers that the budget rule does not choose: their 3d each, and all their
        heads / units when heads / intermediate units are not pruned."""
        n_att, n_ffn = int(att_on.sum()), int(ffn_on.sum())
        fixed = n_att * self.params_per_attention_fixed + n_ffn * self.params_per_ffn_fixed
        if "head" not in self.masks:
            fixed += n_att * self.base.heads_per_layer[0] * self.params_per_head
        if "intermediate" not in self.masks:
            fixed += n_ffn * self.base.intermediate_per_layer[0] * self.params_per_intermediate_unit
        return fixed

    def _budget_units(self, att_on: torch.Tensor, ffn_on: torch.Tensor) -> dict[str, torch.Tensor]:
        """The budget rule of ``deterministic_zs``: boolean [L, H] / [L, I] of the kept heads / FFN units."""
        budget = self.target_model_size - self._fixed_params(att_on, ffn_on)
        parts = [(name, on, cost) for name, on, cost in (("head", att_on, self.params_per_head),
                                                       ("intermediate", ffn_on, self.params_per_intermediate_unit))
                 if name in self.masks]
        if not parts:  # only layer / sublayer gates are pruned: no unit to choose
            return {}
        scores, costs, eligible = [], [], []
        for name, on, cost in parts:
            mask = self.masks[name]
            score = 1 - mask.cdf_qz(mask.z_loga.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX))
            scores.append(score.flatten().float().cpu())
            costs.append(torch.full((score.numel(),), cost, dtype=torch.int64))
            eligible.append(on.cpu().unsqueeze(-1).expand_as(score.cpu()).flatten())
        score, cost, ok = torch.cat(scores), torch.cat(costs), torch.cat(eligible)
        candidates = torch.nonzero(ok).flatten()
        order = candidates[torch.sort(score[candidates], descending=True, stable=True).indices]
        n_keep = int((torch.cumsum(cost[order], 0) <= budget).sum()) if budget > 0 else 0
        kept = torch.zeros(score.numel(), dtype=torch.bool)
        kept[order[:n_keep]] = True
        out, start = {}, 0
        for name, _, _ in parts:
            z = self.masks[name].z_loga
            out[name] = kept[start:start + z.numel()].reshape(z.shape).to(z.device)
            start += z.numel()
        return out

    @torch.no_grad()
    def deterministic_num_params(self) -> int:
        """Encoder-layer parameters of the model the deterministic masks produce (``count_params``)."""
        return count_params(self.expected_shape()).encoder_layers

    @torch.no_grad()
    def convergence_report(self, dead_below: float = DEAD_BELOW, max_gap: float = MAX_SPARSITY_GAP) -> dict[str, Any]:
        """How far the masks are from the target when they are cut: per module |expected - target| sparsity
        (the full target, not the warmup's; for a global target, of the whole encoder) and the share of kept
        units whose deterministic value is below ``dead_below`` (exported at almost zero scale: kept in name
        only). ``converged`` is False, with the reasons in ``warnings``, when a gap exceeds ``max_gap`` or more
        than 5% of a module's kept units are dead. A global target also reports the achieved size
        (``global``: target, expected and achieved parameters and shares) and warns when the kept layers'
        and sublayers' fixed parameters alone exceed the target."""
        zs = self.deterministic_zs()
        modules: dict[str, Any] = {}
        warnings: list[str] = []
        for name, mask in self.masks.items():
            expected = float(mask.expected_sparsity().mean())
            z = zs[f"{name}_z"]
            kept = z[z != 0]
            binary = name in ("layer",) + SUBLAYER_MODULES
            dead = float((kept < dead_below).float().mean()) if kept.numel() and not binary else 0.0
            entry = {"expected_sparsity": expected, "kept_units": int(kept.numel()), "dead_share": dead}
            if not self.global_mode:
                target = float(mask.target_sparsity) if mask.target_sparsity is not None else expected
                entry.update(target_sparsity=target, gap=abs(expected - target))
                if abs(expected - target) > max_gap:
                    warnings.append(f"{name} masks: expected sparsity {expected:.3f} vs target {target:.3f}: the "
                                    "Lagrangian had not converged when the masks were cut (train longer, or raise "
                                    "lag_lr)")
            modules[name] = entry
            if dead > 0.05:
                warnings.append(f"{name} masks: {dead:.1%} of the kept units have a deterministic value below "
                                f"{dead_below}; they are exported at almost zero scale")
        report: dict[str, Any] = {"modules": modules, "dead_below": dead_below, "max_gap": max_gap}
        if self.global_mode:
            expected_size = float(self.expected_num_params())
            expected = 1 - expected_size / self.prunable_model_size
            achieved = self.deterministic_num_params()
            gap = abs(expected - self.target_sparsity)
            report["global"] = {
                "rule": "budget" if self.eval_target_model else "expected_units",
                "target_n_params": self.target_model_size, "target_share": 1 - self.target_sparsity,
                "expected_n_params": expected_size, "expected_share": 1 - expected,
                "achieved_n_params": achieved, "achieved_share": achieved / self.prunable_model_size,
                "expected_sparsity": expected, "target_sparsity": self.target_sparsity, "gap": gap}
            if gap > max_gap:
                warnings.append(f"encoder expected sparsity {expected:.3f} vs target {self.target_sparsity:.3f}: the "
                                "Lagrangian had not converged when the masks were cut (train longer, or raise lag_lr)")
            if self.eval_target_model and achieved > self.target_model_size:
                warnings.append(f"the kept layers' and sublayers' fixed parameters alone exceed the target: "
                                f"{achieved:,} kept vs {self.target_model_size:,}")
        report.update(converged=not warnings, warnings=warnings)
        return report

    def expected_shape(self) -> EncoderShape:
        """The shape the deterministic masks produce now (a layer whose sublayers are both removed is dropped)."""
        zs = self.deterministic_zs()
        L = self.base.n_layers
        att_on, ffn_on = self._sublayers_on(zs)
        heads = (zs["head_z"] != 0).sum(-1) if "head_z" in zs else torch.full((L,), self.base.heads_per_layer[0])
        inter = ((zs["intermediate_z"] != 0).sum(-1) if "intermediate_z" in zs
                 else torch.full((L,), self.base.intermediate_per_layer[0]))
        keep = [i for i in range(L) if att_on[i] or ffn_on[i]]
        # replace(): everything else (vocabulary, MPNet's bias table, ...) is the base's.
        return dataclasses.replace(self.base,
                                   heads_per_layer=tuple(int(heads[i]) if att_on[i] else 0 for i in keep),
                                   intermediate_per_layer=tuple(int(inter[i]) if ffn_on[i] else 0 for i in keep),
                                   attention_kept_per_layer=tuple(bool(att_on[i]) for i in keep),
                                   ffn_kept_per_layer=tuple(bool(ffn_on[i]) for i in keep))
