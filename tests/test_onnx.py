"""ONNX export (``export.onnx`` / ``--onnx``) and its int8 dynamic quantization (``--quantize int8``).

Checked independently of what the export records: onnxruntime sessions built here from the written files against
the torch model reloaded from the same directory, on texts and batch shapes the export never traced; the ONNX
graph behind ``EmbeddingModel`` against ``SentenceTransformer`` and the BGE-M3 heads against torch; the int8 file's
size and its embeddings' agreement with float32. Bad values are one line and exit 2; a failed check leaves no
directory behind."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import TEXTS, TINY_TEXTS, _load_script, _tiny_zs, fake_extract_run, minilm, tiny  # noqa: F401
from test_reliability import error_line, run_main, snapshot, write_config

from bge_pruning.config import QUANTIZE_CHOICES as CONFIG_QUANTIZE
from bge_pruning.config import load_config
from bge_pruning.evaluation.encoder import EmbeddingModel
from bge_pruning.export import ExportError, export_pruned_model, hf_export, onnx_export
from bge_pruning.export.onnx_export import ONNX_ATOL, ONNX_FILE, QUANTIZE_CHOICES, QUANTIZED_FILES

ort = pytest.importorskip("onnxruntime", reason="the 'onnx' extra (onnx, onnxruntime) is not installed")
ROOT = Path(__file__).resolve().parents[1]
# Texts of other lengths than the export's probe (which is what the export itself checks against).
OTHER_TEXTS = ["Pruning keeps the heads that matter.", "ok",
               "A long sentence: the committee met on Tuesday to discuss the budget for next year's road repairs, "
               "and nobody agreed on anything at all."]
INT8 = QUANTIZED_FILES["int8"]


def _session_hidden(path: Path, enc: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(["last_hidden_state"], {n: enc[n].numpy() for n in names})[0]


def _torch_hidden(model_dir: Path, enc: dict, trust: bool) -> torch.Tensor:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=trust).eval()
    with torch.inference_mode():
        return model(**enc).last_hidden_state


def _real_max(a, b, mask) -> float:
    keep = torch.as_tensor(mask).bool()
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs()[keep].max())


def _mean_pooled(hidden, mask) -> torch.Tensor:
    hidden, m = torch.as_tensor(hidden), torch.as_tensor(mask).unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


@pytest.fixture(scope="module")
def minilm_onnx(minilm, tmp_path_factory):
    """all-MiniLM-L6-v2 pruned to per-layer widths (custom modeling file), with ONNX and int8."""
    backbone, tokenizer, zs = minilm
    return export_pruned_model(backbone, tmp_path_factory.mktemp("onnx") / "m", tokenizer, zs, pooling="mean",
                               onnx=True, quantize="int8", info={"base_model": "embedded:all-MiniLM-L6-v2"})


def test_choices_agree():
    """config.py and the script keep their own copy of the choices (a bad value is refused before torch loads)."""
    assert QUANTIZE_CHOICES == CONFIG_QUANTIZE == tuple(_load_script().QUANTIZE_CHOICES) == ("int8",)


def test_minilm_onnx_matches_torch_on_new_shapes(minilm_onnx, minilm):
    _, tokenizer, _ = minilm
    info = json.loads((minilm_onnx / "pruning_info.json").read_text())
    assert info["export"]["trust_remote_code"] is True  # the per-layer-width export: the graph needs no remote code
    onnx_info = info["onnx"]
    assert onnx_info["file"] == ONNX_FILE and onnx_info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert 0 < onnx_info["max_abs_diff"] <= ONNX_ATOL
    # Batch sizes 1 and 3, with and without padding, lengths the trace never saw.
    for texts in (OTHER_TEXTS, OTHER_TEXTS[2:], TEXTS[:2] + OTHER_TEXTS[:1]):
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        ref = _torch_hidden(minilm_onnx, enc, trust=True)
        got = _session_hidden(minilm_onnx / ONNX_FILE, enc)
        diff = _real_max(got, ref, enc["attention_mask"])
        print(f"\n[onnx] MiniLM {tuple(enc['input_ids'].shape)}: max |onnxruntime - torch| = {diff:.2e}")
        assert diff <= ONNX_ATOL


def test_minilm_int8_is_smaller_and_close(minilm_onnx, minilm):
    _, tokenizer, _ = minilm
    full, q8 = minilm_onnx / ONNX_FILE, minilm_onnx / INT8
    ratio = full.stat().st_size / q8.stat().st_size
    # int8 weights: a quarter of float32's bytes, plus the graph and the unquantized embeddings' scales
    assert ratio > 3.5
    enc = tokenizer(TEXTS + OTHER_TEXTS, padding=True, return_tensors="pt")
    ref = _mean_pooled(_torch_hidden(minilm_onnx, enc, trust=True), enc["attention_mask"])
    got = _mean_pooled(_session_hidden(q8, enc), enc["attention_mask"])
    cos = (ref * got).sum(-1)
    print(f"\n[onnx] int8 {q8.stat().st_size:,} B vs float32 {full.stat().st_size:,} B ({ratio:.2f}x); cosine to "
          f"float32 min {float(cos.min()):.4f} mean {float(cos.mean()):.4f}")
    assert float(cos.min()) > 0.9 and float(cos.min()) < 1 - 1e-6  # close, and really quantized
    q = json.loads((minilm_onnx / "pruning_info.json").read_text())["onnx"]["quantized"]["int8"]
    assert q["file"] == INT8 and q["size_bytes"] == q8.stat().st_size and 0.9 < q["min_cosine_mean_pooled"] < 1


def test_onnx_embedding_model_equals_sentence_transformer(minilm_onnx):
    from sentence_transformers import SentenceTransformer

    texts = TEXTS + OTHER_TEXTS
    st = SentenceTransformer(str(minilm_onnx), device="cpu", trust_remote_code=True).encode(texts)
    onnx = EmbeddingModel.from_dir(minilm_onnx, onnx_file=ONNX_FILE).encode(texts, show_progress=False)
    assert np.abs(onnx - st).max() < 1e-5
    q8 = EmbeddingModel.from_dir(minilm_onnx, onnx_file=INT8).encode(texts, show_progress=False)
    assert 0.9 < float((q8 * st).sum(-1).min()) < 1 - 1e-6


def test_tiny_xlmr_onnx_heads(tiny, tmp_path):
    """XLM-R: no token_type_ids input (one token type); the sparse and colbert heads on the graph's hidden states
    equal torch's."""
    backbone, tokenizer, sparse, colbert = tiny
    path = export_pruned_model(backbone, tmp_path / "m3", tokenizer, _tiny_zs(), sparse_head=sparse,
                               colbert_head=colbert, onnx=True)
    info = json.loads((path / "pruning_info.json").read_text())["onnx"]
    assert info["inputs"] == ["input_ids", "attention_mask"] and info["quantized"] == {}
    assert not (path / INT8).exists()
    texts = TINY_TEXTS + ["un chat"]
    by_torch = EmbeddingModel.from_dir(path).encode_all(texts, show_progress=False)
    by_onnx = EmbeddingModel.from_dir(path, onnx_file=ONNX_FILE).encode_all(texts, show_progress=False)
    assert np.abs(by_torch["dense"] - by_onnx["dense"]).max() < 1e-5
    for a, b in zip(by_torch["sparse"], by_onnx["sparse"]):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(by_torch["colbert"], by_onnx["colbert"]))


