"""The quality benchmark's pieces: the layer-drop builder, the stage configs, and the results table arithmetic."""
from __future__ import annotations

import importlib.util
import json
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


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_quality", ROOT / "scripts" / "benchmark_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_quality"] = module
    spec.loader.exec_module(module)
    return module


bq = _load_script()


# ---------------------------------------------------------------------- layer choice
def test_layer_rules():
    assert choose_layers(12, 6, "ends") == [0, 2, 4, 7, 9, 11]  # DistilBERT's initialisation from BERT-base
    assert choose_layers(6, 3, "ends") == [0, 3, 5]  # ties (2.5) round up
    assert choose_layers(6, 3, "bottom") == [0, 2, 4]
    assert choose_layers(6, 3, "top") == [1, 3, 5]
    assert choose_layers(6, 1, "ends") == [5] and choose_layers(6, 6, "top") == list(range(6))
    with pytest.raises(ValueError, match="unknown layer rule"):
        choose_layers(6, 3, "middle")
    assert bq.LAYER_RULES == __import__("bge_pruning.baselines", fromlist=["x"]).LAYER_RULES


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
RUNS = [
    {"name": "reference", "method": "reference", "target": 100, "encoder_params": 10_646_784,
     "total_params": 22_713_216, "spearman": 88.0, "pearson": 87.0, "train_seconds": 600.0},
    {"name": "l0_50", "method": "l0", "target": 50, "encoder_params": 5_325_696, "total_params": 17_392_128,
     "spearman": 86.5, "pearson": 86.0, "train_seconds": 500.0},
    {"name": "layer_drop_50_bottom", "method": "layer_drop", "target": 50, "encoder_params": 5_323_392,
     "total_params": 17_389_824, "spearman": 80.0, "pearson": 79.0, "train_seconds": 400.0},
    {"name": "layer_drop_50", "method": "layer_drop", "target": 50, "encoder_params": 5_323_392,
     "total_params": 17_389_824, "spearman": 82.0, "pearson": 81.0, "train_seconds": 400.0},
    {"name": "l0_75", "method": "l0", "target": 75, "encoder_params": 7_988_544, "total_params": 20_054_976,
     "spearman": 87.8, "pearson": 87.1, "train_seconds": 550.0},
]


def test_retention_and_deltas():
    rows = {r["name"]: r for r in bq.annotate(RUNS)}
    assert rows["reference"]["retention"] == pytest.approx(100.0)
    assert rows["l0_50"]["retention"] == pytest.approx(100 * 86.5 / 88.0)
    assert rows["l0_50"]["delta_vs_layer_drop"] == pytest.approx(4.5)  # vs the BEST layer-drop variant
    assert rows["l0_50"]["best_layer_drop"] == "layer_drop_50"
    assert rows["layer_drop_50"]["retention"] == pytest.approx(100 * 82.0 / 88.0)
    assert rows["layer_drop_50"]["delta_vs_layer_drop"] is None
    assert rows["l0_75"]["delta_vs_layer_drop"] is None  # no layer-drop run at 75%
    assert rows["reference"]["delta_vs_layer_drop"] is None
    assert bq.retention(1.0, 0.0) is None and bq.retention(None, 88.0) is None
    assert "retention" not in RUNS[0]  # inputs untouched


def test_check_targets():
    check = bq.check_targets(RUNS)
    assert check["retention"] == pytest.approx(98.295, abs=1e-3)
    assert check["retention_met"] and check["delta_met"] and check["met"]
    assert check["delta_vs_each_layer_drop"] == pytest.approx({"layer_drop_50_bottom": 6.5, "layer_drop_50": 4.5})
    assert any("layer_drop_50_bottom +6.50" in line for line in bq.verdict_lines(check))
    # A stronger layer-drop variant is what L0 must beat.
    strong = RUNS + [dict(RUNS[2], name="layer_drop_50_ends", spearman=84.0)]
    check = bq.check_targets(strong)
    assert check["delta_vs_layer_drop"] == pytest.approx(2.5) and check["delta_met"] is False
    assert check["best_layer_drop"] == "layer_drop_50_ends"
    worse = [dict(r, spearman=85.0) if r["name"] == "l0_50" else r for r in RUNS]
    check = bq.check_targets(worse)
    assert check["retention_met"] is False and check["delta_met"] is True and check["met"] is False
    no_baseline = [r for r in RUNS if r["method"] != "layer_drop"]
    check = bq.check_targets(no_baseline)
    assert check["delta_vs_layer_drop"] is None and check["met"] is None
    assert any("not measured" in line for line in bq.verdict_lines(check))


