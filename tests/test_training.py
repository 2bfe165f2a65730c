"""Training end to end through Composer on a tiny random XLM-R, plus the pieces it is made of."""
import json
import math

import pytest
import torch
import yaml
from conftest import tiny_config

from bge_pruning.config import load_config
from bge_pruning.models.losses import cosent_loss, hidden_distillation_loss, info_nce_loss, self_distillation_loss
from bge_pruning.training.batching import split_batch
from bge_pruning.training.run import build_trainer


@pytest.mark.slow
def test_prune_tiny_xlmr_end_to_end(tmp_path, tiny_xlmr_path):
    cfg = load_config(tiny_config(tmp_path, tiny_xlmr_path))
    trainer, model = build_trainer(cfg)
    groups = {g["name"]: g for g in trainer.state.optimizers[0].param_groups}
    assert groups["model"]["initial_lr"] == pytest.approx(1e-4)
    assert groups["l0_masks"]["initial_lr"] == pytest.approx(0.3)
    assert groups["lagrangian"]["initial_lr"] == pytest.approx(-0.2)
    assert {id(p) for p in groups["lagrangian"]["params"]} == {id(p) for p in model.l0_module.lambdas.values()}
    trainer.fit()
    trainer.close()

    m = model.last_metrics
    # Expected overall sparsity (expected encoder-layer params vs base) reaches the target within 1 point.
    assert abs(m["expected_sparsity"] - m["target_sparsity"]) < 0.01, m
    for name in ("layer", "head", "intermediate"):
        assert abs(m[f"expected_{name}_sparsity"] - m[f"target_{name}_sparsity"]) < 0.03, m
        # The multipliers moved: lambda_2 only grows under ascent on (s - t)^2; lambda_1 swings (and may cross 0).
        assert m[f"lambda_2_{name}"] > 0.1
    # Deterministic masks give exactly the target shape.
    assert model.l0_module.expected_shape() == model.backbone.shape.with_target(2, 2, 32)
    # Every logged loss part is finite, and all parts appeared.
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = {k for r in rows for k in r if k.startswith("loss/train/")}
    assert {"loss/train/cosent", "loss/train/infonce", "loss/train/infonce_sparse", "loss/train/infonce_colbert",
            "loss/train/self_distill", "loss/train/distill_similarity", "loss/train/distill_embedding",
            "loss/train/distill_hidden", "loss/train/lagrangian", "loss/train/total"} <= losses
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss/"))
    assert any("metrics/sts/STSSpearman" in r for r in rows)
    for name in ("layer", "head", "intermediate"):
        assert max(abs(r.get(f"l0/lambda_1_{name}", 0.0)) for r in rows) > 0.1
    # Every training step logged the L0 state: overall and per-module sparsity, lambdas, expected size.
    l0_rows = {r["step"]: r for r in rows if "l0/expected_sparsity" in r}
    assert sorted(l0_rows) == list(range(1, 201))
    assert {"l0/target_sparsity", "l0/expected_num_params", "l0/target_num_params", "l0/expected_head_sparsity",
            "l0/lambda_1_intermediate", "l0/lambda_2_layer"} <= set(l0_rows[200])
    # Deterministic masks were saved at each evaluation.
    saved = sorted((tmp_path / "ckpt" / "masks").glob("zs_s*.pt"))
    assert [p.name for p in saved] == ["zs_s100.pt", "zs_s200.pt"]
    assert set(torch.load(saved[-1])) == {"layer_z", "head_z", "intermediate_z"}


def test_cosent_matches_hand_computation():
    cos = torch.tensor([0.9, 0.2, 0.5])
    scores = torch.tensor([5.0, 1.0, 3.0])
    # Pairs with s_i > s_j: (0,1), (0,2), (2,1): terms exp(20 (cos_j - cos_i)).
    terms = [20 * (0.2 - 0.9), 20 * (0.5 - 0.9), 20 * (0.2 - 0.5)]
    expected = math.log(1 + sum(math.exp(t) for t in terms))
    assert cosent_loss(cos, scores, 20.0).item() == pytest.approx(expected, rel=1e-4)  # float32
    assert cosent_loss(cos, torch.ones(3)).item() == 0.0  # no ordered pair, no loss


