"""Plots: the data fed to each figure (exact numbers) and that the images are real, non-trivial files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bge_pruning.plots import (
    KeptStructure,
    PlotError,
    is_size_series,
    kept_structure_from_pruning_info,
    kept_structure_from_zs,
    label_below,
    load_kept_structure,
    main,
    pareto_front,
    plot_efficiency,
    plot_masks,
    plot_pareto,
    plot_training,
    read_pareto_runs,
    read_run_log,
    training_panels,
)

NAN = math.nan


def _assert_image(path: Path, min_kb: int = 15, min_w: int = 500, min_h: int = 250) -> None:
    assert path.is_file(), path
    assert path.stat().st_size > min_kb * 1024, f"{path} is only {path.stat().st_size} bytes"
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= min_w and h >= min_h, im.size
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 10, "the image is (almost) a single colour"


def _info(**extra) -> dict:
    """A pruning_info.json: base 3 layers x 4 heads x 8 units; layer 1 dropped."""
    info = {
        "base_shape": {"n_layers": 3, "hidden_size": 16, "head_dim": 4, "heads_per_layer": [4, 4, 4],
                       "intermediate_per_layer": [8, 8, 8]},
        "achieved_shape": {"n_layers": 2, "hidden_size": 16, "head_dim": 4, "heads_per_layer": [2, 1],
                           "intermediate_per_layer": [5, 2]},
        "kept_layers": [0, 2],
        "kept_heads": [[0, 3], [1]],
    }
    info.update(extra)
    return info


# ====================================================================== masks
def test_kept_heads_matrix_from_pruning_info():
    s = kept_structure_from_pruning_info(_info())
    np.testing.assert_array_equal(s.head_kept, [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    assert s.layer_kept == [True, False, True]
    assert s.intermediate_kept == [5, 0, 2] and s.intermediate_per_layer == [8, 8, 8]
    assert s.heads_per_layer == [4, 4, 4]


def test_non_uniform_base_marks_missing_heads_nan():
    info = _info(base_shape={"heads_per_layer": [4, 2, 3], "intermediate_per_layer": [8, 6, 8]})
    info["kept_heads"] = [[0, 3], [2]]
    s = kept_structure_from_pruning_info(info)
    np.testing.assert_array_equal(s.head_kept, [[1, 0, 0, 1], [0, 0, NAN, NAN], [0, 0, 1, NAN]])


def test_kept_structure_from_zs_and_pt_file(tmp_path):
    zs = {"head_z": torch.tensor([[0.9, 0.0, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.7]]),
          "intermediate_z": torch.tensor([[1.0, 0.0, 0.3], [1.0, 1.0, 1.0], [0.0, 0.0, 0.2]]),
          "layer_z": torch.tensor([1.0, 0.0, 1.0])}
    torch.save(zs, tmp_path / "zs_s10.pt")
    s = load_kept_structure(tmp_path / "zs_s10.pt")
    np.testing.assert_array_equal(s.head_kept, [[1, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]])
    assert s.layer_kept == [True, False, True]
    assert s.intermediate_kept == [2, 0, 1] and s.intermediate_per_layer == [3, 3, 3]
    # Only some masks: no layer mask keeps every layer; no head mask leaves the heatmap data empty.
    s = kept_structure_from_zs({"intermediate_z": zs["intermediate_z"]})
    assert s.layer_kept == [True] * 3 and s.head_kept is None and s.intermediate_kept == [2, 3, 1]
    with pytest.raises(PlotError, match="disagree on the number of layers"):
        kept_structure_from_zs({"head_z": torch.ones(3, 4), "layer_z": torch.ones(2)})
    with pytest.raises(PlotError, match="expected a dict"):
        kept_structure_from_zs({"other": 1})


def test_real_export_and_its_masks_give_the_same_structure(tiny_xlmr_path, tmp_path):
    from transformers import AutoTokenizer

    from bge_pruning.export import export_pruned_model
    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    backbone = MaskedBGEM3Backbone.from_pretrained(str(tiny_xlmr_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_xlmr_path))
    head_z = torch.tensor([[0.9, 0, 0, 0.8], [1, 1, 1, 1], [0, 0.95, 0, 0], [0.85, 0.9, 0.8, 0]])
    int_z = torch.zeros(4, 64)
    for i, n in enumerate([64, 10, 17, 3]):
        int_z[i, torch.arange(0, 64, 64 // n)[:n] if n < 64 else torch.arange(64)] = 0.9
    zs = {"head_z": head_z, "intermediate_z": int_z, "layer_z": torch.tensor([1.0, 0.0, 1.0, 1.0])}
    out = export_pruned_model(backbone, tmp_path / "m", tokenizer, zs, pooling="mean")

    from_export = load_kept_structure(out)
    expected = [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]]
    np.testing.assert_array_equal(from_export.head_kept, expected)
    assert from_export.layer_kept == [True, False, True, True]
    assert from_export.intermediate_kept == [64, 0, 17, 3]
    from_zs = kept_structure_from_zs(zs)
    np.testing.assert_array_equal(from_zs.head_kept, from_export.head_kept)
    assert from_zs.intermediate_kept == from_export.intermediate_kept
    assert load_kept_structure(out / "pruning_info.json").intermediate_kept == [64, 0, 17, 3]

    _assert_image(plot_masks(out, tmp_path / "kept.png"))


def test_plot_masks_images_and_errors(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "pruning_info.json").write_text(json.dumps(_info()))
    _assert_image(plot_masks(tmp_path / "model", tmp_path / "out" / "kept.png"))
    structure = kept_structure_from_zs({"head_z": torch.ones(24, 16), "layer_z": torch.ones(24)})
    assert isinstance(structure, KeptStructure)
    _assert_image(plot_masks(structure, tmp_path / "heads_only.png"))  # no intermediate mask: a placeholder panel

    with pytest.raises(PlotError, match=r"no pruning_info\.json"):
        load_kept_structure(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"base_shape": {}}))
    with pytest.raises(PlotError, match=rf"{bad}: missing kept_layers, kept_heads"):
        load_kept_structure(bad)
    bad.write_text(json.dumps(_info(kept_heads=[[0, 7], [1]])))
    with pytest.raises(PlotError, match="indices outside 0..3"):
        load_kept_structure(bad)
    with pytest.raises(PlotError, match="expected a file ending in"):
        plot_masks(tmp_path / "model", tmp_path / "kept.txt")


# ====================================================================== training curves
def _write_log(path: Path) -> None:
    rows = []
    for step in range(0, 41):
        rows.append({"step": step, "l0/expected_sparsity": 0.01 * step, "l0/target_sparsity": min(0.5, 0.02 * step),
                     "l0/expected_head_sparsity": 0.008 * step, "l0/target_head_sparsity": 0.4,
                     "l0/expected_layer_sparsity": 0.005 * step, "l0/target_layer_sparsity": 0.3,
                     "l0/lambda_1_head": -0.1 * step, "l0/lambda_2_head": 0.2 * step,
                     "l0/lambda_1_layer": 0.05 * step, "l0/lambda_2_layer": 0.01 * step,
                     "l0/expected_num_params": 1000 - 10 * step, "l0/target_num_params": 600})
        rows.append({"step": step, "loss/train/total": 3.0 - 0.05 * step + 0.1 * (step % 3), "time/batch": step})
        rows.append({"step": step})
        if step and step % 10 == 0:
            rows.append({"step": step, "metrics/sts/STSSpearman": 0.8 + 0.001 * step})
    rows.append({"step": None, "loss/train/total": 99.0})          # no step: skipped
    rows.append({"step": 20, "metrics/sts/STSSpearman": 0.9})      # appended again (a restart): the later value wins
    rows.append({"step": 21, "loss/train/total": float("nan")})    # not finite: skipped, the step's value stays
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")


def test_read_run_log_merges_steps(tmp_path):
    log = tmp_path / "train_log.jsonl"
    _write_log(log)
    series = read_run_log(log)
    steps, values = series["metrics/sts/STSSpearman"]
    np.testing.assert_array_equal(steps, [10, 20, 30, 40])
    np.testing.assert_allclose(values, [0.81, 0.9, 0.83, 0.84])
    steps, values = series["loss/train/total"]
    assert len(steps) == 41 and list(steps) == list(range(41))
    assert values[21] == pytest.approx(3.0 - 0.05 * 21 + 0.1 * 0)
    assert 99.0 not in values
    panels = training_panels(series)
    assert panels["sparsity"] == ["l0/expected_sparsity", "l0/target_sparsity"]
    assert panels["module_sparsity"] == ["l0/expected_head_sparsity", "l0/target_head_sparsity",
                                         "l0/expected_layer_sparsity", "l0/target_layer_sparsity"]
    assert panels["lambdas"] == ["l0/lambda_1_head", "l0/lambda_1_layer", "l0/lambda_2_head", "l0/lambda_2_layer"]
    assert panels["loss"] == ["loss/train/total"]
    assert panels["spearman"] == ["metrics/sts/STSSpearman"]
    assert panels["params"] == ["l0/expected_num_params", "l0/target_num_params"]


def test_plot_training_image_and_errors(tmp_path):
    log = tmp_path / "train_log.jsonl"
    _write_log(log)
    _assert_image(plot_training(log, tmp_path / "curves.png"), min_w=1000, min_h=600)
    only_loss = tmp_path / "loss.jsonl"  # a finetune run without L0 metrics still plots (other panels empty)
    only_loss.write_text("\n".join(json.dumps({"step": s, "loss/train/total": 1.0 / (s + 1)}) for s in range(5)))
    _assert_image(plot_training(only_loss, tmp_path / "loss.png"))

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 0, "loss/train/total": 1.0}\n{"step": 1, "loss\n{"step": 2, "loss/train/total": 0.5}\n')
    with pytest.raises(PlotError, match=rf"{broken}:2: not a JSON line"):
        read_run_log(broken)
    cut = tmp_path / "cut.jsonl"  # a killed run's last write: skipped with a warning
    cut.write_text('{"step": 0, "loss/train/total": 1.0}\n{"step": 1, "loss/train/total": 0.5}\n{"step": 2, "lo')
    with pytest.warns(UserWarning, match=rf"{cut}:3: skipping the incomplete last line"):
        steps, values = read_run_log(cut)["loss/train/total"]
    assert list(steps) == [0, 1] and list(values) == [1.0, 0.5]
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text('{"step": 0, "time/batch": 0}\n')
    with pytest.raises(PlotError, match=r"no l0/\*, loss/train/total .*found: time/batch"):
        plot_training(nothing, tmp_path / "x.png")
    with pytest.raises(PlotError, match="no such file"):
        read_run_log(tmp_path / "missing.jsonl")


# ====================================================================== pareto
RUNS = {"runs": [
    {"name": "base", "method": "base", "encoder_params": 100, "total_params": 300, "spearman": 0.85},
    {"name": "l0-60", "method": "l0", "encoder_params": 40, "total_params": 240, "spearman": 0.83},
    {"name": "l0-30", "method": "l0", "encoder_params": 70, "total_params": 270, "spearman": 0.84},
    {"name": "drop-layers", "method": "layer-drop", "encoder_params": 50, "total_params": 250, "spearman": 0.78},
    {"name": "tie", "method": "layer-drop", "encoder_params": 40, "total_params": 240, "spearman": 0.83},
]}


def test_pareto_lines_and_labels():
    runs, _ = read_pareto_runs(RUNS)
    by = {r.name: r for r in runs}
    assert is_size_series([by["l0-60"], by["l0-30"]])
    assert not is_size_series([by["drop-layers"]])
    same_size = read_pareto_runs({"runs": [dict(RUNS["runs"][3], name=f"v{i}", spearman=0.7 + i / 100)
                                           for i in range(3)]})[0]
    assert not is_size_series(same_size)  # variants of one size are not a curve
    # 'tie' sits exactly on 'l0-60' (same size, same score): one of the two labels moves below its point.
    assert label_below(by["tie"], runs) and label_below(by["l0-60"], runs)
    assert not label_below(by["base"], runs) and not label_below(by["drop-layers"], runs)


def test_read_pareto_runs_and_front(tmp_path):
    runs, key = read_pareto_runs(RUNS)
    assert key == "encoder_params" and [r.params for r in runs] == [100, 40, 70, 50, 40]
    front = pareto_front(runs)
    assert [r.name for r in front] == ["l0-60", "tie", "l0-30", "base"]  # drop-layers is beaten by l0-60
    mixed = {"runs": [dict(RUNS["runs"][0]), {"name": "x", "total_params": 200, "spearman": 0.8}]}
    runs, key = read_pareto_runs(mixed)
    assert key == "total_params" and runs[1].method == "other"
    with pytest.raises(PlotError, match=r"--x encoder: runs \['x'\] have no 'encoder_params'"):
        read_pareto_runs(mixed, x="encoder")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"runs": [{"name": "a", "spearman": 0.5}]}))
    with pytest.raises(PlotError, match=rf"{path}: no parameter count .*runs with neither: \['a'\]"):
        read_pareto_runs(path)
    path.write_text(json.dumps({"runs": [{"name": "a", "encoder_params": 5, "spearman": "high"}]}))
    with pytest.raises(PlotError, match=r"runs\[0\] \(a\) needs a finite number 'spearman'"):
        read_pareto_runs(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(PlotError, match='expected {"runs"'):
        read_pareto_runs(path)


def test_plot_pareto_image(tmp_path):
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(dict(RUNS, spearman_label="STS-B test Spearman")))
    _assert_image(plot_pareto(path, tmp_path / "pareto.png"))
    _assert_image(plot_pareto(path, tmp_path / "pareto_total.png", x="total"))


# ====================================================================== efficiency plot and the CLI
def _efficiency_results() -> dict:
    rows = []
    for dev in ("cpu", "cuda"):
        for t, ratio in ((32, 2.0), (128, 1.9)):
            for b in (1, 8, 32):
                base = 50.0 * b ** 0.5 * 32 / t
                rows.append({"device": dev, "batch_size": b, "seq_len": t, "flops_ratio": ratio,
                             "speedup": 1.5 + 0.01 * b,
                             "base": {"throughput_seq_per_s": base}, "pruned": {"throughput_seq_per_s": base * 1.6}})
    return {"models": {"base": {"dir": "/x/base/model"}, "pruned": {"dir": "/x/run/model"}}, "results": rows}


def test_plot_efficiency_image_and_cli(tmp_path, capsys):
    results = tmp_path / "eff.json"
    results.write_text(json.dumps(_efficiency_results()))
    _assert_image(plot_efficiency(results, tmp_path / "eff.png"), min_w=1000, min_h=500)
    assert main(["efficiency", str(results), "--out", str(tmp_path / "eff2.png")]) == 0
    assert "wrote" in capsys.readouterr().out
    results.write_text(json.dumps({"results": [{"device": "cpu"}]}))
    assert main(["efficiency", str(results), "--out", str(tmp_path / "eff3.png")]) == 2
    assert f"error: {results}: results[0] lacks" in capsys.readouterr().err
    assert main(["masks", str(tmp_path / "none"), "--out", str(tmp_path / "k.png")]) == 2
    assert f"error: {tmp_path / 'none'}: no such file or directory" in capsys.readouterr().err
    pareto = tmp_path / "q.json"
    pareto.write_text(json.dumps(RUNS))
    assert main(["pareto", str(pareto), "--out", str(tmp_path / "p.png"), "--x", "total"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 15 * 1024


def test_cli_default_outputs_go_beside_the_input(tmp_path, capsys, monkeypatch):
    """Without --out nothing lands in the working directory: each plot is written beside what it plots."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "pruning_info.json").write_text(json.dumps(_info()))
    _write_log(run / "train_log.jsonl")
    assert main(["masks", str(run / "model")]) == 0
    assert main(["training", str(run / "train_log.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {run / 'model_kept.png'}" in printed and f"wrote {run / 'curves.png'}" in printed
    _assert_image(run / "model_kept.png")
    _assert_image(run / "curves.png", min_w=1000, min_h=600)
    assert list(cwd.iterdir()) == []


def _report(model_dir, base_dir, spearman, base_spearman, params, base_params, tasks=("sts:dev.csv",)):
    return {"model_dir": model_dir, "baseline_dir": base_dir,
            "results": {t: {"spearman": spearman, "pearson": spearman - 1} for t in tasks},
            "baseline_results": {t: {"spearman": base_spearman, "pearson": base_spearman - 1} for t in tasks},
            "params": {"model": {"total": params + 100, "encoder_layers": params},
                       "baseline": {"total": base_params + 100, "encoder_layers": base_params}}}


def test_pareto_from_evaluate_model_reports(tmp_path, capsys):
    from bge_pruning.plots import pareto_from_evaluate_reports

    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_report("/x/run60/model", "embedded:all-MiniLM-L6-v2", 85.0, 86.7, 6_000_000, 10_000_000)))
    b.write_text(json.dumps(_report("/x/run50/model", "embedded:all-MiniLM-L6-v2", 84.0, 86.7, 5_000_000, 10_000_000)))
    data = pareto_from_evaluate_reports([a, b])
    runs = {r["name"]: r for r in data["runs"]}
    assert set(runs) == {"embedded:all-MiniLM-L6-v2", "run60/model", "run50/model"}  # the shared base once
    assert runs["run50/model"]["score"] == 84.0 and runs["run50/model"]["encoder_params"] == 5_000_000
    assert runs["embedded:all-MiniLM-L6-v2"]["method"] == "base" and runs["embedded:all-MiniLM-L6-v2"]["score"] == 86.7
    assert data["score_label"] == "sts:dev.csv spearman (x100)"
    assert main(["pareto", str(a), str(b)]) == 0  # default output beside the first report
    assert f"wrote {tmp_path / 'a.png'}" in capsys.readouterr().out
    _assert_image(tmp_path / "a.png")
    assert main(["pareto", str(a), "--metric", "pearson", "--out", str(tmp_path / "p.png")]) == 0

    two = tmp_path / "two.json"
    two.write_text(json.dumps(_report("/x/m", None, 80.0, 0, 1, 1, tasks=("sts:a", "sts:b"))))
    with pytest.raises(PlotError, match="several tasks .*choose one with --task"):
        pareto_from_evaluate_reports([two])
    assert pareto_from_evaluate_reports([two], task="sts:b")["runs"][0]["score"] == 80.0
    old = _report("/x/m", None, 80.0, 0, 1, 1)
    old.pop("params")
    with pytest.raises(PlotError, match="no parameter counts for the model"):
        pareto_from_evaluate_reports([old])
    with pytest.raises(PlotError, match="no 'ndcg@10' for task 'sts:dev.csv'"):
        pareto_from_evaluate_reports([a], metric="ndcg@10")
