"""Print parameter counts of candidate target shapes for a base encoder (default: BGE-M3).

Used to write configs/target_*pct.yaml: every count comes from ``bge_pruning.shapes.count_params``.
    python scripts/target_shapes.py --share 0.6 --top 8
    python scripts/target_shapes.py --share 0.5 --base embedded:all-MiniLM-L6-v2 --step 64 --min-layers 3
"""
from __future__ import annotations

import argparse

from bge_pruning.shapes import EncoderShape, candidate_shapes, count_params

BGE_M3 = EncoderShape.uniform(n_layers=24, n_heads=16, hidden_size=1024, intermediate_size=4096,
                              vocab_size=250002, max_position_embeddings=8194, type_vocab_size=1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--share", type=float, required=True, help="share of encoder-layer parameters to keep")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--min-layers", type=int, default=12)
    ap.add_argument("--step", type=int, default=256, help="intermediate size granularity")
    ap.add_argument("--base", default=None, help="local model directory or embedded:NAME (default: BGE-M3's shape)")
    args = ap.parse_args(argv)
    if not 0 < args.share <= 1:
        ap.error(f"--share must be in (0, 1] (a share of the base's encoder-layer parameters), got {args.share}")
    base = BGE_M3
    if args.base:
        from transformers import AutoConfig

        from bge_pruning.models.loading import ModelLoadError, resolve_model_path

        try:
            base = EncoderShape.from_hf_config(AutoConfig.from_pretrained(resolve_model_path(args.base)))
        except (OSError, ValueError, ModelLoadError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            ap.exit(2, f"{ap.prog}: error: --base {args.base}: cannot read its config.json ({first}); give a "
                       "local model directory or embedded:NAME\n")
    base_count = count_params(base)
    L, H, I = base.n_layers, base.heads_per_layer[0], base.intermediate_per_layer[0]
    print(f"base: {L}L/{H}H/{I}I encoder={base_count.encoder_layers:,} total={base_count.total:,}")
    for c in candidate_shapes(base, args.share, min_layers=args.min_layers, step=args.step)[: args.top]:
        n = count_params(c.shape)
        print(f"{c.label} share={c.share:.4f} encoder={n.encoder_layers:,} total={n.total:,} balance={c.balance:.3f}")