def test_info_nce_uses_grouped_positives():
    scores = torch.tensor([[0.9, 0.1, 0.3, 0.2], [0.2, 0.4, 0.8, 0.1]])  # 2 queries x (pos, neg) each
    tau = 0.1
    expected = -0.5 * (torch.log_softmax(scores[0] / tau, 0)[0] + torch.log_softmax(scores[1] / tau, 0)[2])
    assert info_nce_loss(scores, 2, tau).item() == pytest.approx(expected.item(), rel=1e-6)


def test_self_distillation_is_zero_gradient_at_agreement():
    """d/ds CE(softmax(e / T), softmax(s / T)) = (softmax(s / T) - softmax(e / T)) / T per row: zero when a head
    agrees with the ensemble e = sum_k w_k s_k, which for agreeing heads means weights that sum to 1."""
    torch.manual_seed(0)
    tau, rows, heads = 0.1, 3, 2
    s = torch.randn(rows, 6, requires_grad=True)
    loss = self_distillation_loss([s, s.detach().clone()], [0.5, 0.5], tau)
    loss.backward()
    assert s.grad.abs().max().item() < 1e-6  # float32 round-off of softmax vs log_softmax
    # At agreement the loss is its minimum, the entropy of the head's own distribution.
    p = torch.softmax(s.detach() / tau, -1)
    assert loss.item() == pytest.approx(-(p * p.log()).sum(-1).mean().item(), rel=1e-5)

    # BGE-M3's weights do not sum to 1: agreeing heads with weights (1, 1) are pulled toward softmax(2s / T),
    # with the gradient of the formula above (mean over rows, mean over heads; only s itself takes gradient).
    s.grad = None
    self_distillation_loss([s, s.detach().clone()], [1.0, 1.0], tau).backward()
    expected = (torch.softmax(s.detach() / tau, -1) - torch.softmax(2 * s.detach() / tau, -1)) / (tau * rows * heads)
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)
    assert expected.abs().max().item() > 1e-3  # so the first check could fail


