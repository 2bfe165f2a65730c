"""The one plain-text table helper (bge_pruning.tables.format_rows), the reports printed through it, and the
latency percentiles of the efficiency benchmark (numpy.percentile, linear interpolation)."""
from __future__ import annotations

import pytest

from bge_pruning.tables import format_rows


def test_format_rows_by_hand():
    table = format_rows(["name", "n", "note"], [["a", "1", "x"], ["longer", "22", ""]])
    assert table.splitlines() == [
        "name   |  n | note",
        "-------+----+-----",
        "a      |  1 |    x",
        "longer | 22 |",  # an empty last cell leaves no trailing spaces
    ]
    assert format_rows(["a", "b"], [["x", "yy"]], left=(0, 1)).splitlines() == ["a | b", "--+---", "x | yy"]
    assert format_rows(["a", "bb"], [], left=()).splitlines() == ["a | bb", "--+---"]  # header only
    with pytest.raises(ValueError, match="a row has 1 cells, the header 2"):
        format_rows(["a", "b"], [["x"]])


def test_evaluation_table():
    from bge_pruning.evaluation.report import format_table

    results = {"sts:a": {"spearman": 81.234567, "pearson": float("nan")}, "mteb:task": {"main": 0.5}}
    assert format_table(results).splitlines() == [
        "task      | metric   |   value",
        "----------+----------+--------",
        "sts:a     | spearman | 81.2346",
        "sts:a     | pearson  |     nan",
        "mteb:task | main     |  0.5000",
    ]
    base = {"sts:a": {"spearman": 83.0, "pearson": 80.0}}
    assert format_table(results, base).splitlines() == [
        "task      | metric   |    base |  pruned | retention %",
        "----------+----------+---------+---------+------------",
        "sts:a     | spearman | 83.0000 | 81.2346 |       97.87",  # 100 * 81.234567 / 83
        "sts:a     | pearson  | 80.0000 |     nan |           -",
        "mteb:task | main     |       - |  0.5000 |           -",
    ]


def test_efficiency_tables():
    from bge_pruning.benchmarks.efficiency import format_report

    def stats(p50, p95, seq_s, mem):
        return {"latency_s": {"p50": p50, "p95": p95}, "throughput_seq_per_s": seq_s,
                "peak_memory_increase_bytes": mem}

    def model(weights_bytes, **extra):
        return {"dir": "/m", "class": "BertModel", "dtype": "float32", "weights_file": "model.safetensors",
                "weights_file_bytes": weights_bytes, "params": {"encoder_layers": 2_000_000, "total": 5_000_000},
                "shape": {"n_layers": 2, "heads_per_layer": [4, 3], "intermediate_per_layer": [64, 20]}, **extra}

    row = {"device": "cpu", "batch_size": 32, "seq_len": 128, "speedup": 2.05, "flops_ratio": 1.9,
           "base": stats(0.0123, 0.02, 81.3, 5 * 2**20), "pruned": stats(0.006, 0.0071, 166.67, None),
           "pruned_int8": dict(stats(0.003, 0.0041, 333.3, 0), speedup_vs_base=4.1)}
    res = {"models": {"base": model(3 * 2**20), "pruned": model(2**20), "pruned_int8": model(0, file_bytes=2**19)},
           "params_ratio": {"encoder_layers": 0.5, "total": 0.8}, "flops": {"per_sequence": {}}, "results": [row],
           "memory_method": {"cpu": "RSS"}, "settings": {"inputs": "random", "repeats": 3, "warmup": 1, "threads": 2},
           "wall_time_s": 1.0}
    lines = format_report(res).splitlines()
    i = lines.index("device | batch | seq | base seq/s | pruned seq/s | speedup | FLOPs ratio | base p50/p95 ms | "
                    "pruned p50/p95 ms | base mem MiB | pruned mem MiB")
    assert lines[i + 1] == ("-------+-------+-----+------------+--------------+---------+-------------+"
                            "-----------------+-------------------+--------------+---------------")
    assert lines[i + 2] == ("   cpu |    32 | 128 |       81.3 |        166.7 |   2.05x |       1.90x |"
                            "     12.30/20.00 |         6.00/7.10 |          5.0 |              -")
    j = lines.index("batch | seq |            model | seq/s | speedup vs base |  p50/p95 ms | mem MiB | file MiB")
    assert lines[j + 1:j + 5] == [
        "------+-----+------------------+-------+-----------------+-------------+---------+---------",
        "   32 | 128 |     base (torch) |  81.3 |           1.00x | 12.30/20.00 |     5.0 |      3.0",
        "   32 | 128 |   pruned (torch) | 166.7 |           2.05x |   6.00/7.10 |       - |      1.0",
        "   32 | 128 | pruned ONNX int8 | 333.3 |           4.10x |   3.00/4.10 |     0.0 |      0.5",
    ]


