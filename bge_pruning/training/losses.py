"""Training losses: CoSENT for scored pairs, InfoNCE for retrieval, teacher and self-distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosent_loss(cos: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: every pair (i, j) with gold score_i > score_j should have cos_i > cos_j.

    loss = log(1 + sum_{s_i > s_j} exp(scale * (cos_j - cos_i))).
    """
    diff = scale * (cos[None, :] - cos[:, None])  # [i, j] = scale * (cos_j - cos_i)
    valid = scores[:, None] > scores[None, :]
    diff = diff.masked_fill(~valid, float("-inf"))
    flat = torch.cat([diff.new_zeros(1), diff.flatten()])
    return torch.logsumexp(flat, dim=0)


def info_nce_loss(scores: torch.Tensor, n_passages_per_query: int, temperature: float) -> torch.Tensor:
    """InfoNCE over in-batch and hard negatives.

    ``scores`` is [B, B * n]: query i against every passage in the batch; query i's positive is passage
    ``i * n`` (passages are grouped per query: positive first, then its hard negatives).
    """
    target = torch.arange(scores.shape[0], device=scores.device) * n_passages_per_query
    return F.cross_entropy(scores / temperature, target)


def similarity_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between row-wise softmax distributions of in-batch similarity matrices."""
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    log_target=True, reduction="batchmean")


def embedding_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance between normalized embeddings, summed over dimensions, averaged over the batch."""
    return (student - teacher).pow(2).sum(-1).mean()


def hidden_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between last-layer token states [B, T, D], over real tokens only (mask [B, T]).

    Token-level, so it also constrains what the sparse and colbert heads read, not just the pooled vector.
    """
    keep = mask.to(student.dtype).unsqueeze(-1)
    return ((student - teacher).pow(2) * keep).sum() / (keep.sum() * student.shape[-1]).clamp(min=1)


def self_distillation_loss(head_scores: list[torch.Tensor], weights: list[float], temperature: float) -> torch.Tensor:
    """BGE-M3's unified self-distillation: each head learns the soft labels of the weighted ensemble.

    The teacher signal is softmax(sum_k w_k s_k / temperature) (detached); each head's scores are
    pulled toward it with cross-entropy, as in BGE-M3 (Chen et al., 2024, eq. 5).
    """
    ensemble = sum(w * s for w, s in zip(weights, head_scores))
    soft = F.softmax(ensemble.detach() / temperature, dim=-1)
    losses = [-(soft * F.log_softmax(s / temperature, dim=-1)).sum(-1).mean() for s in head_scores]
    return sum(losses) / len(losses)
