"""``ComposerBGEM3``: masked backbone + L0 module + BGE-M3 heads + losses, as a Composer model."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from composer.models import ComposerModel
from torchmetrics import Metric, SpearmanCorrCoef

from ..errors import ModelDirError
from ..pruning_info import PruningInfo
from .heads import (
    COLBERT_FILE,
    SPARSE_FILE,
    ColbertHead,
    SparseHead,
    colbert_scores,
    dense_embedding,
    lexical_matrix,
    special_token_ids,
)
from .l0_module import SUBLAYER_MODULES, ConfigError, GlobalTarget, L0Module, parse_target
from .loading import (
    ModelLoadError,
    check_tokenizer_matches,
    find_head_file,
    load_hf_model,
    load_linear_state,
    st_max_seq_length,
)
from .losses import (
    colbert_distillation_loss,
    cosent_loss,
    default_teacher_layers,
    embedding_distillation_loss,
    hidden_distillation_loss,
    info_nce_loss,
    layer_distillation_loss,
    off_diagonal,
    self_distillation_loss,
    similarity_distillation_loss,
    token_weight_distillation_loss,
)
from .masked_encoder import MaskedBGEM3Backbone


class STSSpearman(SpearmanCorrCoef):
    """Spearman correlation of cosine similarities with gold scores, x100: the scale of every table, report and
    plot of the project (``evaluate_model.py``, the before/after table, the benchmarks)."""

    def compute(self) -> torch.Tensor:
        return 100.0 * super().compute()


class InBatchMRR(Metric):
    """Mean reciprocal rank (x100, as every score of the project) of each query's positive among all passages of
    its batch."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("rr_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, n_passages_per_query: int) -> None:
        target = torch.arange(scores.shape[0], device=scores.device) * n_passages_per_query
        pos = scores.gather(1, target[:, None])
        rank = (scores > pos).sum(-1) + 1
        self.rr_sum += (1.0 / rank.float()).sum()
        self.count += scores.shape[0]

    def compute(self) -> torch.Tensor:
        return 100.0 * self.rr_sum / self.count.clamp(min=1)


# the loss.* weights that need a teacher
TEACHER_LOSSES = ("distill_embedding", "distill_similarity", "distill_hidden", "distill_layers", "distill_sparse",
                  "distill_colbert")
# the tokenized views a batch can hold (sts: a/b, retrieval: query/passages, text: texts), for flops_per_batch
FLOP_VIEWS = ("a", "b", "query", "passages", "texts")
# the head distillation losses: the teacher's own sparse / colbert head on the teacher's token states
TEACHER_HEAD_LOSSES = {"distill_sparse": "sparse", "distill_colbert": "colbert"}
# loss.* keys that are not weights (passed to ComposerBGEM3 separately)
NON_WEIGHT_LOSS_KEYS = ("distill_layers_teacher",)


def needs_teacher(loss_cfg: Mapping[str, Any]) -> bool:
    return any(float(loss_cfg.get(k, 0) or 0) > 0 for k in TEACHER_LOSSES)


def layers_alive(zs: Mapping[str, torch.Tensor], n_layers: int) -> torch.Tensor | None:
    """Which student layers may be matched by ``loss.distill_layers``: not those a mask removed, i.e. a ``layer_z``
    of 0, or both sublayer gates (``head_layer_z``, ``mlp_z``) at 0, which makes the layer an identity of its input.
    CoFi excludes every layer whose attention gate is 0; here a layer that keeps its FFN still transforms its input
    and stays a candidate. None when no such mask is given (every layer is a candidate)."""
    def on(key: str) -> torch.Tensor | None:
        z = zs.get(key)
        return z.detach() != 0 if torch.is_tensor(z) and z.dim() == 1 and z.numel() == n_layers else None

    layer, att, mlp = on("layer_z"), on("head_layer_z"), on("mlp_z")
    if layer is None and att is None and mlp is None:
        return None
    ref = next(z for z in (layer, att, mlp) if z is not None)
    ones = torch.ones_like(ref)
    alive = layer if layer is not None else ones
    if att is not None or mlp is not None:
        alive = alive & ((att if att is not None else ones) | (mlp if mlp is not None else ones))
    return alive