def test_tiny_mpnet_onnx(tiny_mpnet_path, tmp_path):
    """MPNet's shared relative-position bias traces into the graph (no token types either)."""
    from transformers import AutoTokenizer

    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    backbone = MaskedBGEM3Backbone.from_pretrained(str(tiny_mpnet_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_mpnet_path))
    path = export_pruned_model(backbone, tmp_path / "mpnet", tokenizer, None, pooling="mean", onnx=True)
    assert json.loads((path / "pruning_info.json").read_text())["onnx"]["inputs"] == ["input_ids", "attention_mask"]
    enc = tokenizer(["a b c d e f g h i j k l m n o p", "x"], padding=True, return_tensors="pt")
    enc.pop("token_type_ids", None)
    diff = _real_max(_session_hidden(path / ONNX_FILE, enc), _torch_hidden(path, enc, trust=False),
                     enc["attention_mask"])
    assert diff <= ONNX_ATOL


def test_failed_onnx_check_leaves_nothing(tiny, tmp_path, monkeypatch):
    backbone, tokenizer, _, _ = tiny
    monkeypatch.setattr(hf_export, "write_onnx", functools.partial(onnx_export.write_onnx, atol=1e-12))
    with pytest.raises(ExportError, match=r"ONNX check failed: max \|onnxruntime - torch\| = .* above the tolerance"):
        export_pruned_model(backbone, tmp_path / "out", tokenizer, _tiny_zs(), onnx=True)
    assert list(tmp_path.iterdir()) == []  # no export, no temporary directory
    with pytest.raises(ExportError, match="quantize='int8' quantizes the ONNX model: it needs onnx=True"):
        export_pruned_model(backbone, tmp_path / "out", tokenizer, _tiny_zs(), quantize="int8")
    with pytest.raises(ExportError, match="quantize must be one of int8"):
        export_pruned_model(backbone, tmp_path / "out", tokenizer, _tiny_zs(), onnx=True, quantize="int4")
    assert list(tmp_path.iterdir()) == []


