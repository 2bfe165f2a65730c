"""Checks an export must pass before it is moved into place (each failure names the check and the numbers)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExportError
from ..shapes import EncoderShape


def max_abs_diff_on_tokens(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Largest |a - b| over real (non-padding) token positions of two [B, T, d] hidden-state tensors.

    Padding positions are excluded: what an implementation computes there is not meaningful.
    Returns ``inf`` when either side has a non-finite value on a real token.
    """
    if a.shape != b.shape:
        raise ExportError(f"hidden-state shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    real = attention_mask.to(a.device).bool()
    x, y = a[real].float(), b.to(a.device)[real].float()
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return float("inf")
    if x.numel() == 0:
        raise ExportError("the probe batch has no real tokens")
    return float((x - y).abs().max())


def check_close(name: str, diff: float, atol: float) -> None:
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"{name}: max abs diff on real tokens is {diff:.3e}, above atol={atol:.1e}")


def check_loading_info(info: Mapping[str, Any], where: Path | str) -> None:
    """Zero missing / unexpected / mismatched keys and no loading errors in ``from_pretrained``'s loading info."""
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        values = info.get(key) or []
        if len(values):
            problems.append(f"{key}={sorted(map(str, values))[:20]}")
    conversion = info.get("conversion_errors") or {}
    if len(conversion):
        problems.append(f"conversion_errors={dict(list(dict(conversion).items())[:20])}")
    if problems:
        raise ExportError(f"reload check failed for {where}: " + "; ".join(problems))


def check_head_file(path: Path, head: nn.Module, name: str, dtype: str | torch.dtype | None = None) -> None:
    """The saved ``{name}`` file reloads (weights_only) into a fresh Linear and equals the head's weights (cast to
    ``dtype``, the export's, when given: the file must hold exactly the rounded weights, in that dtype)."""
    linear = head.linear
    to = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unreadable file as a failed check
        raise ExportError(f"head check failed: {path} does not reload ({type(exc).__name__}: {exc})") from exc
    expected = {k: v.detach().cpu() if to is None else v.detach().cpu().to(to) for k, v in linear.state_dict().items()}
    if set(state) != set(expected):
        raise ExportError(f"head check failed: {path} has keys {sorted(state)}, expected {sorted(expected)}")
    fresh = nn.Linear(linear.in_features, linear.out_features, dtype=expected["weight"].dtype)
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"head check failed: {path} does not fit Linear({linear.in_features}, "
                          f"{linear.out_features}): {exc}") from exc
    for key, value in expected.items():
        if state[key].dtype != value.dtype or not torch.equal(state[key], value):
            diff = float((state[key].float() - value.float()).abs().max())
            raise ExportError(f"head check failed: {name} {key} differs after reload (max abs diff {diff:.3e})")


def count_module_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def verify_reload(tmp: Path, layout: Mapping[str, Any], probe: Mapping[str, torch.Tensor], reference: torch.Tensor,
                  dtype: torch.dtype, device: torch.device, exported_shape: EncoderShape,
                  atol: float) -> tuple[float, int]:
    """Reload ``tmp`` with ``AutoModel`` (in the saved ``dtype``) and check it: no missing / unexpected /
    mismatched keys, the class the layout names, the shape the export has, and ``last_hidden_state`` within
    ``atol`` of ``reference`` (the masked float32 backbone's) on the real tokens of ``probe``. Returns the largest
    difference and the reloaded model's parameter count."""
    from transformers import AutoModel

    try:
        model, loading = AutoModel.from_pretrained(str(tmp), output_loading_info=True,
                                                   trust_remote_code=layout["custom"], dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any failure to load is a failed check
        raise ExportError(f"reload check failed: AutoModel.from_pretrained could not load the export "
                          f"({type(exc).__name__}: {exc})") from exc
    try:
        check_loading_info(loading, "the export")
        if type(model).__name__ != layout["model_class"]:
            raise ExportError(f"reload check failed: AutoModel built {type(model).__name__}, "
                              f"expected {layout['model_class']}")
        has_pooler = getattr(model, "pooler", None) is not None
        reloaded_shape = EncoderShape.from_hf_config(model.config, has_pooler=has_pooler)
        if reloaded_shape != exported_shape:
            raise ExportError(f"reload check failed: the reloaded config describes {reloaded_shape.to_dict()}, "
                              f"the export has {exported_shape.to_dict()}")
        n_params = count_module_params(model)
        model.to(device).eval()
        with torch.no_grad():
            out = model(**probe).last_hidden_state
        diff = max_abs_diff_on_tokens(out, reference, probe["attention_mask"])
        what = "" if dtype == torch.float32 else f" ({str(dtype).replace('torch.', '')}) vs the float32"
        check_close(f"reload check (AutoModel last_hidden_state{what or ' vs'} masked backbone)", diff, atol)
        return diff, n_params
    finally:
        del model