def test_before_after_table():
    from bge_pruning.shapes import EncoderShape, count_params
    from bge_pruning.training.report import before_after

    base = EncoderShape.uniform(6, 12, 384, 1536, 30522, 512, 2)
    pruned = EncoderShape(384, 32, (9, 9, 9, 9), (1152, 1152, 1152, 1152), 30522, 512, 2)
    table, numbers = before_after(base, pruned, {"spearman": 83.31, "pearson": 84.22},
                                  {"spearman": 82.48, "pearson": 80.18}, "test.tsv")
    b, p = count_params(base), count_params(pruned)
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split("|")] == ["", "base", "pruned", "pruned/base"]
    assert set(lines[1]) == {"-", "+"} and len(lines) == 7
    cells = {c[0]: c[1:] for c in ([x.strip() for x in ln.split("|")] for ln in lines[2:])}
    assert cells["encoder-layer params"] == [f"{b.encoder_layers:,}", f"{p.encoder_layers:,}",
                                             f"{100 * p.encoder_layers / b.encoder_layers:.1f}%"]
    assert cells["shape (L/H/I)"] == ["6/12/1536", "4/9/1152", ""]
    assert cells["Spearman x100 (test.tsv)"] == ["83.31", "82.48", "99.0%"]  # 82.48 / 83.31 = 0.99004
    assert cells["Pearson x100 (test.tsv)"] == ["84.22", "80.18", "95.2%"]  # 80.18 / 84.22 = 0.95203
    assert len({len(ln) for ln in lines[:2]}) == 1  # header and rule line up
    assert numbers["pruned"]["params"] == p.to_dict()


def test_latency_percentiles_interpolate_linearly():
    """p50/p95 are the (n - 1) * q / 100-th order statistic, interpolated between neighbours (numpy's default)."""
    from bge_pruning.benchmarks.efficiency import _latency_stats

    s = _latency_stats([0.4, 0.1, 0.3, 0.2], batch_size=8)
    # sorted 0.1 0.2 0.3 0.4: p50 at position 1.5 -> 0.25; p95 at position 2.85 -> 0.3 + 0.85 * 0.1 = 0.385
    assert s["latency_s"]["p50"] == pytest.approx(0.25) and s["latency_s"]["p95"] == pytest.approx(0.385)
    assert s["throughput_seq_per_s"] == pytest.approx(8 / 0.25) and s["latency_s"]["mean"] == pytest.approx(0.25)
    assert isinstance(s["latency_s"]["p50"], float)  # a Python float (JSON), not a numpy scalar
    s = _latency_stats([float(x) for x in range(1, 21)], batch_size=1)  # position 19 * 0.95 = 18.05 -> 19.05
    assert s["latency_s"]["p95"] == pytest.approx(19.05) and s["latency_s"]["p50"] == pytest.approx(10.5)
    assert _latency_stats([0.7], batch_size=2)["latency_s"]["p95"] == 0.7
