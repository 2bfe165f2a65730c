"""Benchmarks of pruned encoders: analytic FLOPs (:mod:`.flops`) and measured efficiency (:mod:`.efficiency`).

Only the FLOPs helpers are imported here; :mod:`.efficiency` imports torch and transformers when used.
"""
from .flops import FLOPS_EXCLUDED, FLOPS_INCLUDED, FlopCount, flops_ratio, forward_flops, layer_flops

__all__ = ["FLOPS_EXCLUDED", "FLOPS_INCLUDED", "FlopCount", "flops_ratio", "forward_flops", "layer_flops"]