class _Frozen:
    """Holds the frozen teacher outside the module tree: not in checkpoints, the optimizer, or DDP/FSDP."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module.eval().requires_grad_(False)

    def to(self, device: torch.device) -> torch.nn.Module:
        if next(self.module.parameters()).device != device:
            self.module.to(device)
        return self.module


class ComposerBGEM3(ComposerModel):
    """BGE-M3 (or any BERT-family encoder) with learnable structured-pruning masks."""

    def __init__(self, backbone: MaskedBGEM3Backbone, tokenizer: Any, *, pooling: str = "cls", normalize: bool = True,
                 sparse_head: SparseHead | None = None, colbert_head: ColbertHead | None = None,
                 l0_module: L0Module | None = None, teacher: MaskedBGEM3Backbone | None = None,
                 loss_cfg: Mapping[str, Any] | None = None, base_model: str = "",
                 prior_pruning: PruningInfo | Mapping[str, Any] | None = None,
                 teacher_layers: Sequence[int] | None = None,
                 layer_map: bool | None = None, teacher_heads: Mapping[str, torch.nn.Module] | None = None) -> None:
        """``teacher_layers``: the teacher layers ``loss.distill_layers`` distils (0-based layer outputs; default
        :func:`default_teacher_layers`). ``layer_map``: whether the model has the learned student-to-teacher map
        of layer distillation (default: when ``loss.distill_layers > 0``; a checkpoint rebuilt without its teacher
        keeps it so that its weights load). ``teacher_heads``: the teacher's frozen ``sparse`` / ``colbert`` heads
        (its head files), which ``loss.distill_sparse`` / ``loss.distill_colbert`` need."""
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.sparse_head = sparse_head
        self.colbert_head = colbert_head
        self.l0_module = l0_module
        self._teacher = _Frozen(teacher) if teacher is not None else None
        self._teacher_heads = {k: _Frozen(v) for k, v in (teacher_heads or {}).items()}
        self.loss_cfg = dict(loss_cfg or {})
        self.base_model = base_model
        # pruning_info.json of a pruned model being finetuned (None for a plain model)
        self.prior_pruning = (PruningInfo.from_json(prior_pruning) if isinstance(prior_pruning, Mapping)
                              else prior_pruning)
        self.vocab_record: dict[str, Any] | None = None  # set when model.vocab trimmed the vocabulary
        self.max_seq_length: int | None = None  # the source's sentence-transformers limit, kept on export
        self.unused_token_ids = special_token_ids(tokenizer)
        self.vocab_size = backbone.config.vocab_size
        self.last_metrics: dict[str, float] = {}  # L0 metrics of the last training step, for PruningCallback
        self.trained_steps = 0
        self.last_layer_alignment: list[list[int]] = []  # per view of the last step: student layer per teacher layer
        if layer_map is None:
            layer_map = float(self.loss_cfg.get("distill_layers", 0) or 0) > 0
        # CoFi's ``layer_transformation``: one D x D map from student to teacher states, shared by every layer,
        # trained with the model weights (it is a submodule, so it lands in the "model" optimizer group) and never
        # exported (the export reads the backbone). Identity at the start: step 0's loss is the plain MSE.
        self.layer_transformation: torch.nn.Linear | None = None
        if layer_map:
            d = backbone.config.hidden_size
            self.layer_transformation = torch.nn.Linear(d, d)
            with torch.no_grad():
                self.layer_transformation.weight.copy_(torch.eye(d))
                self.layer_transformation.bias.zero_()
        self.teacher_layers: list[int] | None = None
        self._check_loss_cfg()
        if self._distill_layers_on():
            self.teacher_layers = self._resolve_teacher_layers(teacher_layers)

    def _check_loss_cfg(self) -> None:
        c = self.loss_cfg
        if c.get("sparse", 0) > 0 and self.sparse_head is None:
            raise ConfigError("loss.sparse > 0 needs model.heads.sparse: true")
        if c.get("colbert", 0) > 0 and self.colbert_head is None:
            raise ConfigError("loss.colbert > 0 needs model.heads.colbert: true")
        if needs_teacher(c) and self._teacher is None:
            raise ConfigError("loss.distill_* > 0 needs a teacher model")
        if self._distill_layers_on() and self.layer_transformation is None:
            raise ConfigError("loss.distill_layers > 0 needs the layer map (layer_map=True)")
        for key, head in TEACHER_HEAD_LOSSES.items():
            if c.get(key, 0) > 0:
                if getattr(self, f"{head}_head") is None:
                    raise ConfigError(f"loss.{key} > 0 needs model.heads.{head}: true")
                if self._teacher is not None and head not in self._teacher_heads:
                    raise ConfigError(f"loss.{key} > 0 needs the teacher's {head} head")

    def _distill_layers_on(self) -> bool:
        return float(self.loss_cfg.get("distill_layers", 0) or 0) > 0

    def _resolve_teacher_layers(self, layers: Sequence[int] | None) -> list[int]:
        """``loss.distill_layers_teacher`` checked against the teacher's depth (default: CoFi's spacing)."""
        assert self._teacher is not None
        depth = len(self._teacher.module.encoder.layer)
        if layers is None:
            return default_teacher_layers(depth)
        key = "loss.distill_layers_teacher"
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
            raise ConfigError(f"{key}: must be a non-empty list of teacher layer indices (0-based), got {layers!r}")
        out = []
        for v in layers:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < depth:
                raise ConfigError(f"{key}: {v!r} is not a layer of the teacher (integers 0..{depth - 1}: "
                                  f"0-based layer outputs)")
            out.append(int(v))
        if any(b <= a for a, b in zip(out, out[1:])):
            raise ConfigError(f"{key}: must be strictly increasing, got {out}")
        return out

    # ------------------------------------------------------------------ encoding
    def current_masks(self) -> dict[str, torch.Tensor]:
        """Sampled masks in training, deterministic masks in eval, nothing once pruned."""
        return self.l0_module() if self.l0_module is not None else {}

    def encode(self, tokens: Mapping[str, torch.Tensor], zs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        layers = None
        if self._distill_layers_on():
            hidden, states = self.backbone(ids, mask, output_hidden_states=True, **zs)
            # The map is applied here, inside the forward pass, so DDP and FSDP see its use (not only in loss()).
            layers = [self.layer_transformation(h) for h in states[1:]]
        else:
            hidden = self.backbone(ids, mask, **zs)
        out = {"dense": dense_embedding(hidden, mask, self.pooling, self.normalize), "mask": mask, "ids": ids,
               "hidden": hidden}
        if layers is not None:
            out["layers"] = layers
            alive = layers_alive(zs, len(layers))
            if alive is not None:
                out["layers_alive"] = alive
        if self.sparse_head is not None:
            out["token_weights"] = self.sparse_head(hidden)
            out["sparse"] = lexical_matrix(out["token_weights"], ids, self.vocab_size, self.unused_token_ids)
        if self.colbert_head is not None:
            out["colbert"] = self.colbert_head(hidden, mask)
        return out

    @torch.no_grad()
    def teacher_encode(self, tokens: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The frozen teacher's last-layer token states and dense embedding (and every layer's output, embeddings
        excluded, as ``layers`` when ``loss.distill_layers`` is on)."""
        assert self._teacher is not None
        teacher = self._teacher.to(tokens["input_ids"].device)
        out: dict[str, Any] = {}
        if self._distill_layers_on():
            hidden, states = teacher(tokens["input_ids"], tokens["attention_mask"], output_hidden_states=True)
            out["layers"] = states[1:]
        else:
            hidden = teacher(tokens["input_ids"], tokens["attention_mask"])
        out.update(hidden=hidden, dense=dense_embedding(hidden, tokens["attention_mask"], self.pooling, self.normalize))
        device = tokens["input_ids"].device
        if "sparse" in self._teacher_heads:
            out["token_weights"] = self._teacher_heads["sparse"].to(device)(hidden)
        if "colbert" in self._teacher_heads:
            out["colbert"] = self._teacher_heads["colbert"].to(device)(hidden, tokens["attention_mask"])
        return out

    # ------------------------------------------------------------------ Composer interface
    def flops_per_batch(self, batch: Mapping[str, Any]) -> int:
        """Training FLOPs of one batch, for Composer's ``SpeedMonitor`` (FLOP/s and MFU).

        Per tokenized view of the batch (``a``/``b``, ``query``/``passages``, ``texts``): the analytic forward FLOPs
        (:func:`bge_pruning.flops.forward_flops`) of the student's shape at the view's padded length, times 3
        (forward + backward, the usual estimate), plus one forward of the frozen teacher when a distillation loss
        is on. The masks do not reduce compute (masked units are multiplied by zero, not skipped), so the student
        counts at its physical shape; the heads, embeddings and losses are left out (see ``bge_pruning.flops``).
        """
        from ..flops import forward_flops

        student = self.backbone.shape
        teacher = self._teacher.module.shape if self._teacher is not None and needs_teacher(self.loss_cfg) else None
        total = 0
        for key in FLOP_VIEWS:
            view = batch.get(key)
            if view is None:
                continue
            n, t = (int(x) for x in view["input_ids"].shape)
            total += 3 * n * forward_flops(student, t).total
            if teacher is not None:
                total += n * forward_flops(teacher, t).total
        return total

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        zs = self.current_masks()
        if batch["task"] == "sts":
            return {"task": "sts", "a": self.encode(batch["a"], zs), "b": self.encode(batch["b"], zs)}
        if batch["task"] == "retrieval":
            return {"task": "retrieval", "query": self.encode(batch["query"], zs),
                    "passages": self.encode(batch["passages"], zs)}
        if batch["task"] == "text":
            return {"task": "text", "texts": self.encode(batch["texts"], zs)}
        raise ValueError(f"unknown batch task {batch['task']!r}")

    def _retrieval_scores(self, q: Mapping[str, torch.Tensor],
                          p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = {"dense": q["dense"] @ p["dense"].T}
        if "sparse" in q:
            scores["sparse"] = q["sparse"] @ p["sparse"].T
        if "colbert" in q:
            scores["colbert"] = colbert_scores(q["colbert"], q["mask"], p["colbert"])
        return scores

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        c = self.loss_cfg
        parts: dict[str, torch.Tensor] = {}
        tau_d = c.get("distill_temperature", 0.05)
        if outputs["task"] == "sts":
            a, b = outputs["a"], outputs["b"]
            if c.get("cosent", 0) > 0:
                cos = (a["dense"] * b["dense"]).sum(-1)
                parts["cosent"] = c["cosent"] * cosent_loss(cos, batch["scores"], c.get("cosent_scale", 20.0))
            student_sim = a["dense"] @ b["dense"].T
            teacher_views = (batch["a"], batch["b"])
            student_views = (a, b)
        elif outputs["task"] == "text":
            # Plain text: no labels, only what the teacher says. The in-batch similarity of a text with itself is
            # 1 for both models and would dominate each row's softmax: only the other texts of the batch count.
            t = outputs["texts"]
            student_sim = off_diagonal(t["dense"] @ t["dense"].T) if t["dense"].shape[0] > 1 else None
            teacher_views = (batch["texts"],)
            student_views = (t,)
        else:
            q, p = outputs["query"], outputs["passages"]
            n = int(batch["n_passages_per_query"])
            scores = self._retrieval_scores(q, p)
            tau = c.get("temperature", 0.02)
            if c.get("infonce", 0) > 0:
                parts["infonce"] = c["infonce"] * info_nce_loss(scores["dense"], n, tau)
            for head in ("sparse", "colbert"):
                if c.get(head, 0) > 0:
                    parts[f"infonce_{head}"] = c[head] * info_nce_loss(scores[head], n, tau)
            if c.get("self_distill", 0) > 0 and len(scores) > 1:
                # BGE-M3's ensemble weights: dense 1, sparse 0.3, colbert 1.
                weights = {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}
                names = list(scores)
                parts["self_distill"] = c["self_distill"] * self_distillation_loss(
                    [scores[k] for k in names], [weights[k] for k in names], tau)
            student_sim = scores["dense"]
            teacher_views = (batch["query"], batch["passages"])
            student_views = (q, p)
        if self._teacher is not None and needs_teacher(c):
            t_views = [self.teacher_encode(v) for v in teacher_views]
            pairs = list(zip(student_views, t_views))
            per_view = 1.0 / len(pairs)  # the mean over the views (0.5 for pairs and triplets)
            if c.get("distill_embedding", 0) > 0:
                parts["distill_embedding"] = c["distill_embedding"] * per_view * sum(
                    embedding_distillation_loss(s["dense"], t["dense"]) for s, t in pairs)
            if c.get("distill_similarity", 0) > 0 and student_sim is None:
                # A one-text (micro)batch has no other text to compare with: nothing to learn here, but a zero that
                # keeps the graph, so a batch whose only loss this is does not stop the run.
                parts["distill_similarity"] = student_views[0]["dense"].sum() * 0.0
            elif c.get("distill_similarity", 0) > 0:
                if len(t_views) == 1:
                    teacher_sim = off_diagonal(t_views[0]["dense"] @ t_views[0]["dense"].T)
                else:
                    teacher_sim = t_views[0]["dense"] @ t_views[1]["dense"].T
                parts["distill_similarity"] = c["distill_similarity"] * similarity_distillation_loss(
                    student_sim, teacher_sim, tau_d)
            if c.get("distill_hidden", 0) > 0:
                parts["distill_hidden"] = c["distill_hidden"] * per_view * sum(
                    hidden_distillation_loss(s["hidden"], t["hidden"], s["mask"]) for s, t in pairs)
            if c.get("distill_sparse", 0) > 0:
                parts["distill_sparse"] = c["distill_sparse"] * per_view * sum(
                    token_weight_distillation_loss(s["token_weights"], t["token_weights"], s["mask"]) for s, t in pairs)
            if c.get("distill_colbert", 0) > 0:
                parts["distill_colbert"] = c["distill_colbert"] * per_view * sum(
                    colbert_distillation_loss(s["colbert"], t["colbert"], s["mask"]) for s, t in pairs)
            if c.get("distill_layers", 0) > 0:
                results = [layer_distillation_loss(s["layers"], t["layers"], s["mask"], self.teacher_layers,
                                                   s.get("layers_alive")) for s, t in pairs]
                self.last_layer_alignment = [alignment for _, alignment in results]
                parts["distill_layers"] = c["distill_layers"] * per_view * sum(loss for loss, _ in results)
        if self.l0_module is not None and self.training:
            lag, metrics = self.l0_module.lagrangian_regularization()
            parts["lagrangian"] = lag
            self.last_metrics = metrics
        if not parts:
            raise ConfigError(f"no loss applies to a '{outputs['task']}' batch: check the loss.* weights")
        parts["total"] = sum(parts.values())
        return parts

    def eval_forward(self, batch: Mapping[str, Any], outputs: Any | None = None) -> dict[str, Any]:
        outputs = outputs if outputs is not None else self.forward(batch)
        if outputs["task"] == "sts":
            return {"task": "sts", "cos": (outputs["a"]["dense"] * outputs["b"]["dense"]).sum(-1)}
        if outputs["task"] == "text":
            return {"task": "text"}  # no labels: nothing to score
        return {"task": "retrieval", "scores": outputs["query"]["dense"] @ outputs["passages"]["dense"].T,
                "n": int(batch["n_passages_per_query"])}

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return {} if is_train else {"STSSpearman": STSSpearman(), "InBatchMRR": InBatchMRR()}

    def update_metric(self, batch: Mapping[str, Any], outputs: Mapping[str, Any], metric: Metric) -> None:
        if isinstance(metric, SpearmanCorrCoef) and outputs["task"] == "sts":
            metric.update(outputs["cos"].float(), batch["scores"].float())
        elif isinstance(metric, InBatchMRR) and outputs["task"] == "retrieval":
            metric.update(outputs["scores"], outputs["n"])

    # ------------------------------------------------------------------ pruning results
    def deterministic_zs(self) -> dict[str, torch.Tensor] | None:
        return None if self.l0_module is None else self.l0_module.deterministic_zs()

    def export_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"base_model": self.base_model, "training_steps": self.trained_steps,
                                "pooling": self.pooling}
        if self.l0_module is not None:
            t = self.l0_module.target
            report = self.l0_module.convergence_report()
            if isinstance(t, GlobalTarget):
                # No target shape (the widths are free): the target as given, and what the masks achieved.
                info["global_target"] = {"given": dict(t.given), **report["global"]}
            else:
                info["target_shape"] = {"n_layers": t.n_layers, "n_heads": t.n_heads,
                                        "intermediate_size": t.intermediate_size}
            info["pruning_modules"] = list(self.l0_module.pruning_modules)
            info["convergence"] = report
        prior = self.prior_pruning
        vocabulary = self.vocab_record or (prior.vocabulary if prior is not None else None)
        if vocabulary:
            info["vocabulary"] = vocabulary
        if prior is not None:
            info["pruned_by"] = prior.pick("base_shape", "target_shape", "kept_layers", "kept_heads", "params",
                                           "training_steps")
        return info


