#!/usr/bin/env python
"""Print parameter counts of candidate target shapes for a base encoder (default: BGE-M3).

Used to write configs/target_*pct.yaml: every count comes from ``bge_pruning.shapes.count_params``.
    python scripts/target_shapes.py --share 0.6 --top 8
    python scripts/target_shapes.py --share 0.5 --base embedded:all-MiniLM-L6-v2 --step 64 --min-layers 3
"""
from __future__ import annotations

import argparse

from bge_pruning.shapes import EncoderShape, count_params

BGE_M3 = EncoderShape.uniform(n_layers=24, n_heads=16, hidden_size=1024, intermediate_size=4096,
                              vocab_size=250002, max_position_embeddings=8194, type_vocab_size=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--share", type=float, required=True, help="share of encoder-layer parameters to keep")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--min-layers", type=int, default=12)
    ap.add_argument("--step", type=int, default=256, help="intermediate size granularity")
    ap.add_argument("--base", default=None, help="local model directory or embedded:NAME (default: BGE-M3's shape)")
    args = ap.parse_args()
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
    rows = []
    for n_layers in range(args.min_layers, L + 1):
        for n_heads in range(1, H + 1):
            for inter in range(args.step, I + 1, args.step):
                shape = base.with_target(n_layers, n_heads, inter)
                share = count_params(shape).encoder_layers / base_count.encoder_layers
                # Prefer shapes that shrink each dimension by a similar ratio (as Sheared-LLaMA's targets).
                ratios = (n_layers / L, n_heads / H, inter / I)
                balance = max(ratios) - min(ratios)
                rows.append((abs(share - args.share), balance, n_layers, n_heads, inter, share, shape))
    rows.sort(key=lambda r: (round(r[0], 2), r[1]))
    print(f"base: {L}L/{H}H/{I}I encoder={base_count.encoder_layers:,} total={base_count.total:,}")
    for _, balance, n_layers, n_heads, inter, share, shape in rows[: args.top]:
        c = count_params(shape)
        print(f"{n_layers}L/{n_heads}H/{inter}I share={share:.4f} encoder={c.encoder_layers:,} "
              f"total={c.total:,} balance={balance:.3f}")


if __name__ == "__main__":
    main()
