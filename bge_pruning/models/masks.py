"""Deterministic pruning masks, checked once against the backbone they prune.

The L0 module (``L0Module.deterministic_zs``), the layer-drop baseline and the tests hand the exporter and
``MaskedBGEM3Backbone.prune_params`` a plain dict of masks. ``validate_masks`` turns it into ``Masks`` after
checking every key, row count, width and value against the backbone; code that receives a ``Masks`` does not
check again. LLM-Shearing's names:

* ``head_z`` [L][H_l]: per-head scale folded into ``attention.output.dense``;
* ``intermediate_z`` [L][I_l]: per-unit scale folded into ``output.dense``;
* ``layer_z`` [L], ``head_layer_z`` [L], ``mlp_z`` [L]: binary gates around a post-LayerNorm layer / attention
  sublayer / FFN sublayer. ``z * block(x) + (1 - z) * x`` cannot be folded into weights for 0 < z < 1, so these
  must be exactly 0 or 1 (the L0 module's deterministic gates are).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..errors import MaskError

MASK_KEYS = ("head_z", "intermediate_z", "layer_z", "head_layer_z", "mlp_z")
ROW_KEYS = ("head_z", "intermediate_z")  # one row per layer, each as wide as that layer's heads / FFN units
GATE_KEYS = ("layer_z", "head_layer_z", "mlp_z")  # binary per-layer gates around post-LN blocks


@dataclass(frozen=True)
class Masks:
    """Masks that ``validate_masks`` checked against one backbone (float32, on the backbone's device).

    Args:
        head_z: one row per layer, as long as that layer's number of heads (None: keep every head).
        intermediate_z: one row per layer, as long as that layer's FFN width (None: keep every unit).
        layer_z: [L] of 0/1 (None: keep every layer).
        head_layer_z: [L] of 0/1, the attention sublayer gates (None: keep every attention sublayer).
        mlp_z: [L] of 0/1, the FFN sublayer gates (None: keep every FFN sublayer).
    """

    head_z: tuple[torch.Tensor, ...] | None = None
    intermediate_z: tuple[torch.Tensor, ...] | None = None
    layer_z: torch.Tensor | None = None
    head_layer_z: torch.Tensor | None = None
    mlp_z: torch.Tensor | None = None

    def get(self, key: str, default: Any = None) -> Any:
        """``masks.get("head_z")`` as on the dict it was made from (None for an absent mask)."""
        value = getattr(self, key, None) if key in MASK_KEYS else None
        return default if value is None else value

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``MaskedBGEM3Backbone.forward`` (absent masks as None)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def validate_masks(zs: Mapping[str, Any] | Masks | None, backbone: Any) -> Masks | None:
    """Check ``zs`` against ``backbone`` (a ``MaskedBGEM3Backbone``) and return it as ``Masks``.

    ``None`` (export the backbone as it is) stays None, and a ``Masks`` is returned as it is (it was checked when it
    was made). Rows may be a [L, W] tensor or a list of per-layer tensors (a pruned model's layers differ in width).

    Raises:
        MaskError: one line naming the bad key: an unknown mask, a wrong number of rows or entries, a non-finite
            value, a layer or sublayer gate that is not 0 or 1, or masks that remove every layer.
    """
    if zs is None or isinstance(zs, Masks):
        return zs
    if not isinstance(zs, Mapping):
        raise MaskError(f"zs must be a dict of masks {MASK_KEYS}, got {type(zs).__name__}")
    unknown = sorted(set(zs) - set(MASK_KEYS))
    if unknown:
        raise MaskError(f"zs has unsupported masks {unknown}; supported: {list(MASK_KEYS)}")
    layers = list(backbone.encoder.layer)
    n = len(layers)
    device = next(backbone.parameters()).device
    widths = {"head_z": [layer.num_heads for layer in layers],
              "intermediate_z": [layer.intermediate_size for layer in layers]}
    out: dict[str, Any] = {}
    for key in ROW_KEYS:
        z = zs.get(key)
        if z is None:
            continue
        try:
            rows = tuple(torch.as_tensor(r).detach().float().flatten().to(device) for r in z)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise MaskError(f"zs[{key!r}] is not a list of per-layer masks: {exc}") from exc
        if len(rows) != n:
            raise MaskError(f"zs[{key!r}] has {len(rows)} rows, the backbone has {n} layers")
        for i, (row, width) in enumerate(zip(rows, widths[key])):
            if row.numel() != width:
                unit = "heads" if key == "head_z" else "intermediate units"
                raise MaskError(f"zs[{key!r}][{i}] has {row.numel()} entries, layer {i} has {width} {unit}")
            if not torch.isfinite(row).all():
                raise MaskError(f"zs[{key!r}][{i}] has non-finite values")
        out[key] = rows
    for key in GATE_KEYS:
        if zs.get(key) is None:
            continue
        try:
            gate = torch.as_tensor(zs[key]).detach().float().flatten().to(device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise MaskError(f"zs[{key!r}] is not a per-layer gate: {exc}") from exc
        if gate.numel() != n:
            raise MaskError(f"zs[{key!r}] has {gate.numel()} entries, the backbone has {n} layers")
        bad = sorted({v for v in gate.tolist() if v not in (0.0, 1.0)})
        if bad:
            what = "layer" if key == "layer_z" else "sublayer"
            raise MaskError(f"zs[{key!r}] must be 0 or 1 (a post-LayerNorm {what} cannot fold a soft "
                            f"{what} mask); got {bad}")
        out[key] = gate
    if "layer_z" in out and not out["layer_z"].any():
        raise MaskError("zs['layer_z'] removes every layer")
    ones = torch.ones(n, device=device)
    att = out.get("layer_z", ones) * out.get("head_layer_z", ones) * torch.tensor(
        [float(layer.has_attention) for layer in layers], device=device)
    ffn = out.get("layer_z", ones) * out.get("mlp_z", ones) * torch.tensor(
        [float(layer.has_ffn) for layer in layers], device=device)
    if not (att.any() or ffn.any()):
        raise MaskError("the masks remove every layer (every attention and FFN sublayer)")
    return Masks(**out)