def build_model(cfg: Any, hf_model: Any = None, tokenizer: Any = None, with_teacher: bool = True,
                base_info: dict[str, Any] | None = None) -> ComposerBGEM3:
    """Build ``ComposerBGEM3`` from a run config (``bge_pruning.config``).

    ``hf_model``/``tokenizer`` replace loading ``model.name_or_path`` (used to rebuild a checkpoint's
    architecture from its saved config); ``with_teacher=False`` skips the distillation teacher. ``base_info``
    (``base_model``, ``pruning_info``, ``max_seq_length``, from a checkpoint's run record) replaces reading them
    from ``model.name_or_path``, so a checkpoint rebuilds where that directory does not exist.
    """
    mcfg, lcfg = cfg.model, cfg.loss
    if with_teacher:
        _check_text_sources(cfg, lcfg)  # before anything loads
    fresh = hf_model is None  # a checkpoint's saved config is already trimmed: model.vocab applies once
    if fresh:  # load_hf_model checks the tokenizer against the model
        hf_model, tokenizer = load_hf_model(mcfg.name_or_path, trust_remote_code=bool(mcfg.get("trust_remote_code")))
    else:
        check_tokenizer_matches(tokenizer, hf_model.config, "model.name_or_path")
    backbone = MaskedBGEM3Backbone.from_hf_model(hf_model)
    del hf_model
    vocab_record = None
    vcfg = mcfg.get("vocab")
    if fresh and vcfg is not None and vcfg.get("corpus"):
        from ..vocab import trim_for_run

        tokenizer, vocab_record = trim_for_run(backbone, tokenizer, vcfg)
    if mcfg.pooling not in ("cls", "mean"):
        raise ConfigError(f"model.pooling must be 'cls' or 'mean', got {mcfg.pooling!r}")

    d = backbone.config.hidden_size
    heads: dict[str, torch.nn.Module | None] = {"sparse": None, "colbert": None}
    for name, cls, filename in (("sparse", SparseHead, SPARSE_FILE), ("colbert", ColbertHead, COLBERT_FILE)):
        if mcfg.heads.get(name):
            head = cls(d)
            file = find_head_file(mcfg.name_or_path, filename) if with_teacher else None
            if file is not None:
                load_linear_state(head.linear, file)
            heads[name] = head

    l0 = None
    if cfg.stage == "prune":
        l0cfg = mcfg.l0_module
        target = parse_target(dict(l0cfg.target_model), backbone.shape, key="model.l0_module.target_model")
        sublayers = [m for m in l0cfg.pruning_modules if m in SUBLAYER_MODULES]
        if sublayers and bool(cfg.export.vanilla):
            # A post-LN sublayer with zero weights is LayerNorm(x), not x: stock classes cannot hold a removed one.
            raise ConfigError(f"export.vanilla: true cannot represent a removed attention / FFN sublayer (pruning "
                              f"modules {sublayers}); export without vanilla (modeling_pruned.py) or drop them")
        l0 = L0Module(backbone.shape, target, pruning_modules=tuple(l0cfg.pruning_modules),
                      start_sparsity=float(l0cfg.start_sparsity),
                      lagrangian_warmup_steps=_steps(l0cfg.lagrangian_warmup_steps,
                                                     "model.l0_module.lagrangian_warmup_steps"),
                      eval_target_model=bool(l0cfg.eval_target_model))

    loss_cfg = {k: float(v) for k, v in lcfg.items() if k not in NON_WEIGHT_LOSS_KEYS}
    layer_map = float(lcfg.get("distill_layers") or 0) > 0  # also without the teacher: a checkpoint holds the map
    teacher_layers = lcfg.get("distill_layers_teacher")
    if teacher_layers is not None:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(teacher_layers):
            teacher_layers = OmegaConf.to_container(teacher_layers)
    teacher = None
    teacher_heads: dict[str, torch.nn.Module] = {}
    if needs_teacher(lcfg):
        if with_teacher:
            teacher_path = mcfg.get("teacher") or _teacher_of(mcfg.name_or_path, cfg.stage)
            if teacher_path == mcfg.name_or_path:
                teacher = copy.deepcopy(backbone)  # after the vocabulary trim: the same tokens
            else:
                teacher_hf, _ = load_hf_model(teacher_path, "model.teacher",
                                              trust_remote_code=bool(mcfg.get("trust_remote_code")))
                teacher = MaskedBGEM3Backbone.from_hf_model(teacher_hf)
                _trim_teacher_vocab(teacher, getattr(_pruning_info(mcfg.name_or_path), "vocabulary", None),
                                    vocab_record,
                                    backbone.config.vocab_size)
            teacher_heads = _teacher_heads(lcfg, teacher_path, d)
        else:
            loss_cfg.update({k: 0.0 for k in TEACHER_LOSSES})
    if base_info is None:
        base_info = {"base_model": _base_model_of(mcfg.name_or_path), "pruning_info": _pruning_info(mcfg.name_or_path),
                     "max_seq_length": st_max_seq_length(mcfg.name_or_path)}  # kept by the export (256 for MiniLM)
    model = ComposerBGEM3(backbone, tokenizer, pooling=mcfg.pooling, normalize=bool(mcfg.normalize),
                          sparse_head=heads["sparse"], colbert_head=heads["colbert"], l0_module=l0, teacher=teacher,
                          loss_cfg=loss_cfg, base_model=base_info["base_model"],
                          prior_pruning=base_info["pruning_info"], teacher_layers=teacher_layers,
                          layer_map=layer_map, teacher_heads=teacher_heads)
    model.vocab_record = vocab_record
    model.max_seq_length = base_info["max_seq_length"]
    return model