def test_hidden_distillation_ignores_padding():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # third token is padding
    teacher = torch.tensor([[[0.0, 2.0], [1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # Real tokens: squared errors 1, 0, 4, 9 over 2 tokens x 2 dims.
    assert hidden_distillation_loss(student, teacher, mask).item() == pytest.approx(14 / 4)
    assert hidden_distillation_loss(teacher, teacher, mask).item() == 0.0


def test_hidden_distillation_in_the_model(tmp_path, tiny_xlmr_path):
    from bge_pruning.data.collate import PairCollator
    from bge_pruning.data.sts import StsPair
    from bge_pruning.models.composer_bge_m3 import build_model

    cfg = load_config(tiny_config(tmp_path, tiny_xlmr_path))
    model = build_model(cfg).eval()  # deterministic masks: the student differs from its frozen copy
    with torch.no_grad():
        model.l0_module.masks["head"].z_loga[:, 0] = -5.0
    batch = PairCollator(model.tokenizer, 32)([StsPair("a b c d", "e f", 3.0), StsPair("g", "h i j k l", 1.0)])
    with torch.no_grad():
        out = model.forward(batch)
        parts = model.loss(out, batch)
        expected = 0.5 * sum(hidden_distillation_loss(out[v]["hidden"], model.teacher_encode(batch[v])["hidden"],
                                                      batch[v]["attention_mask"]) for v in ("a", "b"))
    assert expected.item() > 1e-4  # the pruned head changed the token states
    assert parts["distill_hidden"].item() == pytest.approx(0.5 * expected.item(), rel=1e-5)


def test_split_batch_keeps_passages_with_their_queries():
    q = {"input_ids": torch.arange(4)[:, None], "attention_mask": torch.ones(4, 1)}
    p = {"input_ids": torch.arange(8)[:, None], "attention_mask": torch.ones(8, 1)}
    batch = {"task": "retrieval", "query": q, "passages": p, "n_passages_per_query": 2, "source": "x"}
    parts = split_batch(batch, 3)
    assert [mb["query"]["input_ids"].flatten().tolist() for mb in parts] == [[0, 1, 2], [3]]
    assert [mb["passages"]["input_ids"].flatten().tolist() for mb in parts] == [[0, 1, 2, 3, 4, 5], [6, 7]]
    assert all(mb["source"] == "x" for mb in parts)


def test_in_batch_mrr_matches_hand_ranks():
    from bge_pruning.models.composer_bge_m3 import InBatchMRR

    # 2 queries x 2 passages each; query 0's positive is column 0 (rank 2), query 1's is column 2 (rank 1).
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.2], [0.3, 0.1, 0.8, 0.7]])
    metric = InBatchMRR()
    metric.update(scores, n_passages_per_query=2)
    assert metric.compute().item() == pytest.approx(100 * (1 / 2 + 1 / 1) / 2)  # x100, as every reported score


def test_sts_spearman_metric_is_x100():
    from scipy.stats import spearmanr

    from bge_pruning.models.composer_bge_m3 import STSSpearman

    cos, gold = torch.tensor([0.1, 0.9, 0.4, 0.3, 0.8]), torch.tensor([1.0, 4.5, 2.0, 3.0, 4.0])
    metric = STSSpearman()
    metric.update(cos, gold)
    assert metric.compute().item() == pytest.approx(100 * spearmanr(cos, gold).statistic)  # 90.0


def test_bge_m3_head_files_are_loaded(tmp_path, tiny_xlmr_path):
    from bge_pruning.models.composer_bge_m3 import build_model

    cfg = load_config(tiny_config(tmp_path, tiny_xlmr_path))
    model = build_model(cfg)
    for head, filename in ((model.sparse_head, "sparse_linear.pt"), (model.colbert_head, "colbert_linear.pt")):
        saved = torch.load(tiny_xlmr_path / filename)
        assert torch.equal(head.linear.weight, saved["weight"]) and torch.equal(head.linear.bias, saved["bias"])


@pytest.mark.slow
def test_vocab_trim_before_training(tmp_path, tiny_xlmr_path):
    """model.vocab trims student and teacher to the same ids before training; the export and a checkpoint
    rebuilt offline both have the trimmed vocabulary."""
    from tiny_models import corpus
    from transformers import AutoConfig, AutoTokenizer

    from bge_pruning.training.checkpoint import load_composer_model
    from bge_pruning.training.run import run

    texts = tmp_path / "corpus.txt"
    texts.write_text("\n".join(corpus(20, seed=3)) + "\n")
    path = tiny_config(tmp_path, tiny_xlmr_path, max_duration="12ba", save_interval="12ba", eval_interval="12ba")
    cfg = load_config(path, [f"model.vocab.corpus=[{texts}]"])
    trainer, model = build_trainer(cfg)
    kept = model.vocab_record["kept_base_ids"]
    base_tok = AutoTokenizer.from_pretrained(tiny_xlmr_path)
    assert 5 < len(kept) < len(base_tok)
    assert model.backbone.embeddings.word_embeddings.num_embeddings == len(kept) == len(model.tokenizer)
    teacher = model._teacher.module
    assert torch.equal(teacher.embeddings.word_embeddings.weight, model.backbone.embeddings.word_embeddings.weight)
    sample = corpus(20, seed=3)[0]
    assert [kept[i] for i in model.tokenizer(sample)["input_ids"]] == base_tok(sample)["input_ids"]
    trainer.close()

    summary = run(load_config(path, [f"model.vocab.corpus=[{texts}]", "run_name=vocab"]))
    export = tmp_path / "model"
    info = json.loads((export / "pruning_info.json").read_text())
    assert info["vocabulary"]["kept_size"] == len(kept)
    assert AutoConfig.from_pretrained(export, trust_remote_code=True).vocab_size == len(kept)
    assert len(AutoTokenizer.from_pretrained(export)) == len(kept)
    rebuilt = load_composer_model(tmp_path / "ckpt" / "latest-rank0.pt")
    assert rebuilt.backbone.embeddings.word_embeddings.num_embeddings == len(kept)
    assert rebuilt.export_info()["vocabulary"]["kept_base_ids"] == kept
    assert summary["steps"] == 12


def test_grad_clip_norm_adds_composer_gradient_clipping(tmp_path, tiny_xlmr_path):
    from composer.algorithms import GradientClipping

    from bge_pruning.models.l0_module import ConfigError
    from bge_pruning.training.run import build_algorithms

    cfg = load_config(tiny_config(tmp_path, tiny_xlmr_path), ["train.grad_clip_norm=1.0"])
    clips = [a for a in build_algorithms(cfg.train) if isinstance(a, GradientClipping)]
    assert len(clips) == 1 and clips[0].clipping_type == "norm" and clips[0].clipping_threshold == 1.0
    default_algorithms = build_algorithms(load_config(tiny_config(tmp_path, tiny_xlmr_path)).train)
    assert not any(isinstance(a, GradientClipping) for a in default_algorithms)
    with pytest.raises(ConfigError, match="train.grad_clip_norm must be a positive number"):
        build_algorithms(load_config(tiny_config(tmp_path, tiny_xlmr_path), ["train.grad_clip_norm=-1"]).train)


def test_loggers_and_monitors_from_config(tmp_path, tiny_xlmr_path, monkeypatch):
    """TensorBoard and MLflow (both offline, local files) and the LR / speed monitors, configured by name."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database unless told otherwise
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bge_pruning.models.l0_module import ConfigError

    tb, mlruns = tmp_path / "tb", tmp_path / "mlruns"
    path = tiny_config(tmp_path, tiny_xlmr_path, max_duration="6ba", eval_interval="6ba")
    cfg = load_config(path, [f"loggers={{tensorboard: {{log_dir: {tb}, flush_interval: 1}}, mlflow: "
                             f"{{tracking_uri: 'file:{mlruns}', experiment_name: tiny}}}}",
                             "callbacks={lr_monitor: {}, speed_monitor: {window_size: 2}}"])
    trainer, model = build_trainer(cfg)
    trainer.fit()
    trainer.close()
    events = list(tb.rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert any(t.startswith("lr-DecoupledAdamW/") for t in tags), tags
    assert "throughput/batches_per_sec" in tags and "loss/train/total" in tags and "l0/expected_sparsity" in tags
    # the model declares flops_per_batch, so the speed monitor reports FLOP/s too
    assert "throughput/device/flops_per_sec" in tags, sorted(t for t in tags if t.startswith("throughput"))
    logged = {str(p.relative_to(next(p.parents[i] for i in range(len(p.parents)) if p.parents[i].name == "metrics")))
              for p in mlruns.rglob("*") if p.is_file() and "metrics" in p.parts}
    assert "loss/train/total" in logged and "l0/expected_sparsity" in logged, sorted(logged)[:20]
    with pytest.raises(ConfigError, match="loggers.tensorbord: unknown; valid: tensorboard, mlflow, wandb"):
        build_trainer(load_config(path, ["loggers={tensorbord: {}}"]))
    with pytest.raises(ConfigError, match=r"callbacks.speed_monitor: unknown setting\(s\) \['window'\]"):
        build_trainer(load_config(path, ["callbacks={speed_monitor: {window: 3}}"]))


def test_prune_tiny_mpnet_few_steps(tmp_path, tiny_mpnet_path):
    """An MPNet base trains through the same path: masks move, every loss is finite, the export reloads."""
    from transformers import AutoModel

    cfg = yaml.safe_load(tiny_config(tmp_path, tiny_mpnet_path, max_duration="6ba", eval_interval="6ba").read_text())
    cfg["model"].update(pooling="mean", heads={"sparse": False, "colbert": False})
    cfg["loss"] = {"distill_similarity": 1.0, "distill_embedding": 1.0, "distill_hidden": 0.5}
    (tmp_path / "mpnet.yaml").write_text(yaml.safe_dump(cfg))
    trainer, model = build_trainer(load_config(tmp_path / "mpnet.yaml"))
    assert type(model.backbone.encoder.layer[0].attention).__name__ == "MPNetAttention"
    before = {k: v.detach().clone() for k, v in model.l0_module.named_parameters()}
    bias_before = model.backbone.encoder.relative_attention_bias.weight.detach().clone()
    trainer.fit()
    trainer.close()
    moved = [k for k, v in model.l0_module.named_parameters() if not torch.equal(v, before[k])]
    assert any("z_loga" in k for k in moved) and any("lambda" in k for k in moved), moved
    assert not torch.equal(model.backbone.encoder.relative_attention_bias.weight, bias_before)  # it trains
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = {k for r in rows for k in r if k.startswith("loss/train/")}
    assert {"loss/train/cosent", "loss/train/infonce", "loss/train/distill_hidden", "loss/train/lagrangian"} <= losses
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss/"))
    # The trained model exports (custom class when heads differ per layer) and the export reloads.
    from bge_pruning.export import export_composer_model

    out = export_composer_model(model, tmp_path / "model")
    info = json.loads((out / "pruning_info.json").read_text())
    reloaded = AutoModel.from_pretrained(str(out), trust_remote_code=info["export"]["trust_remote_code"])
    assert type(reloaded).__name__ in ("MPNetModel", "PrunedMPNetModel")
    assert info["verification"]["max_abs_diff"] < 1e-4


def test_flops_per_batch_is_the_analytic_count(tmp_path, tiny_xlmr_path):
    """What Composer's SpeedMonitor reads: 3 x the student's forward FLOPs (forward + backward) plus the teacher's
    forward, per view, at each view's padded length; computed here by hand from the per-layer formula."""
    from bge_pruning.models.composer_bge_m3 import build_model

    cfg = load_config(tiny_config(tmp_path, tiny_xlmr_path))
    model = build_model(cfg)
    shape = model.backbone.shape
    d, dh = shape.hidden_size, shape.head_dim

    def by_hand(t: int) -> int:  # forward FLOPs of one sequence of t tokens, every layer
        return sum(2 * t * d * 3 * h * dh + 2 * t * h * dh * d + 4 * t * t * h * dh + 4 * t * d * i
                   for h, i in zip(shape.heads_per_layer, shape.intermediate_per_layer))

    ids = {n_t: {"input_ids": torch.ones(n_t[0], n_t[1], dtype=torch.long)} for n_t in ((3, 7), (6, 11), (4, 5))}
    retrieval = {"task": "retrieval", "query": ids[(3, 7)], "passages": ids[(6, 11)], "n_passages_per_query": 2}
    assert model._teacher is not None  # the tiny config distils: the teacher's forward is counted once
    assert model.flops_per_batch(retrieval) == 4 * (3 * by_hand(7) + 6 * by_hand(11))
    text = {"task": "text", "texts": ids[(4, 5)]}
    assert model.flops_per_batch(text) == 4 * 4 * by_hand(5)
    model._teacher = None  # no teacher: forward + backward of the student only
    assert model.flops_per_batch(text) == 3 * 4 * by_hand(5)
