"""Half-precision exports (``export.dtype`` / ``--dtype``): the saved files really are float16 / bfloat16, the weights
are the float32 export's rounded once, and AutoModel, SentenceTransformer and FlagEmbedding's BGEM3FlagModel load
them within the dtype's tolerance of the float32 masked model. Bad values are one line and exit 2."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from test_export import (
    TEXTS,
    TINY_TEXTS,
    _masked_hidden,
    _real_diff,
    _siblings,
    _tiny_zs,
    fake_extract_run,
    minilm,  # noqa: F401 - a fixture
    tiny,  # noqa: F401 - a fixture
)
from test_reliability import error_line, run_main, snapshot, write_config

from bge_pruning.config import EXPORT_DTYPES as CONFIG_DTYPES
from bge_pruning.config import load_config
from bge_pruning.export import ExportError, export_pruned_model
from bge_pruning.export import plan as export_plan
from bge_pruning.export.hf_export import DEFAULT_ATOL, EXPORT_DTYPES
from bge_pruning.models.heads import COLBERT_FILE, SPARSE_FILE, dense_embedding, lexical_weights, special_token_ids

HALF = ["float16", "bfloat16"]
# Pooled, normalised embeddings (dense, colbert) and lexical weights are ~20x smaller than the hidden states
# (MiniLM: max |embedding element| 0.35 vs max |h| 6.7), and so is their rounding error: they are held to a tenth
# of the hidden-state tolerance (measured: <= 3.5e-3 in bfloat16, <= 4.9e-4 in float16).
EMBEDDING_SHARE = 0.1
SAFETENSORS_NAME = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header (tensor name -> dtype, shape, offsets) and its length in bytes."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), n


def _mean_pooled(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


# ====================================================================== MiniLM (real weights)
@pytest.fixture(scope="module")
def minilm_by_dtype(minilm, tmp_path_factory):
    backbone, tokenizer, zs = minilm
    root = tmp_path_factory.mktemp("minilm_dtype")
    return {dtype: export_pruned_model(backbone, root / dtype, tokenizer, zs, pooling="mean", dtype=dtype,
                                       info={"base_model": "embedded:all-MiniLM-L6-v2"})
            for dtype in ["float32", *HALF]}


def test_choices_agree():
    """config.py keeps its own copy of the names (a bad value is refused before torch loads): it must not drift."""
    assert tuple(EXPORT_DTYPES) == CONFIG_DTYPES == ("float32", "float16", "bfloat16")
    assert DEFAULT_ATOL["float32"] == 1e-4  # the float32 default is today's check


@pytest.mark.parametrize("dtype", HALF)
def test_minilm_half_files_are_half_the_size(minilm_by_dtype, dtype):
    full, half = minilm_by_dtype["float32"] / "model.safetensors", minilm_by_dtype[dtype] / "model.safetensors"
    header32, n32 = _safetensors_header(full)
    header16, n16 = _safetensors_header(half)
    header32.pop("__metadata__", None), header16.pop("__metadata__", None)
    assert set(header16) == set(header32) and len(header16) > 50
    assert {v["dtype"] for v in header32.values()} == {"F32"}
    assert {v["dtype"] for v in header16.values()} == {SAFETENSORS_NAME[dtype]}  # every tensor, none left in F32
    assert all(header16[k]["shape"] == header32[k]["shape"] for k in header16)
    data32, data16 = full.stat().st_size - 8 - n32, half.stat().st_size - 8 - n16
    assert data16 * 2 == data32  # exactly half the tensor bytes; the files differ only by their JSON headers
    print(f"\n[dtype] MiniLM model.safetensors float32 {full.stat().st_size:,} B, {dtype} {half.stat().st_size:,} B")

    # The saved weights are the float32 export's rounded once (no double rounding, nothing else changed).
    from safetensors.torch import load_file

    w32, w16 = load_file(str(full)), load_file(str(half))
    to = EXPORT_DTYPES[dtype]
    assert all(w16[k].dtype == to and torch.equal(w16[k], w32[k].to(to)) for k in w32)


@pytest.mark.parametrize("dtype", HALF)
def test_minilm_half_reloads_within_tolerance(minilm, minilm_by_dtype, dtype):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    backbone, tokenizer, zs = minilm
    path = minilm_by_dtype[dtype]
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == dtype  # as transformers 5 writes it (torch_dtype is its old name)
    assert json.loads((minilm_by_dtype["float32"] / "config.json").read_text())["dtype"] == "float32"
    pinfo = json.loads((path / "pruning_info.json").read_text())
    ver, atol = pinfo["verification"], DEFAULT_ATOL[dtype]
    assert pinfo["export"]["dtype"] == dtype and ver["dtype"] == dtype and ver["atol"] == atol
    assert 0 < ver["max_abs_diff"] < atol  # not 0: the check really ran in the half dtype
    assert ver["pruned_forward_max_abs_diff"] < DEFAULT_ATOL["float32"]  # the float32 part is as tight as before
    assert json.loads((minilm_by_dtype["float32"] / "pruning_info.json").read_text())["verification"]["dtype"] \
        == "float32"

    # AutoModel with transformers' default dtype="auto" loads the half dtype and computes in it.
    model = AutoModel.from_pretrained(str(path), trust_remote_code=True).eval()
    assert {p.dtype for p in model.parameters()} == {EXPORT_DTYPES[dtype]}
    batch, ref = _masked_hidden(backbone, tokenizer, TEXTS, zs)
    with torch.no_grad():
        hidden_diff = _real_diff(model(**batch).last_hidden_state.float(), ref, batch["attention_mask"])
    # ... and SentenceTransformer, in the half dtype too, against the float32 masked model's mean pooling.
    st = SentenceTransformer(str(path), device="cpu", trust_remote_code=True)
    assert next(st.parameters()).dtype == EXPORT_DTYPES[dtype]
    got = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=False, convert_to_tensor=True).float())
    expected = _mean_pooled(ref, batch["attention_mask"])
    emb_diff = float((got - expected).abs().max())
    print(f"\n[dtype] MiniLM {dtype}: export check {ver['max_abs_diff']:.2e}, AutoModel hidden {hidden_diff:.2e}, "
          f"SentenceTransformer embedding {emb_diff:.2e} (atol {atol:g}; max |embedding| "
          f"{float(expected.abs().max()):.2f}, max |h| {float(ref[batch['attention_mask'].bool()].abs().max()):.2f})")
    assert hidden_diff < atol and emb_diff < EMBEDDING_SHARE * atol
    assert emb_diff > 0  # it did compute in half precision

    # The card and the usage lines say what the user gets.
    card = (path / "README.md").read_text()
    assert f"stored in {dtype}" in card and "torch.float32" in card
    assert dtype in pinfo["usage"]["transformers"] and "torch.float32" in pinfo["usage"]["sentence_transformers"]
    flag = {"float16": "use_fp16=True", "bfloat16": "use_bf16=True"}[dtype]
    assert flag in pinfo["usage"]["flag_embedding"]


def test_half_tolerance_catches_a_wrong_layer(tiny, tmp_path, monkeypatch):
    """The loosest tolerance (bfloat16) still fails an export whose layer 1 holds layer 0's weights."""
    backbone, tokenizer, sparse, colbert = tiny
    real = export_plan.export_state_dict

    def wrong_layer(pruned, vanilla):
        state, shape = real(pruned, vanilla)
        for key in [k for k in state if k.startswith("encoder.layer.1.")]:
            state[key] = state[key.replace("encoder.layer.1.", "encoder.layer.0.")].clone()
        return state, shape

    monkeypatch.setattr(export_plan, "export_state_dict", wrong_layer)
    # vanilla: every layer has the full width, so layer 0's weights fit layer 1 and only the values are wrong.
    with pytest.raises(ExportError, match=r"reload check \(AutoModel last_hidden_state \(bfloat16\) vs the float32 "
                                          r"masked backbone\): max abs diff on real tokens is .*above atol=2\.0e-01"):
        export_pruned_model(backbone, tmp_path / "m3", tokenizer, _tiny_zs(), sparse_head=sparse,
                            colbert_head=colbert, vanilla=True, dtype="bfloat16")
    assert _siblings(tmp_path) == []