def _teacher_heads(lcfg: Any, teacher_path: str, hidden_size: int) -> dict[str, torch.nn.Module]:
    """The teacher's own BGE-M3 heads for ``loss.distill_sparse`` / ``loss.distill_colbert``: its head files
    (``sparse_linear.pt`` / ``colbert_linear.pt`` beside the teacher, as FlagEmbedding reads them)."""
    heads: dict[str, torch.nn.Module] = {}
    for key, name in TEACHER_HEAD_LOSSES.items():
        if float(lcfg.get(key, 0) or 0) <= 0:
            continue
        cls, filename = (SparseHead, SPARSE_FILE) if name == "sparse" else (ColbertHead, COLBERT_FILE)
        file = find_head_file(teacher_path, filename)
        if file is None:
            raise ConfigError(f"loss.{key} > 0 needs the teacher's {filename}, and {teacher_path} has none: without "
                              f"it there is no {name} output to distil (set loss.{key}: 0)")
        head = cls(hidden_size)
        load_linear_state(head.linear, file)
        heads[name] = head
    return heads


def _check_text_sources(cfg: Any, lcfg: Any) -> None:
    """A ``type: text`` source has no labels: it trains only through the teacher, so some distill weight is on."""
    from omegaconf import ListConfig

    if needs_teacher(lcfg):
        return
    data = cfg.get("data")
    train = data.get("train") if hasattr(data, "get") else None
    if not isinstance(train, (list, ListConfig)):
        return
    for i, entry in enumerate(train):
        if hasattr(entry, "get") and entry.get("type") == "text":
            raise ConfigError(f"data.train[{i}]: a text source trains only through teacher distillation; set one of "
                              f"{', '.join('loss.' + k for k in TEACHER_LOSSES)} > 0")


