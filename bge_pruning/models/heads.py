"""BGE-M3's three output heads and their scores: one implementation for training, export and evaluation.

* dense: the CLS vector (BGE-M3) or the masked mean (MiniLM / sentence-transformers), L2-normalised;
* sparse: ``sparse_linear`` (Linear(d, 1)) + ReLU gives a weight per token; a text's lexical weights
  are the max weight per token id, special tokens excluded (FlagEmbedding's ``_process_token_weights``);
* colbert: ``colbert_linear`` (Linear(d, d)) on every token after CLS, padding zeroed, L2-normalised;
  the score of a query and a passage is the mean over query tokens of the max similarity.

The head files ``sparse_linear.pt`` / ``colbert_linear.pt`` hold the Linear state dicts, the layout
FlagEmbedding's ``BGEM3FlagModel`` reads.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

POOLING_MODES = ("cls", "mean")
SPARSE_FILE = "sparse_linear.pt"
COLBERT_FILE = "colbert_linear.pt"


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence vector from token states: ``cls`` (first token) or ``mean`` over real tokens."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")


def dense_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "cls",
                    normalize: bool = True) -> torch.Tensor:
    v = pool(hidden, attention_mask, mode)
    return F.normalize(v, dim=-1) if normalize else v


class SparseHead(nn.Module):
    """Token weights relu(Linear(d, 1)(h)), [B, T]."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(hidden)).squeeze(-1)


class ColbertHead(nn.Module):
    """Per-token vectors Linear(d, d)(h[:, 1:]), padding zeroed, L2-normalised: [B, T-1, d]."""

    def __init__(self, hidden_size: int, dim: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, dim or hidden_size)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vecs = self.linear(hidden[:, 1:]) * attention_mask[:, 1:].unsqueeze(-1).to(hidden.dtype)
        return F.normalize(vecs, dim=-1)


def lexical_matrix(token_weights: torch.Tensor, input_ids: torch.Tensor, vocab_size: int,
                   unused_ids: Iterable[int]) -> torch.Tensor:
    """[B, V] max weight per token id (differentiable); special tokens get 0. Sparse score = q @ p.T."""
    out = token_weights.new_zeros(token_weights.shape[0], vocab_size)
    out = out.scatter_reduce(1, input_ids, token_weights, reduce="amax", include_self=True)
    unused = torch.tensor(sorted(set(unused_ids)), dtype=torch.long, device=out.device)
    if unused.numel():
        out = out.index_fill(1, unused, 0.0)
    return out


def lexical_weights(token_weights: torch.Tensor, input_ids: torch.Tensor,
                    unused_ids: Iterable[int]) -> list[dict[int, float]]:
    """Per text ``{token_id: weight}`` with the max over repeats, positive weights only (FlagEmbedding)."""
    unused = set(unused_ids)
    result = []
    for weights, ids in zip(token_weights.detach().float().cpu().tolist(), input_ids.cpu().tolist()):
        d: dict[int, float] = {}
        for w, i in zip(weights, ids):
            if i in unused or w <= 0:
                continue
            if w > d.get(i, 0.0):
                d[i] = w
        result.append(d)
    return result


def lexical_score(q: dict[int, float], p: dict[int, float]) -> float:
    return sum(w * p[t] for t, w in q.items() if t in p)


def colbert_scores(q_vecs: torch.Tensor, q_mask: torch.Tensor, p_vecs: torch.Tensor) -> torch.Tensor:
    """[Bq, Bp] late-interaction scores; ``q_mask`` is the queries' attention mask (CLS included)."""
    token_scores = torch.einsum("qin,pjn->qipj", q_vecs, p_vecs)
    best = token_scores.max(-1).values  # [Bq, Tq-1, Bp]
    n_q_tokens = q_mask[:, 1:].sum(-1, keepdim=True).clamp(min=1).to(best.dtype)
    return best.sum(1) / n_q_tokens


def colbert_pair_score(q_vecs: torch.Tensor, p_vecs: torch.Tensor) -> float:
    """Score of one query and one passage given their real-token vectors [Tq, d], [Tp, d]."""
    return float((q_vecs @ p_vecs.T).max(dim=1).values.sum() / q_vecs.shape[0])


def special_token_ids(tokenizer) -> list[int]:
    """Token ids excluded from lexical weights: CLS, EOS, PAD, UNK, exactly FlagEmbedding's set.

    For BERT tokenizers (no EOS) FlagEmbedding keeps [SEP] in the weights; so do we, to stay comparable.
    """
    ids = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    return sorted(i for i in ids if i is not None)
