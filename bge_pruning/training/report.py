"""The before/after table printed at the end of a run: parameters and STS quality, base vs exported model."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..evaluation.sts import evaluate_sts
from ..shapes import EncoderShape, count_params
from ..tables import format_rows

MAX_LENGTH = 512


def sts_of_model(model: Any, pairs: Sequence[Any]) -> dict[str, float]:
    """Dense STS scores of a ``ComposerBGEM3`` as it is now (no masks), on its current device."""
    from ..evaluation.encoder import EmbeddingModel  # imports sentence-transformers: only when a report is made

    device = next(model.backbone.parameters()).device
    was_training = model.backbone.training
    # The backbone as it is, inside a SentenceTransformer: called with the tokenizer's outputs, it returns the last
    # hidden state.
    enc = EmbeddingModel.from_model(model.backbone, model.tokenizer, pooling=model.pooling, normalize=model.normalize,
                                    max_length=min(MAX_LENGTH, model.tokenizer.model_max_length), device=device)
    try:
        return evaluate_sts(enc, pairs, show_progress=False)
    finally:
        model.backbone.train(was_training)


def sts_of_export(export_dir: str | Path, pairs: Sequence[Any], max_length: int) -> dict[str, float]:
    from ..evaluation.encoder import EmbeddingModel

    enc = EmbeddingModel.from_dir(export_dir, device="cuda" if torch.cuda.is_available() else "cpu",
                                  max_length=min(MAX_LENGTH, max_length))
    return evaluate_sts(enc, pairs, show_progress=False)


def before_after(base: EncoderShape, pruned: EncoderShape, base_sts: dict[str, float],
                 pruned_sts: dict[str, float], eval_name: str) -> tuple[str, dict[str, Any]]:
    """A printable table and its numbers."""
    b, p = count_params(base), count_params(pruned)
    rows = [
        ("encoder-layer params", f"{b.encoder_layers:,}", f"{p.encoder_layers:,}", p.encoder_layers / b.encoder_layers),
        ("total params", f"{b.total:,}", f"{p.total:,}", p.total / b.total),
        ("shape (L/H/I)", _shape(base), _shape(pruned), None),
        (f"Spearman x100 ({eval_name})", f"{base_sts['spearman']:.2f}", f"{pruned_sts['spearman']:.2f}",
         pruned_sts["spearman"] / base_sts["spearman"]),
        (f"Pearson x100 ({eval_name})", f"{base_sts['pearson']:.2f}", f"{pruned_sts['pearson']:.2f}",
         pruned_sts["pearson"] / base_sts["pearson"]),
    ]
    table = format_rows(["", "base", "pruned", "pruned/base"],
                        [(name, bv, pv, "" if r is None else f"{100 * r:.1f}%") for name, bv, pv, r in rows])
    numbers = {"base": {"params": b.to_dict(), "sts": base_sts, "shape": base.to_dict()},
               "pruned": {"params": p.to_dict(), "sts": pruned_sts, "shape": pruned.to_dict()},
               "eval_set": eval_name}
    return table, numbers


def _shape(s: EncoderShape) -> str:
    heads = str(s.heads_per_layer[0]) if len(set(s.heads_per_layer)) == 1 else "var"
    inter = str(s.intermediate_per_layer[0]) if len(set(s.intermediate_per_layer)) == 1 else "var"
    return f"{s.n_layers}/{heads}/{inter}"