def _trim_teacher_vocab(teacher: MaskedBGEM3Backbone, prior: Mapping[str, Any] | None,
                        record: Mapping[str, Any] | None, student_vocab: int) -> None:
    """Give a separately loaded teacher the student's vocabulary: the ids an earlier trim kept (a trimmed
    export being finetuned against its untrimmed base), then the ids this run's ``model.vocab`` kept."""
    from ..vocab import trim_embeddings

    ids: list[int] | None = None
    if prior and prior.get("kept_base_ids"):
        ids = list(prior["kept_base_ids"])
    if record:
        ids = [ids[i] for i in record["kept_base_ids"]] if ids is not None else list(record["kept_base_ids"])
    if ids is None:
        if teacher.config.vocab_size != student_vocab:
            raise ModelLoadError(f"model.teacher: its vocabulary has {teacher.config.vocab_size} tokens, the "
                                 f"student's {student_vocab}: distillation needs the same tokenizer")
        return
    if max(ids) >= teacher.config.vocab_size:
        raise ModelLoadError(f"model.teacher: its vocabulary has {teacher.config.vocab_size} tokens, too few for the "
                             f"student's trimmed vocabulary (base id {max(ids)}): not the model it was trimmed from")
    trim_embeddings(teacher, ids)


def _steps(value: Any, key: str) -> int:
    """``100`` or ``"100ba"`` -> 100 (L0 warmup is counted in optimizer steps, as LLM-Shearing)."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("ba") and text[:-2].isdigit():
        return int(text[:-2])
    if text.isdigit():
        return int(text)
    raise ConfigError(f"{key} must be a number of batches like 200 or '200ba', got {value!r}")


def _pruning_info(name_or_path: str) -> PruningInfo | None:
    """The ``pruning_info.json`` of ``model.name_or_path`` when it is an export, else None."""
    from .loading import resolve_model_path

    try:
        return PruningInfo.load(resolve_model_path(name_or_path))
    except ModelDirError as e:  # not JSON, or not an object
        raise ModelLoadError(f"model.name_or_path: {e}") from None


def _base_model_of(name_or_path: str) -> str:
    """A pruned export's own base model (so finetuned exports still name the original)."""
    info = _pruning_info(name_or_path)
    return info.base_model if info is not None and info.base_model else name_or_path


def _teacher_of(name_or_path: str, stage: str) -> str:
    """Prune stage: the initial weights. Finetune of a pruned export: the model it was pruned from."""
    if stage == "finetune":
        base = getattr(_pruning_info(name_or_path), "base_model", None)
        if base:
            return base
    return name_or_path
