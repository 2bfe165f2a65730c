"""Moved to :mod:`bge_pruning.flops` (beside :mod:`bge_pruning.shapes`), so the model can declare its FLOPs without
importing the benchmarks; this name stays for existing imports."""
from ..flops import FLOPS_EXCLUDED, FLOPS_INCLUDED, FlopCount, flops_ratio, forward_flops, layer_flops

__all__ = ["FLOPS_EXCLUDED", "FLOPS_INCLUDED", "FlopCount", "flops_ratio", "forward_flops", "layer_flops"]