# ====================================================================== tiny XLM-R with the BGE-M3 heads
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # a layer with no FFN unit left
@pytest.mark.parametrize("dtype", HALF)
def test_tiny_xlmr_half_flag_embedding(tiny, tmp_path, dtype, capsys):
    from FlagEmbedding import BGEM3FlagModel

    backbone, tokenizer, sparse, colbert = tiny
    zs = _tiny_zs()
    path = export_pruned_model(backbone, tmp_path / "m3", tokenizer, zs, sparse_head=sparse, colbert_head=colbert,
                               dtype=dtype)
    to = EXPORT_DTYPES[dtype]
    for name, head in ((SPARSE_FILE, sparse), (COLBERT_FILE, colbert)):
        saved = torch.load(path / name, weights_only=True)
        assert all(v.dtype == to for v in saved.values())
        assert all(torch.equal(saved[k], v.to(to)) for k, v in head.linear.state_dict().items())
    header, _ = _safetensors_header(path / "model.safetensors")
    header.pop("__metadata__", None)
    assert {v["dtype"] for v in header.values()} == {SAFETENSORS_NAME[dtype]}

    # FlagEmbedding computes in float32 here (use_fp16=False) from the half-precision weights and head files.
    m3 = BGEM3FlagModel(str(path), use_fp16=False, devices="cpu", trust_remote_code=True)
    got = m3.encode(TINY_TEXTS, batch_size=len(TINY_TEXTS), return_dense=True, return_sparse=True,
                    return_colbert_vecs=True)
    batch, hidden = _masked_hidden(backbone, tokenizer, TINY_TEXTS, zs)
    with torch.no_grad():
        dense = dense_embedding(hidden, batch["attention_mask"], "cls")
        weights = lexical_weights(sparse(hidden), batch["input_ids"], special_token_ids(tokenizer))
        vecs = colbert(hidden, batch["attention_mask"])
    dense_diff = float((torch.as_tensor(got["dense_vecs"]) - dense).abs().max())
    sparse_diff = 0.0
    for ours, theirs in zip(weights, got["lexical_weights"]):
        # A token whose float32 weight is a rounding away from 0 may drop out (relu); compare the union.
        for k in {str(k) for k in ours} | set(theirs):
            sparse_diff = max(sparse_diff, abs(float(theirs.get(k, 0.0)) - ours.get(int(k), 0.0)))
    colbert_diff = 0.0
    for i, theirs in enumerate(got["colbert_vecs"]):
        n = int(batch["attention_mask"][i].sum()) - 1
        assert theirs.shape == (n, 32)
        colbert_diff = max(colbert_diff, float((torch.as_tensor(theirs) - vecs[i, :n]).abs().max()))
    pinfo = json.loads((path / "pruning_info.json").read_text())
    with capsys.disabled():
        print(f"\n[dtype] tiny XLM-R {dtype}: export check {pinfo['verification']['max_abs_diff']:.2e}; "
              f"FlagEmbedding dense {dense_diff:.2e} sparse {sparse_diff:.2e} colbert {colbert_diff:.2e} "
              f"(atol {DEFAULT_ATOL[dtype]:g})")
    assert max(dense_diff, sparse_diff, colbert_diff) < EMBEDDING_SHARE * DEFAULT_ATOL[dtype]
    assert max(dense_diff, sparse_diff, colbert_diff) > 1e-6  # the weights really were rounded
    assert sum(len(w) for w in weights) > 0