def test_extract_script_onnx(tiny, tmp_path, monkeypatch, capsys):
    loaded, script, ckpt = fake_extract_run(tiny, monkeypatch, tmp_path)
    before = snapshot(tmp_path)
    for args, message in ((["--quantize", "int8"], "--quantize quantizes the ONNX model: add --onnx"),
                          (["--onnx", "--quantize", "int4"], "--quantize must be one of int8, got 'int4'")):
        assert script.main([str(ckpt), str(tmp_path / "out"), *args]) == 2
        assert capsys.readouterr().err == f"extract_pruned_model: error: {message}\n"
    assert loaded == [] and snapshot(tmp_path) == before  # nothing loaded, nothing written

    assert script.main([str(ckpt), str(tmp_path / "out"), "--onnx", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "onnx: onnx/model.onnx" in out and f"onnx int8: {INT8}" in out
    assert (tmp_path / "out" / ONNX_FILE).is_file() and (tmp_path / "out" / INT8).is_file()


def test_config_onnx_keys(tmp_path, tiny_xlmr_path, capsys, monkeypatch):
    ok = write_config(tmp_path / "ok", tiny_xlmr_path)
    cfg = load_config(ok)
    assert cfg.export.onnx is False and cfg.export.quantize is None
    cfg = load_config(ok, ["export.onnx=true", "export.quantize=int8"])
    assert cfg.export.onnx is True and cfg.export.quantize == "int8"

    import bge_pruning.training.run as run_module

    monkeypatch.setattr(run_module, "run", lambda cfg: pytest.fail("run() was reached"))
    bad = write_config(tmp_path / "bad", tiny_xlmr_path, lambda c: c["export"].update(onnx=True, quantize="int4"))
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if text.strip() == "quantize: int4")
    code, err = run_main(capsys, bad)
    assert code == 2
    assert error_line(err) == f"error: {bad}:{line}: export.quantize must be null or one of int8, got 'int4'"
    code, err = run_main(capsys, ok, "export.quantize=int8")
    assert code == 2
    assert error_line(err) == (f"error: {ok}: export.quantize=int8 quantizes the ONNX model: set export.onnx: true")
    code, err = run_main(capsys, ok, "export.onnx=yes please")
    assert code == 2 and error_line(err) == ("error: override export.onnx=yes please: export.onnx must be true or "
                                             "false, got 'yes please'")


@pytest.mark.slow
def test_evaluate_model_onnx_retention(minilm_onnx, tmp_path):
    """``evaluate_model.py EXPORT --onnx FILE --baseline EXPORT``: the float32 graph scores what torch scores;
    the int8 graph is scored the same way (its retention against the torch export is the report's retention)."""
    sts = tmp_path / "sts.tsv"
    rows = ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{s}" for a, b, s in (
        (TEXTS[0], "A dog is running through a park.", 4.8), (TEXTS[1], "Kids play soccer near a school.", 4.0),
        (TEXTS[2], "A man is cooking dinner.", 0.2), (TEXTS[3], "A woman is reading on a train.", 4.2),
        (OTHER_TEXTS[0], "The committee met on Tuesday.", 0.4), (OTHER_TEXTS[2], "Nobody agreed on the budget.", 3.0),
        ("A cat sleeps on the sofa.", "A cat is sleeping on a couch.", 4.9), ("The sun is hot.", "It rains.", 0.5))]
    sts.write_text("\n".join(rows) + "\n")
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"}
    results = {}
    for name in (ONNX_FILE, INT8):
        out = tmp_path / f"{Path(name).stem}.json"
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_model.py"), str(minilm_onnx),
                               "--onnx", name, "--baseline", str(minilm_onnx), "--tasks", f"sts:{sts}",
                               "--output", str(out), "--no-progress"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads(out.read_text())
        assert results[name]["settings"]["onnx_file"] == name and results[name]["settings"]["device"] == "cpu"
    full = results[ONNX_FILE]
    baseline = full["baseline_results"]["sts:sts.tsv"]["spearman"]
    assert full["results"]["sts:sts.tsv"]["spearman"] == pytest.approx(baseline, abs=1e-9)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_model.py"), str(minilm_onnx),
                           "--onnx", "onnx/missing.onnx", "--tasks", f"sts:{sts}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "onnx/missing.onnx" in proc.stderr
