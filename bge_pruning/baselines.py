"""Layer-drop baseline: keep a chosen subset of a base encoder's layers and export it as a model directory.

The quality benchmark (``scripts/benchmark_quality.py``) compares L0 structured pruning with the baseline
practitioners use first: drop whole layers, initialise the small model from the kept ones (DistilBERT keeps
layers 0, 2, 4, 7, 9, 11 of BERT-base: one out of two, first and last included), then train it with the same
budget. Which layers are kept matters a lot (see ``choose_layers`` and docs/quality_benchmark.md). The directory
is written by ``export_pruned_model`` with a binary ``layer_z``, so it is verified exactly like a pruned export (reload
with ``AutoModel``, outputs equal to the masked backbone's) and its ``pruning_info.json`` names the base
model, which makes ``stage: finetune`` distil from the unpruned base.

    python -m bge_pruning.baselines embedded:all-MiniLM-L6-v2 experiments/minilm_3layers --n-layers 3 [--rule ends]
    python -m bge_pruning.baselines embedded:all-MiniLM-L6-v2 out/ --keep-layers 1 3 5 --pooling mean
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads in layer_drop_zs, so the benchmark driver can read LAYER_RULES without it
    import torch

BASELINE_NAME = "layer_drop"


LAYER_RULES = ("ends", "bottom", "top")


def choose_layers(n_layers: int, n_keep: int, rule: str = "ends") -> list[int]:
    """``n_keep`` of ``n_layers`` layer indices, spread evenly by one of the rules practitioners use:

    * ``ends``: evenly spaced from the first to the last layer, ``round(i * (L - 1) / (n - 1))`` with ties
      rounded up. 12 -> 6 gives DistilBERT's initialisation exactly, [0, 2, 4, 7, 9, 11]; 6 -> 3 gives [0, 3, 5];
    * ``bottom``: every other layer counted from the first, ``i * L // n``: 6 -> 3 gives [0, 2, 4];
    * ``top``: every other layer counted from the last: 6 -> 3 gives [1, 3, 5].
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    if isinstance(n_keep, bool) or not isinstance(n_keep, int) or not 1 <= n_keep <= n_layers:
        raise ValueError(f"the number of layers to keep must be between 1 and {n_layers}, got {n_keep!r}")
    if rule == "bottom":
        return [(i * n_layers) // n_keep for i in range(n_keep)]
    if rule == "top":
        return sorted(n_layers - 1 - (i * n_layers) // n_keep for i in range(n_keep))
    if rule == "ends":
        if n_keep == 1:
            return [n_layers - 1]
        return [int(math.floor(i * (n_layers - 1) / (n_keep - 1) + 0.5)) for i in range(n_keep)]
    raise ValueError(f"unknown layer rule {rule!r}; one of {', '.join(LAYER_RULES)}")


def check_keep_layers(keep_layers: Sequence[int], n_layers: int) -> list[int]:
    """Sorted, validated layer indices (no duplicates, each in ``[0, n_layers)``, at least one)."""
    keep = [int(i) for i in keep_layers]
    if not keep:
        raise ValueError("keep_layers is empty: a model needs at least one layer")
    bad = [i for i in keep if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"keep_layers {bad} out of range: the base model has layers 0..{n_layers - 1}")
    if len(set(keep)) != len(keep):
        raise ValueError(f"keep_layers has duplicates: {keep}")
    return sorted(keep)


def layer_drop_zs(keep_layers: Sequence[int], n_layers: int) -> dict[str, torch.Tensor]:
    """``{"layer_z": [L]}`` with 1 for kept layers and 0 for dropped ones (an exact identity when 0)."""
    import torch

    keep = check_keep_layers(keep_layers, n_layers)
    z = torch.zeros(n_layers)
    z[keep] = 1.0
    return {"layer_z": z}


def build_layer_drop(base: str, out_dir: str | Path, *, keep_layers: Sequence[int] | None = None,
                     n_layers: int | None = None, rule: str = "ends", pooling: str = "mean", normalize: bool = True,
                     overwrite: bool = False) -> Path:
    """Export ``base`` with only ``keep_layers`` (or ``choose_layers(L, n_layers, rule)``) to ``out_dir``.

    ``base`` is anything ``model.name_or_path`` accepts (hub id, directory, ``embedded:NAME``); it is
    recorded as ``base_model`` so a ``stage: finetune`` run on the result distils from it.
    """
    from .export import export_pruned_model
    from .models.loading import load_hf_model
    from .models.masked_encoder import MaskedBGEM3Backbone

    if (keep_layers is None) == (n_layers is None):
        raise ValueError("give exactly one of keep_layers and n_layers")
    hf_model, tokenizer = load_hf_model(base)
    backbone = MaskedBGEM3Backbone.from_hf_model(hf_model).eval()
    del hf_model
    total = backbone.shape.n_layers
    if keep_layers is None:
        keep_layers = choose_layers(total, int(n_layers), rule)
    else:
        rule = "explicit"
    keep = check_keep_layers(keep_layers, total)
    info = {"base_model": base, "baseline": {"method": BASELINE_NAME, "kept_layers": keep, "rule": rule,
                                             "base_layers": total}}
    return export_pruned_model(backbone, out_dir, tokenizer, layer_drop_zs(keep, total), pooling=pooling,
                               normalize=normalize, overwrite=overwrite, info=info)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="base model: hub id, local directory or embedded:NAME")
    ap.add_argument("out_dir", help="directory to write (must not exist or be empty unless --overwrite)")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--n-layers", type=int, help="keep this many layers, spread by --rule")
    group.add_argument("--keep-layers", type=int, nargs="+", help="explicit 0-based layer indices to keep")
    ap.add_argument("--rule", choices=LAYER_RULES, default="ends",
                    help="with --n-layers: ends (DistilBERT's, default), bottom or top (see choose_layers)")
    ap.add_argument("--pooling", choices=("cls", "mean"), default="mean")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    from .errors import UserError

    try:
        out = build_layer_drop(args.base, args.out_dir, keep_layers=args.keep_layers, n_layers=args.n_layers,
                               rule=args.rule, pooling=args.pooling, overwrite=args.overwrite)
    except (UserError, ValueError) as e:  # ValueError: bad layer choice (choose_layers, check_keep_layers)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"layer-drop model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