def test_bad_dtype_argument(tiny, tmp_path):
    backbone, tokenizer, _, _ = tiny
    with pytest.raises(ExportError, match=r"^dtype must be one of float32, float16, bfloat16, got 'fp16'$"):
        export_pruned_model(backbone, tmp_path / "x", tokenizer, None, dtype="fp16")
    # A torch dtype is accepted as its name.
    path = export_pruned_model(backbone, tmp_path / "y", tokenizer, None, dtype=torch.float16)
    assert json.loads((path / "pruning_info.json").read_text())["export"]["dtype"] == "float16"
    assert _siblings(tmp_path) == ["y"]


# ====================================================================== script and config
def test_extract_script_dtype(tiny, tmp_path, monkeypatch, capsys):
    loaded, script, ckpt = fake_extract_run(tiny, monkeypatch, tmp_path)
    before = snapshot(tmp_path)

    for bad in ("fp16", "half", "Float16"):
        assert script.main([str(ckpt), str(tmp_path / "out"), "--dtype", bad]) == 2
        err = capsys.readouterr().err
        assert err == ("extract_pruned_model: error: --dtype must be one of float32, float16, bfloat16, "
                       f"got {bad!r}\n")
    assert loaded == [] and snapshot(tmp_path) == before  # nothing loaded, nothing written

    assert script.main([str(ckpt), str(tmp_path / "out"), "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "(saved in float16, atol 2.5e-02)" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"
    assert json.loads((tmp_path / "out" / "pruning_info.json").read_text())["verification"]["dtype"] == "float16"


def test_config_dtype_default_and_bad_values(tmp_path, tiny_xlmr_path, capsys, monkeypatch):
    ok = write_config(tmp_path / "ok", tiny_xlmr_path)
    assert load_config(ok).export.dtype == "float32"
    assert load_config(ok, ["export.dtype=bfloat16"]).export.dtype == "bfloat16"

    # A bad value stops train.py with one line naming the key, the place and the choices, before any model loads.
    import bge_pruning.training.run as run_module

    monkeypatch.setattr(run_module, "run", lambda cfg: pytest.fail("run() was reached"))
    config = write_config(tmp_path / "bad", tiny_xlmr_path, lambda c: c["export"].update(dtype="fp16"))
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if text.strip() == "dtype: fp16")
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    assert error_line(err) == (f"error: {config}:{line}: export.dtype must be one of float32, float16, bfloat16, "
                               "got 'fp16'")
    code, err = run_main(capsys, ok, "export.dtype=int8")
    assert code == 2
    assert error_line(err) == ("error: override export.dtype=int8: export.dtype must be one of float32, float16, "
                               "bfloat16, got 'int8'")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_exports_in_config_dtype(tmp_path, tiny_xlmr_path):
    """export.dtype reaches the run's export: a short real prune of the tiny XLM-R ends with a float16 export."""
    from bge_pruning.training.run import run

    config = write_config(tmp_path, tiny_xlmr_path, max_duration="4ba", eval_interval="4ba")
    summary = run(load_config(config, ["export.dtype=float16"]))
    path = Path(summary["export_dir"])
    header, _ = _safetensors_header(path / "model.safetensors")
    header.pop("__metadata__", None)
    assert {v["dtype"] for v in header.values()} == {"F16"}
    assert all(v.dtype == torch.float16 for name in (SPARSE_FILE, COLBERT_FILE)
               for v in torch.load(path / name, weights_only=True).values())
    ver = json.loads((path / "pruning_info.json").read_text())["verification"]
    assert ver["dtype"] == "float16" and 0 < ver["max_abs_diff"] < DEFAULT_ATOL["float16"]
