"""Analytic FLOPs and the efficiency benchmark (run on tiny exports; timings are not asserted)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bge_pruning.benchmarks import flops_ratio, forward_flops, layer_flops
from bge_pruning.benchmarks.efficiency import BenchmarkError, run_benchmark
from bge_pruning.cli.benchmark_efficiency import main
from bge_pruning.shapes import EncoderShape

TINY_HEADS = [4, 2, 3, 1]
TINY_INTER = [64, 30, 20, 10]
TINY_LAYER_Z = [1.0, 0.0, 1.0, 1.0]  # layer 1 dropped


def _shape(heads, inter, d=4, dh=2) -> EncoderShape:
    return EncoderShape(hidden_size=d, head_dim=dh, heads_per_layer=tuple(heads), intermediate_per_layer=tuple(inter),
                        vocab_size=10, max_position_embeddings=16, type_vocab_size=1)


# ====================================================================== FLOPs
def test_forward_flops_matches_hand_computation():
    # d=4, dh=2, T=5. Layer 0 (H=2, I=3): QKV 2*5*4*(3*2*2)=480, out 2*5*(2*2)*4=160,
    # scores+context 2*2*25*2*2=400, FFN 2*2*5*4*3=240 -> 1280.
    # Layer 1 (H=1, I=0): QKV 2*5*4*6=240, out 2*5*2*4=80, scores+context 2*2*25*1*2=200, FFN 0 -> 520.
    f = forward_flops(_shape([2, 1], [3, 0]), 5)
    assert (f.qkv, f.attention_output, f.attention_scores, f.ffn) == (720, 240, 600, 240)
    assert f.per_layer == (1280, 520)
    assert f.total == 1800
    assert f.attention == 1560
    assert f.to_dict()["total"] == 1800 and f.to_dict()["seq_len"] == 5
    assert layer_flops(4, 2, 2, 3, 5) == {"qkv": 480, "attention_output": 160, "attention_scores": 400, "ffn": 240}


def test_minilm_flops_and_halved_shape_ratio():
    base = EncoderShape.uniform(6, 12, 384, 1536, 30522, 512, 2)
    pruned = base.with_target(4, 9, 1152)
    # Per layer at T=32: 2*32*384*1152 + 2*32*384*384 + 4*32^2*384 + 4*32*384*1536 = 114,819,072.
    assert forward_flops(base, 32).total == 6 * 114_819_072
    for t in (1, 32, 128, 512):  # every term halves: the ratio is exactly 2 at any length
        assert flops_ratio(base, pruned, t) == pytest.approx(2.0, rel=1e-12)
    # Dropping only FFN units: the attention share grows with T, so the ratio shrinks with T.
    ffn_pruned = base.with_target(6, 12, 384)
    assert flops_ratio(base, ffn_pruned, 32) > flops_ratio(base, ffn_pruned, 512) > 1.0


def test_flops_edge_cases():
    empty = _shape([], [])
    assert forward_flops(empty, 3).total == 0
    assert flops_ratio(_shape([1], [1]), empty, 3) is None
    with pytest.raises(ValueError, match="seq_len"):
        forward_flops(_shape([1], [1]), 0)
    with pytest.raises(TypeError, match="EncoderShape"):
        forward_flops({"hidden_size": 4}, 3)


# ====================================================================== efficiency benchmark
def _masks(heads, inter, H, I, layer_z, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    L = len(heads)
    head_z, int_z = torch.zeros(L, H), torch.zeros(L, I)
    for i in range(L):
        head_z[i, torch.randperm(H, generator=g)[:heads[i]]] = 0.9
        int_z[i, torch.randperm(I, generator=g)[:inter[i]]] = 0.9
    return {"head_z": head_z, "intermediate_z": int_z, "layer_z": torch.tensor(layer_z)}


@pytest.fixture(scope="module")
def tiny_pair(tiny_xlmr_path, tmp_path_factory) -> tuple[Path, Path]:
    """(base dir: the stock tiny XLM-R, pruned dir: a custom-class export with a dropped layer)."""
    from transformers import AutoTokenizer

    from bge_pruning.export import export_pruned_model
    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    backbone = MaskedBGEM3Backbone.from_pretrained(str(tiny_xlmr_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_xlmr_path))
    out = tmp_path_factory.mktemp("bench") / "pruned"
    export_pruned_model(backbone, out, tokenizer, _masks(TINY_HEADS, TINY_INTER, 4, 64, TINY_LAYER_Z), pooling="mean")
    return tiny_xlmr_path, out


def test_benchmark_cli_writes_json_and_plot(tiny_pair, tmp_path, capsys):
    base_dir, pruned_dir = tiny_pair
    out_json, out_png = tmp_path / "res" / "eff.json", tmp_path / "res" / "eff.png"
    rc = main([str(base_dir), str(pruned_dir), "--batch-sizes", "1", "2", "--seq-lens", "8", "16", "--repeats", "3",
               "--warmup", "1", "--device", "cpu", "--threads", "1", "--output", str(out_json), "--plot", str(out_png)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads(out_json.read_text())

    info = json.loads((pruned_dir / "pruning_info.json").read_text())
    # Shapes as the benchmark read them from the configs, and the exact counts of those shapes.
    b, p = res["models"]["base"], res["models"]["pruned"]
    assert b["shape"]["heads_per_layer"] == [4, 4, 4, 4] and b["shape"]["intermediate_per_layer"] == [64] * 4
    assert p["shape"]["heads_per_layer"] == [4, 3, 1] and p["shape"]["intermediate_per_layer"] == [64, 20, 10]
    assert p["params"] == info["params"]["after"]
    assert b["params"] == info["params"]["before"]
    assert p["class"] == "PrunedXLMRobertaModel" and b["class"] == "XLMRobertaModel"
    assert b["weights_file"] == p["weights_file"] == "model.safetensors"
    assert b["weights_file_bytes"] == (base_dir / "model.safetensors").stat().st_size
    assert p["weights_file_bytes"] == (pruned_dir / "model.safetensors").stat().st_size
    assert res["params_ratio"]["encoder_layers"] == pytest.approx(
        info["params"]["after"]["encoder_layers"] / info["params"]["before"]["encoder_layers"])

    # FLOPs: the analytic numbers of the two shapes (vocabulary sizes do not enter), and the per-result ratio.
    base_shape = EncoderShape.uniform(4, 4, 32, 64, 1, 1, 1)
    pruned_shape = EncoderShape(32, 8, (4, 3, 1), (64, 20, 10), 1, 1, 1)
    for t in (8, 16):
        f = res["flops"]["per_sequence"][str(t)]
        assert f["base"]["total"] == forward_flops(base_shape, t).total
        assert f["pruned"]["total"] == forward_flops(pruned_shape, t).total
        assert f["ratio"] == pytest.approx(flops_ratio(base_shape, pruned_shape, t), rel=1e-12)
    # Hand check at T=8 (d=32, dh=8): per layer 2*8*32*(3*8H) + 2*8*(8H)*32 + 2*2*64*8H + 2*2*8*32*I
    # = 12288H + 4096H + 2048H + 1024I = 18432H + 1024I.
    assert res["flops"]["per_sequence"]["8"]["base"]["total"] == 4 * (18432 * 4 + 1024 * 64)
    assert res["flops"]["per_sequence"]["8"]["pruned"]["total"] == 18432 * 8 + 1024 * 94

    rows = res["results"]
    assert [(r["device"], r["seq_len"], r["batch_size"]) for r in rows] == [
        ("cpu", 8, 1), ("cpu", 8, 2), ("cpu", 16, 1), ("cpu", 16, 2)]
    for r in rows:
        assert r["flops_ratio"] == res["flops"]["per_sequence"][str(r["seq_len"])]["ratio"]
        for role in ("base", "pruned"):
            m = r[role]
            assert len(m["latencies_s"]) == 3 and all(x > 0 for x in m["latencies_s"])
            lat = m["latency_s"]
            assert lat["min"] <= lat["p50"] <= lat["p95"] <= lat["max"]
            assert m["throughput_seq_per_s"] == pytest.approx(r["batch_size"] / lat["p50"])
            assert isinstance(m["peak_memory_increase_bytes"], int) and m["peak_memory_increase_bytes"] >= 0
        assert r["speedup"] == pytest.approx(r["base"]["latency_s"]["p50"] / r["pruned"]["latency_s"]["p50"])
    assert res["settings"]["devices"] == ["cpu"] and res["settings"]["repeats"] == 3
    assert res["settings"]["threads"] == 1
    assert "RSS" in res["memory_method"]["cpu"]
    assert res["wall_time_s"] > 0

    # The printed table has one row per configuration with the speedup next to the FLOPs ratio.
    table = [line for line in printed.out.splitlines() if line.strip().startswith("cpu |")]
    assert len(table) == 4
    ratio8 = f"{res['flops']['per_sequence']['8']['ratio']:.2f}x"
    assert ratio8 in table[0]
    assert out_png.stat().st_size > 20_000


def test_benchmark_argument_errors(tiny_pair, tmp_path, capsys):
    base_dir, pruned_dir = tiny_pair
    missing = tmp_path / "nope"
    assert main([str(missing), str(pruned_dir), "--device", "cpu"]) == 2
    assert f"BASE_DIR {missing}: no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(base_dir), str(tmp_path / "empty"), "--device", "cpu"]) == 2
    assert f"PRUNED_DIR {tmp_path / 'empty'}: no config.json" in capsys.readouterr().err
    assert main(["embedded:no-such-model", str(pruned_dir), "--device", "cpu"]) == 2
    assert "BASE_DIR embedded:no-such-model: model.name_or_path: unknown embedded model" in capsys.readouterr().err
    with pytest.raises(BenchmarkError, match=r"--seq-lens \[500\] exceed .*128 tokens"):
        run_benchmark(base_dir, pruned_dir, seq_lens=[8, 500], batch_sizes=[1], device="cpu", repeats=1)
    with pytest.raises(BenchmarkError, match="--batch-sizes must be positive"):
        run_benchmark(base_dir, pruned_dir, seq_lens=[8], batch_sizes=[0], device="cpu")
    with pytest.raises(BenchmarkError, match="--repeats"):
        run_benchmark(base_dir, pruned_dir, seq_lens=[8], batch_sizes=[1], repeats=0, device="cpu")
    assert main([str(base_dir), str(pruned_dir), "--output", str(tmp_path / "r.txt")]) == 2
    assert "--output" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(BenchmarkError, match="--device cuda: CUDA is not available"):
            run_benchmark(base_dir, pruned_dir, seq_lens=[8], batch_sizes=[1], device="cuda")


def test_embedded_base_model_loads():
    from bge_pruning.benchmarks.efficiency import load_model
    from bge_pruning.shapes import count_params

    loaded = load_model("embedded:all-MiniLM-L6-v2", "base")
    assert (loaded.model_dir / "config.json").is_file()
    assert loaded.shape.n_layers == 6 and count_params(loaded.shape).total == 22_713_216


# ====================================================================== ONNX rows and real texts
@pytest.fixture(scope="module")
def tiny_onnx_pair(tiny_xlmr_path, tmp_path_factory) -> tuple[Path, Path]:
    """(the stock tiny XLM-R, a custom-class export of it with onnx/model.onnx and the int8 graph)."""
    from transformers import AutoTokenizer

    from bge_pruning.export import export_pruned_model
    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
    backbone = MaskedBGEM3Backbone.from_pretrained(str(tiny_xlmr_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_xlmr_path))
    out = tmp_path_factory.mktemp("bench_onnx") / "pruned"
    export_pruned_model(backbone, out, tokenizer, _masks(TINY_HEADS, TINY_INTER, 4, 64, TINY_LAYER_Z), pooling="mean",
                        onnx=True, quantize="int8")
    return tiny_xlmr_path, out


def test_benchmark_onnx_rows_on_real_texts(tiny_onnx_pair, tmp_path, capsys):
    from transformers import AutoTokenizer

    from bge_pruning.benchmarks.efficiency import ONNX_ROLES, format_report, text_batches

    base_dir, pruned_dir = tiny_onnx_pair
    texts = tmp_path / "texts.txt"
    lines = ["the cat sits on the red car", "a dog", "people walk near the river and the big house with music",
             "der hund und die katze", "music"]
    texts.write_text("\n".join(lines) + "\n")
    res = run_benchmark(base_dir, pruned_dir, batch_sizes=[1, 3], seq_lens=[6, 16], repeats=2, warmup=1,
                        device="cpu", threads=1, onnx=True, texts=str(texts))
    assert res["settings"]["onnx"] == ["pruned_int8", "pruned_onnx"]
    assert "5 real texts" in res["settings"]["inputs"]
    for role, name in ONNX_ROLES.items():
        assert res["models"][role]["file_bytes"] == (pruned_dir / name).stat().st_size
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    for r in res["results"]:
        for role in ("base", "pruned", *ONNX_ROLES):
            assert len(r[role]["latencies_s"]) == 2 and r[role]["latency_s"]["p50"] > 0
        for role in ONNX_ROLES:
            expected = r["base"]["latency_s"]["p50"] / r[role]["latency_s"]["p50"]
            assert r[role]["speedup_vs_base"] == pytest.approx(expected)
        # The real tokens per sequence, recomputed from the same draw: truncation at seq_len bounds them.
        batches, mean = text_batches(lines, {"base": tok}, r["batch_size"], r["seq_len"], 1000 * r["seq_len"]
                                     + r["batch_size"], "cpu")
        assert r["real_tokens_per_sequence"] == pytest.approx(mean) and 1 < mean <= r["seq_len"]
        assert batches["base"]["input_ids"].shape[0] == r["batch_size"]
    assert max(r["real_tokens_per_sequence"] for r in res["results"] if r["seq_len"] == 6) == 6  # truncated
    report = format_report(res)
    assert "pruned ONNX fp32" in report and "pruned ONNX int8" in report and "inputs: 5 real texts" in report


def test_benchmark_onnx_errors(tiny_pair, tmp_path, capsys):
    base_dir, pruned_dir = tiny_pair  # an export without ONNX files
    assert main([str(base_dir), str(pruned_dir), "--onnx", "--device", "cpu", "--seq-lens", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no onnx/model.onnx; export it with extract_pruned_model.py --onnx" in err
    assert main([str(base_dir), str(pruned_dir), "--texts", str(tmp_path / "nope.txt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--texts" in err and "nope.txt" in err