def test_format_table():
    base = {"name": "base", "encoder_params": 10_646_784, "total_params": 22_713_216, "spearman": 86.72,
            "pearson": 86.0}
    text = bq.format_table(RUNS, base)
    lines = text.splitlines()
    assert len(lines) == 2 + 1 + len(RUNS)
    l0 = next(line for line in lines if line.startswith("l0_50 "))
    assert "5,325,696" in l0 and "86.50" in l0 and "98.30" in l0 and "+4.50" in l0
    assert "86.72" in lines[2]


def test_plan_runs_order():
    plan = bq.plan_runs([75, 60, 50], [50], ["ends", "bottom", "top"])
    assert [p[0] for p in plan] == ["reference", "l0_50", "layer_drop_50_ends", "layer_drop_50_bottom",
                                    "layer_drop_50_top", "l0_60", "l0_75"]
    assert plan[3][3] == "bottom"
    assert {p[1] for p in plan} <= set(bq.METHODS)


def test_l0_shape_option():
    assert bq.parse_shape_option("50=6L/6H/768I") == (50, (6, 6, 768))
    args = bq.parse_args(["--l0-shape", "50=6L/6H/768I", "60=5L/9H/1088I"])
    assert args.l0_shape == {50: (6, 6, 768), 60: (5, 9, 1088)}
    for bad in ("50=6/6/768", "6L/6H/768I", "fifty=6L/6H/768I"):
        with pytest.raises(bq.BenchmarkError, match="TARGET=<layers>L"):
            bq.parse_shape_option(bad)
    with pytest.raises(SystemExit):
        bq.parse_args(["--l0-shape", "50=6x6x768"])


def test_shape_label():
    shape = {"n_layers": 4, "hidden_size": 384, "head_dim": 32, "heads_per_layer": [9, 9, 9, 9],
             "intermediate_per_layer": [1152] * 4}
    assert bq.shape_label(shape) == "4L/9H/1152I"
    shape.update(n_layers=3, heads_per_layer=[2, 0, 1], intermediate_per_layer=[8, 8, 4])
    assert bq.shape_label(shape) == "3L/0,1,2H/4,8I"


# ---------------------------------------------------------------------- stage configs
def test_stage_configs_validate(tmp_path):
    train = tmp_path / "sts-train.csv"
    train.write_text("sentence1\tsentence2\tscore\na\tb\t1.0\n")
    run_dir = tmp_path / "l0_50_prune"
    cfg = bq.stage_config("prune", "l0_50_prune", run_dir, name_or_path=bq.BASE, steps=40, batch_size=8,
                          train_source=train, seed=17, target_shape=(4, 9, 1152),
                          overrides=["train.l0_lr=0.5", "loss.distill_embedding=2"])
    path = bq.write_config(cfg, tmp_path / "configs" / "l0_50_prune.yaml")
    loaded = load_config(path)
    assert loaded.stage == "prune" and loaded.train.max_duration == "40ba"
    assert dict(loaded.model.l0_module.target_model) == {"n_layers": 4, "n_heads": 9, "intermediate_size": 1152}
    assert loaded.model.l0_module.lagrangian_warmup_steps == "20ba"
    assert loaded.train.l0_lr == 0.5 and loaded.loss.distill_embedding == 2
    assert loaded.export.output_dir == str(run_dir / "model")
    assert loaded.data.train[0].source == str(train)

    cfg = bq.stage_config("finetune", "l0_50", tmp_path / "l0_50", name_or_path=str(run_dir / "model"), steps=20,
                          batch_size=8, train_source=train, seed=18)
    loaded = load_config(bq.write_config(cfg, tmp_path / "configs" / "l0_50.yaml"))
    assert loaded.stage == "finetune" and loaded.seed == 18
    # Every method distils from the unpruned base, with the same losses as the prune stage.
    assert loaded.model.teacher == bq.BASE
    prune = load_config(ROOT / "configs" / "quality" / "prune.yaml")
    for key in ("cosent", "distill_similarity", "distill_embedding", "infonce"):
        assert loaded.loss[key] == prune.loss[key]
    with pytest.raises(bq.BenchmarkError, match="key=value"):
        bq.stage_config("finetune", "x", tmp_path / "x", name_or_path="m", steps=1, batch_size=2,
                        train_source=train, seed=1, overrides=["train.lr"])


def test_missing_stsb_is_a_clear_skip(tmp_path, capsys):
    assert bq.main(["--stsb-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "skipping the quality benchmark" in err and "sts-train.csv" in err
    assert not (tmp_path / "out").exists()
