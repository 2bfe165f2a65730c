"""Training losses: CoSENT for scored pairs, InfoNCE for retrieval, teacher and self-distillation.

Model math that ``ComposerBGEM3.loss`` calls, so it lives with the models (``models`` never imports ``training``).
"""
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


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The [n, n - 1] matrix of ``m``'s off-diagonal entries, row by row (row i without column i)."""
    n = m.shape[0]
    return m.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def default_teacher_layers(n_layers: int, count: int = 4) -> list[int]:
    """``count`` evenly spaced teacher layers ending at the last (0-based layer outputs).

    CoFi distils BERT-base's 12 layers at [2, 5, 8, 11]: every third, the last included. The same spacing at any
    depth is ``ceil((k + 1) * L / n) - 1`` for k < n = min(count, L): 12 -> [2, 5, 8, 11], 6 (MiniLM) ->
    [1, 2, 4, 5], 24 (BGE-M3) -> [5, 11, 17, 23], 3 -> [0, 1, 2].
    """
    if n_layers < 1:
        raise ValueError(f"default_teacher_layers: n_layers must be >= 1, got {n_layers}")
    n = min(count, n_layers)
    return [-(-(k + 1) * n_layers // n) - 1 for k in range(n)]


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens (``mask`` [B, T]) and every dimension of [B, T, D] states."""
    return hidden_distillation_loss(student, teacher, mask)


def layer_alignment(costs: torch.Tensor, alive: torch.Tensor | None = None) -> list[int]:
    """CoFi's order-kept matching of chosen teacher layers (rows of ``costs``) to student layers (columns).

    The deepest teacher layer takes the student layer with the smallest cost among all (alive) student layers;
    then each shallower teacher layer, going up, takes the cheapest (alive) student layer strictly below the
    previous match, or that same layer when none is left. Matches therefore never cross: the alignment is
    non-decreasing in depth, and strictly increasing while student layers remain. ``alive`` [n_student] (bool)
    excludes student layers that a mask has removed; when none is alive every layer is a candidate.
    """
    n_teacher, n_student = costs.shape
    ok = torch.ones(n_student, dtype=torch.bool) if alive is None else alive.detach().to("cpu", torch.bool)
    if not ok.any():
        ok = torch.ones(n_student, dtype=torch.bool)
    c = costs.detach().to("cpu", torch.float64)
    below = n_student  # only student layers < below are candidates
    out: list[int] = []
    for j in range(n_teacher - 1, -1, -1):
        cand = [i for i in range(below) if ok[i]]
        if cand:
            best = min(cand, key=lambda i: (c[j, i].item(), i))
        else:
            best = out[-1]  # nothing left below: share the previous (deeper) match, as CoFi does
        out.append(best)
        below = best
    return out[::-1]


def layer_distillation_loss(student_layers: list[torch.Tensor], teacher_layers: list[torch.Tensor],
                            mask: torch.Tensor, teacher_indices: list[int],
                            student_alive: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """CoFi's layer-wise distillation: each chosen teacher layer pulls the student layer it matches best.

    For every chosen teacher layer t in ``teacher_indices`` and every student layer s, the cost is the mean
    squared error between the (mapped) student states and the teacher states over real tokens. The matching is
    :func:`layer_alignment` (CoFi's ``layer_distill_version`` 4: searched from the deepest chosen teacher layer
    up, each next one among the student layers strictly below the previous match, so the order of layers is
    kept); the loss is the SUM of the matched costs (as CoFi). The matching is recomputed every step and is not
    differentiated: gradients flow through the matched costs only (recomputed with a graph after the search).

    Args:
        student_layers: the student's per-layer outputs (embeddings excluded), each [B, T, D], already passed
            through the learned linear map (``ComposerBGEM3`` applies its ``layer_transformation``, a D x D
            linear layer initialised to the identity, in its forward pass). Under L0 masks these are the masked
            backbone's layer outputs (a removed layer passes its input through).
        teacher_layers: the frozen teacher's per-layer outputs (embeddings excluded), each [B, T, D].
        mask: attention mask [B, T]; padding positions do not count.
        teacher_indices: 0-based indices into ``teacher_layers`` (layer outputs), increasing.
        student_alive: optional bool [n_student]: student layers whose mask is exactly 0 are not candidates.

    Returns:
        ``(loss, alignment)``: the scalar loss and, per chosen teacher layer, the 0-based student layer matched.

    Inputs:
        +---------------------------------------------+--------------------------------------------+
        | Texts                                       | Labels                                     |
        +=============================================+============================================+
        | any batch of texts (plain text, either side | none: the frozen teacher's layer outputs   |
        | of a pair, queries, passages)               | on the same tokens                         |
        +---------------------------------------------+--------------------------------------------+

    References:
        Xia, Zhong and Chen, "Structured Pruning Learns Compact and Accurate Models" (CoFi), ACL 2022, section
        3.2 (layerwise distillation); princeton-nlp/CoFiPruning ``trainer/trainer.py``,
        ``calculate_layer_distillation_loss``.

    Example:
        Teacher layers [2, 5, 8, 11] of 12 against a 4-layer student: the layer-11 output takes the closest of
        the 4 student layers, say 3; layer 8 the closest of 0-2, say 2; and so on. With the identity map at
        step 0 the loss is the plain MSE of the matched states.
    """
    if not teacher_indices:
        raise ValueError("layer_distillation_loss: no teacher layers chosen")
    # The search needs every cost but no gradient: computed without a graph, so memory holds only the matched
    # pairs' activations (for BGE-M3, 4 instead of 4 x 24 token-state differences).
    with torch.no_grad():
        costs = torch.stack([torch.stack([masked_mse(s, teacher_layers[t], mask) for s in student_layers])
                             for t in teacher_indices])  # [n_teacher_chosen, n_student]
    alignment = layer_alignment(costs, student_alive)
    loss = sum(masked_mse(student_layers[a], teacher_layers[t], mask) for t, a in zip(teacher_indices, alignment))
    return loss, alignment


def token_weight_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between per-token sparse (lexical) weights [B, T] of student and teacher, over real tokens (mask [B, T]).

    BGE-M3's lexical weights are ``relu(sparse_linear(h))`` per token; matching them token by token keeps the sparse
    scores of the pruned model close to the base's for any text, not only for the pairs of a training set.
    """
    keep = mask.to(student.dtype)
    return ((student - teacher).pow(2) * keep).sum() / keep.sum().clamp(min=1)


def colbert_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared distance between the L2-normalised colbert vectors [B, T-1, D] of student and teacher (tokens after
    CLS, as BGE-M3's ``colbert_linear``), summed over D and averaged over real tokens (``mask`` is the [B, T]
    attention mask, CLS included)."""
    keep = mask[:, 1:].to(student.dtype)
    return ((student - teacher).pow(2).sum(-1) * keep).sum() / keep.sum().clamp(min=1)
