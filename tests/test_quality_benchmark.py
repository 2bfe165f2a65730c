"""The quality benchmark's pieces: the layer-drop builder, the stage configs, and the results table arithmetic."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bge_pruning.baselines import build_layer_drop, check_keep_layers, choose_layers, layer_drop_zs
from bge_pruning.config import load_config
from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the cat sits on the red car.", "a dog", "people walk near the river and the big house with music.",
         "der hund und die katze."]


import bge_pruning.benchmarks.quality as bq  # noqa: E402


# ---------------------------------------------------------------------- layer choice
def test_layer_rules():
    assert choose_layers(12, 6, "ends") == [0, 2, 4, 7, 9, 11]  # DistilBERT's initialisation from BERT-base
    assert choose_layers(6, 3, "ends") == [0, 3, 5]  # ties (2.5) round up
    assert choose_layers(6, 3, "bottom") == [0, 2, 4]
    assert choose_layers(6, 3, "top") == [1, 3, 5]
    assert choose_layers(6, 1, "ends") == [5] and choose_layers(6, 6, "top") == list(range(6))
    with pytest.raises(ValueError, match="unknown layer rule"):
        choose_layers(6, 3, "middle")


def test_bottom_rule_and_bad_counts():
    assert choose_layers(12, 6, "bottom") == [0, 2, 4, 6, 8, 10]
    assert choose_layers(12, 4, "bottom") == [0, 3, 6, 9]
    assert choose_layers(4, 4, "bottom") == [0, 1, 2, 3]
    assert choose_layers(5, 1, "bottom") == [0]
    for rule in ("ends", "bottom", "top"):
        for bad in ((6, 0), (6, 7), (0, 1)):
            with pytest.raises(ValueError):
                choose_layers(*bad, rule)
    assert bq.layer_drop_count(6, 50) == 3


def test_keep_layers_validation():
    assert check_keep_layers([4, 0, 2], 6) == [0, 2, 4]
    with pytest.raises(ValueError, match="out of range"):
        check_keep_layers([0, 6], 6)
    with pytest.raises(ValueError, match="duplicates"):
        check_keep_layers([1, 1], 6)
    with pytest.raises(ValueError, match="empty"):
        check_keep_layers([], 6)
    assert layer_drop_zs([0, 2], 4)["layer_z"].tolist() == [1.0, 0.0, 1.0, 0.0]


# ---------------------------------------------------------------------- the builder keeps exactly those layers
@torch.no_grad()
def test_layer_drop_export_equals_masked_model(tiny_xlmr_path, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    out = build_layer_drop(str(tiny_xlmr_path), tmp_path / "ld", keep_layers=[0, 2], pooling="cls")
    info = json.loads((out / "pruning_info.json").read_text())
    assert info["kept_layers"] == [0, 2]
    assert info["base_model"] == str(tiny_xlmr_path)  # so `stage: finetune` distils from the base
    assert info["baseline"]["method"] == "layer_drop"

    tok = AutoTokenizer.from_pretrained(str(tiny_xlmr_path))
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    exported = AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
    assert exported.config.num_hidden_layers == 2
    got = exported(**batch).last_hidden_state

    base = MaskedBGEM3Backbone.from_pretrained(str(tiny_xlmr_path)).eval()
    real = batch["attention_mask"].bool()
    masked = base(batch["input_ids"], batch["attention_mask"], layer_z=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert (got - masked)[real].abs().max().item() < 1e-4
    # ... and those layers, not others: keeping layers 0 and 1 gives a different model.
    other = base(batch["input_ids"], batch["attention_mask"], layer_z=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert (got - other)[real].abs().max().item() > 1e-2
    # The kept layers' weights are the base's, unchanged.
    for new_i, old_i in enumerate([0, 2]):
        a = exported.encoder.layer[new_i].intermediate.dense.weight
        b = base.encoder.layer[old_i].intermediate.dense.weight
        assert torch.equal(a, b)


def test_layer_drop_needs_exactly_one_choice(tiny_xlmr_path, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        build_layer_drop(str(tiny_xlmr_path), tmp_path / "x", keep_layers=[0], n_layers=1)


# ---------------------------------------------------------------------- results arithmetic and table
BASE = {"name": "base", "encoder_params": 10_646_784, "total_params": 22_713_216, "shape": "6L/12H/1536I",
        "spearman": 86.72, "ndcg10": 64.51}


def run(name, method, target, seed, spearman, ndcg10, params=5_325_696, rule=None):
    return {"name": name, "method": method, "target": target, "seed": seed, "layer_rule": rule,
            "encoder_params": params, "total_params": params + 12_066_432, "shape": "4L/9H/1152I",
            "spearman": spearman, "ndcg10": ndcg10}


RUNS = [
    run("reference", "reference", 100, 17, 87.0, 63.0, 10_646_784),
    run("l0_50", "l0", 50, 17, 85.0, 62.0), run("l0_50", "l0", 50, 18, 86.0, 61.0),
    run("layer_drop_50_ends", "layer_drop", 50, 17, 84.5, 60.0, 5_323_392, "ends"),
    run("layer_drop_50_bottom", "layer_drop", 50, 17, 80.0, 61.5, 5_323_392, "bottom"),
]


def test_aggregate_means_and_spread():
    rows = {r["name"]: r for r in bq.aggregate(RUNS)}
    l0 = rows["l0_50"]
    assert l0["seeds"] == [17, 18]
    assert l0["spearman"] == pytest.approx(85.5) and l0["spearman_min"] == 85.0 and l0["spearman_max"] == 86.0
    assert l0["ndcg10"] == pytest.approx(61.5) and l0["ndcg10_per_seed"] == [62.0, 61.0]
    assert rows["reference"]["seeds"] == [17]


def test_retention_vs_base_and_best_layer_drop_per_metric():
    rows = {r["name"]: r for r in bq.annotate(bq.aggregate(RUNS), BASE)}
    l0 = rows["l0_50"]
    assert l0["spearman_retention"] == pytest.approx(100 * 85.5 / 86.72)
    assert l0["ndcg10_retention"] == pytest.approx(100 * 61.5 / 64.51)
    # The best layer-drop is chosen per metric: ends on STS, bottom on SciFact.
    assert l0["spearman_best_layer_drop"] == "layer_drop_50_ends"
    assert l0["spearman_vs_layer_drop"] == pytest.approx(1.0)
    assert l0["ndcg10_best_layer_drop"] == "layer_drop_50_bottom"
    assert l0["ndcg10_vs_layer_drop"] == pytest.approx(0.0)
    assert rows["reference"]["spearman_vs_layer_drop"] is None  # no layer-drop at 100%
    assert rows["layer_drop_50_ends"]["spearman_vs_layer_drop"] is None
    assert "spearman_retention" not in RUNS[0]  # inputs untouched


def test_check_targets_against_the_base():
    (check,) = bq.check_targets(bq.aggregate(RUNS), BASE)
    assert check["name"] == "l0_50"
    assert check["sts_retention"] == pytest.approx(98.593, abs=1e-3) and check["sts_retention_met"] is True
    assert check["retrieval_retention"] == pytest.approx(95.334, abs=1e-3) and check["retrieval_retention_met"]
    assert check["met"] is True and "delta_met" not in check  # MiniLM: the margin is reported, not required
    # all-mpnet-base-v2 must also beat the best layer-drop by 1 point on both metrics: +1.0 and +0.0 -> not met.
    (check,) = bq.check_targets(bq.aggregate(RUNS), BASE, min_delta=1.0)
    assert check["delta_met"] is False and check["met"] is False
    worse = [dict(r, ndcg10=55.0) if r["method"] == "l0" else r for r in RUNS]
    (check,) = bq.check_targets(bq.aggregate(worse), BASE)
    assert check["retrieval_retention_met"] is False and check["met"] is False
    assert any("NOT MET" in line for line in bq.verdict_lines([check]))
    no_scifact = [{k: v for k, v in r.items() if k != "ndcg10"} for r in RUNS]
    (check,) = bq.check_targets(bq.aggregate(no_scifact), BASE)
    assert check["retrieval_retention"] is None and check["met"] is None
    assert bq.check_targets(bq.aggregate(RUNS[:1]), BASE) == []
    assert bq.verdict_lines([]) == ["no L0 run at the check target: nothing to judge"]


def test_format_table():
    lines = bq.format_table(bq.aggregate(RUNS), BASE).splitlines()
    assert len(lines) == 2 + 1 + 4  # header, rule, base, one row per run name
    assert "86.72" in lines[2] and "64.51" in lines[2]
    l0 = next(line for line in lines if line.startswith("l0_50 "))
    assert "85.50 [85.00, 86.00]" in l0 and "98.6" in l0 and "61.50 [61.00, 62.00]" in l0 and "+1.00" in l0
    assert "17,18" in l0


def test_plan_runs_order():
    plan = bq.plan_runs(["reference", "l0", "l0_global", "layer_drop"], [75, 50])
    assert [p[0] for p in plan] == ["reference", "l0_50", "l0_global_50", "layer_drop_50_ends",
                                    "layer_drop_50_bottom", "layer_drop_50_top", "l0_75", "l0_global_75",
                                    "layer_drop_75_ends", "layer_drop_75_bottom", "layer_drop_75_top"]
    assert bq.plan_runs(["l0"], [50]) == [("l0_50", "l0", 50, None)]
    with pytest.raises(bq.BenchmarkError, match="unknown"):
        bq.plan_runs(["pruning"], [50])


def test_shape_label():
    shape = {"n_layers": 4, "hidden_size": 384, "head_dim": 32, "heads_per_layer": [9, 9, 9, 9],
             "intermediate_per_layer": [1152] * 4}
    assert bq.shape_label(shape) == "4L/9H/1152I"
    shape.update(n_layers=3, heads_per_layer=[2, 0, 1], intermediate_per_layer=[8, 8, 4])
    assert bq.shape_label(shape) == "3L/0,1,2H/4,8I"


@pytest.mark.slow
def test_candidate_shapes_is_what_target_shapes_prints():
    from bge_pruning.shapes import EncoderShape, candidate_shapes

    minilm = EncoderShape.uniform(6, 12, 384, 1536, vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
    first = candidate_shapes(minilm, 0.5, min_layers=3, step=64)[0]
    assert first.label == "4L/9H/1152I" and first.share == pytest.approx(5_325_696 / 10_646_784)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "target_shapes.py"), "--share", "0.5", "--top", "2"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    bge = EncoderShape.uniform(24, 16, 1024, 4096, vocab_size=250002, max_position_embeddings=8194, type_vocab_size=1)
    expected = [c.label for c in candidate_shapes(bge, 0.5, min_layers=12, step=256)[:2]]
    assert [line.split()[0] for line in out[1:]] == expected
    with pytest.raises(ValueError, match="share"):
        candidate_shapes(minilm, 1.5)


# ---------------------------------------------------------------------- the SciFact split
def test_scored_claims_are_never_the_trained_half():

    scifact = ROOT.parent / "shared" / "data" / "scifact"
    if not (scifact / "qrels" / "train.tsv").is_file():
        pytest.skip(f"SciFact not found at {scifact} (shared/ is absent on this machine)")
    corpus, queries, qrels = bq.scifact_scored(scifact)
    assert len(corpus) == 5183 and set(queries) == set(qrels) and len(queries) == 406
    scored_docs = {corpus[d] for rel in qrels.values() for d in rel}
    # Everything both templates train on, loaded as training loads it: no scored claim, and no scored claim's
    # relevant abstract as a trained positive (the abstracts are in the corpus text, which has no labels).
    from transformers import AutoTokenizer

    from bge_pruning.data.mixture import build_sources
    from bge_pruning.models.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded:all-MiniLM-L6-v2"))
    for name in ("prune.yaml", "finetune.yaml"):
        cfg = load_config(ROOT / "configs" / "quality" / name)
        cwd = Path.cwd()
        try:
            os.chdir(ROOT)  # the templates' paths are relative to the project root
            sources = build_sources(cfg.data, tokenizer)
        finally:
            os.chdir(cwd)
        kinds = set()
        for source in sources:
            for example in source.examples:
                if isinstance(example, str):  # plain text
                    kinds.add("text")
                    assert example not in queries.values()
                elif hasattr(example, "positive"):  # a retrieval triplet
                    kinds.add("retrieval")
                    assert example.query not in queries.values() and example.positive not in scored_docs
        assert kinds == {"text", "retrieval"}, name


# ---------------------------------------------------------------------- stage configs
def test_stage_configs_validate(tmp_path):
    run_dir = tmp_path / "l0_50_s17_prune"
    cfg = bq.stage_config("prune", "l0_50_s17_prune", run_dir, name_or_path="embedded:all-MiniLM-L6-v2",
                          teacher="embedded:all-MiniLM-L6-v2", pooling="mean", steps=40, seed=17,
                          target_model={"n_layers": 4, "n_heads": 9, "intermediate_size": 1152},
                          overrides=["train.l0_lr=0.5", "loss.distill_embedding=2"])
    loaded = load_config(bq.write_config(cfg, tmp_path / "configs" / "l0_50_prune.yaml"))
    assert loaded.stage == "prune" and loaded.train.max_duration == "40ba"
    assert dict(loaded.model.l0_module.target_model) == {"n_layers": 4, "n_heads": 9, "intermediate_size": 1152}
    assert loaded.model.l0_module.lagrangian_warmup_steps == "8ba"  # 20%: 80% of the steps at the target
    assert loaded.train.l0_lr == 0.5 and loaded.loss.distill_embedding == 2
    assert loaded.export.output_dir == str(run_dir / "model")

    cfg = bq.stage_config("prune", "g", tmp_path / "g", name_or_path="embedded:all-MiniLM-L6-v2",
                          teacher="embedded:all-MiniLM-L6-v2", pooling="mean", steps=40, seed=17,
                          target_model={"share": 0.5}, pruning_modules=bq.GLOBAL_MODULES)
    loaded = load_config(bq.write_config(cfg, tmp_path / "configs" / "g.yaml"))
    assert dict(loaded.model.l0_module.target_model)["share"] == 0.5
    assert list(loaded.model.l0_module.pruning_modules) == ["layer", "head", "intermediate", "head_layer", "mlp"]

    cfg = bq.stage_config("finetune", "l0_50_s17", tmp_path / "l0_50", name_or_path=str(run_dir / "model"),
                          teacher="embedded:all-MiniLM-L6-v2", pooling="mean", steps=20, seed=1017)
    loaded = load_config(bq.write_config(cfg, tmp_path / "configs" / "l0_50.yaml"))
    assert loaded.stage == "finetune" and loaded.seed == 1017
    # Every method distils from the unpruned base, with the same losses and data as the prune stage.
    assert loaded.model.teacher == "embedded:all-MiniLM-L6-v2"
    prune = load_config(ROOT / "configs" / "quality" / "prune.yaml")
    assert dict(loaded.loss) == dict(prune.loss)
    assert [dict(s) for s in loaded.data.train] == [dict(s) for s in prune.data.train]
    with pytest.raises(bq.BenchmarkError, match="key=value"):
        bq.stage_config("finetune", "x", tmp_path / "x", name_or_path="m", teacher="m", pooling="mean", steps=1,
                        seed=1, overrides=["train.lr"])


def test_missing_data_is_a_clear_skip(tmp_path, capsys):
    assert bq.main(["--stsb-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "skipping the quality benchmark" in err and "sts-dev.csv" in err
    assert not (tmp_path / "out").exists()


def test_report_only_collects_finished_runs_and_trains_nothing(tmp_path, monkeypatch, capsys):
    """Runs made by several processes at once (one per core) each rewrite results.json with their own runs;
    --report-only rebuilds it from every finished run in --out-dir, trains nothing and lists the rest."""
    sts = tmp_path / "sts"
    sts.mkdir()
    pairs = [("A man is playing a guitar.", "A man plays the guitar.", 4.8), ("A dog runs.", "A cat sleeps.", 0.4),
             ("Two kids play football.", "Children are playing soccer.", 4.1), ("The sun is hot.", "I like tea.", 0.0),
             ("A woman slices onions.", "A woman is cutting an onion.", 4.6), ("A car drives.", "A bird sings.", 0.8),
             ("The market fell today.", "Stocks dropped on Monday.", 3.2), ("He reads a book.", "She reads.", 2.0)]
    rows = "".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s:.3f}\t{a}\t{b}\n"
                   for i, (a, b, s) in enumerate(pairs))
    for split in ("dev", "train"):
        (sts / f"sts-{split}.csv").write_text(rows)
    out = tmp_path / "out"
    init = out / "layer_drop_50_ends_init" / "model"
    build_layer_drop("embedded:all-MiniLM-L6-v2", init, keep_layers=[0, 3, 5], pooling="mean")
    shutil.copytree(init, out / "layer_drop_50_ends_s17" / "model")  # a finished run (here: not finetuned)
    (out / "layer_drop_50_ends_s17" / "summary.json").write_text(json.dumps({"train_seconds": 2.5}))

    def no_training(*args, **kwargs):
        raise AssertionError("--report-only started a training")

    monkeypatch.setattr(bq, "train_stage", no_training)
    argv = ["--report-only", "--no-retrieval", "--stsb-dir", str(sts), "--out-dir", str(out),
            "--only", "l0_global_50", "layer_drop_50_ends", "--seeds", "17", "18"]
    assert bq.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["seed"]) for r in res["per_seed"]] == [("layer_drop_50_ends", 17)]
    assert sorted(res["not_finished"]) == ["l0_global_50_s17", "l0_global_50_s18", "layer_drop_50_ends_s18"]
    assert not (out / "l0_global_50_s17_prune").exists() and not (out / "layer_drop_50_ends_s18").exists()
    # The collected score is the export's own evaluation, and the run's training time is its summary's.
    from bge_pruning.data import load_sts

    direct = bq.score_model(out / "layer_drop_50_ends_s17" / "model", load_sts(str(sts / "sts-dev.csv"), "dev"),
                            None, None)
    run = res["per_seed"][0]
    assert run["spearman"] == pytest.approx(direct["spearman"], abs=1e-9) and run["train_seconds"] == 2.5
    assert (out / "layer_drop_50_ends_s17" / "eval.json").is_file()
    assert "not finished, left out of the table: " in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bq.parse_args(["--report-only", "--overwrite"])
    assert e.value.code == 2
