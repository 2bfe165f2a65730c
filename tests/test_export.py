"""Export of pruned backbones: HF reload equality, sentence-transformers, FlagEmbedding, safety of the target."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from bge_pruning.export import ExportError, export_composer_model, export_pruned_model, hf_export
from bge_pruning.export import plan as export_plan
from bge_pruning.export import write as export_write
from bge_pruning.models.heads import (
    COLBERT_FILE,
    SPARSE_FILE,
    ColbertHead,
    SparseHead,
    dense_embedding,
    lexical_weights,
    special_token_ids,
)
from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone
from bge_pruning.shapes import EncoderShape, count_params

ATOL = 1e-4
# Texts for the comparisons after export (different from the export's own probe texts), of different
# lengths so every batch is padded.
TEXTS = ["A dog runs in the park.",
         "Two children are playing football on a green field next to the old school building.",
         "music",
         "The woman reads a book on the train while it is raining outside."]
TINY_TEXTS = ["the cat sits on the red car.", "a dog", "people walk near the river and the big house with music.",
              "der hund und die katze."]

MINILM_HEADS = [12, 7, 1, 5, 9, 3]          # heads kept per layer (layer 3 is then dropped)
MINILM_INTER = [1536, 700, 300, 1000, 64, 512]
MINILM_LAYER_Z = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]


def _masks(n_heads: list[int], n_inter: list[int], H: int, I: int, layer_z: list[float], seed: int = 0) -> dict:
    """Deterministic-like masks: soft values in [0.8, 1] on kept units, exactly 0 on pruned ones."""
    g = torch.Generator().manual_seed(seed)
    L = len(n_heads)
    head_z, int_z = torch.zeros(L, H), torch.zeros(L, I)
    for i in range(L):
        idx = torch.randperm(H, generator=g)[:n_heads[i]]
        head_z[i, idx] = 0.8 + 0.2 * torch.rand(len(idx), generator=g)
        idx = torch.randperm(I, generator=g)[:n_inter[i]]
        int_z[i, idx] = 0.8 + 0.2 * torch.rand(len(idx), generator=g)
    return {"head_z": head_z, "intermediate_z": int_z, "layer_z": torch.tensor(layer_z)}


@torch.no_grad()
def _masked_hidden(backbone, tokenizer, texts, zs):
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    backbone.eval()
    hidden = backbone(batch["input_ids"], batch["attention_mask"], token_type_ids=batch.get("token_type_ids"),
                      head_z=None if zs is None else zs.get("head_z"),
                      intermediate_z=None if zs is None else zs.get("intermediate_z"),
                      layer_z=None if zs is None else zs.get("layer_z"))
    return batch, hidden


def _real_diff(a, b, mask) -> float:
    m = mask.bool()
    return float((a[m] - b[m]).abs().max())


def _reload(path: Path, trust_remote_code: bool):
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(str(path), output_loading_info=True, trust_remote_code=trust_remote_code)
    return model.eval(), info


def _assert_clean_loading(info) -> None:
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def _siblings(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# ====================================================================== MiniLM (BERT)
@pytest.fixture(scope="module")
def minilm(minilm_path):
    from transformers import AutoTokenizer

    backbone = MaskedBGEM3Backbone.from_pretrained(str(minilm_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    zs = _masks(MINILM_HEADS, MINILM_INTER, 12, 1536, MINILM_LAYER_Z)
    return backbone, tokenizer, zs


@pytest.fixture(scope="module")
def minilm_exports(minilm, tmp_path_factory):
    backbone, tokenizer, zs = minilm
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    root = tmp_path_factory.mktemp("minilm_exports")
    out = {}
    for vanilla in (False, True):
        out[vanilla] = export_pruned_model(backbone, root / f"vanilla_{vanilla}", tokenizer, zs, pooling="mean",
                                           vanilla=vanilla, info={"base_model": "all-MiniLM-L6-v2",
                                                                  "training_steps": 123})
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "export modified the backbone"
    assert len(backbone.encoder.layer) == 6
    return out


@pytest.mark.parametrize("vanilla", [False, True], ids=["default", "vanilla"])
def test_minilm_export_reloads_equal(minilm, minilm_exports, vanilla, capsys):
    backbone, tokenizer, zs = minilm
    path = minilm_exports[vanilla]
    config = json.loads((path / "config.json").read_text())
    kept_heads = [h for h, z in zip(MINILM_HEADS, MINILM_LAYER_Z) if z]
    kept_inter = [i for i, z in zip(MINILM_INTER, MINILM_LAYER_Z) if z]
    assert config["num_hidden_layers"] == 5
    if vanilla:
        assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
        assert "auto_map" not in config and not (path / "modeling_pruned.py").exists()
        assert config["num_attention_heads"] == 12 and config["intermediate_size"] == max(kept_inter) == 1536
    else:
        assert config["model_type"] == "bert"  # stock: AutoConfig / AutoTokenizer need no remote code
        assert config["auto_map"] == {"AutoConfig": "modeling_pruned.PrunedBertConfig",
                                      "AutoModel": "modeling_pruned.PrunedBertModel"}
        assert (path / "modeling_pruned.py").is_file()
        assert config["heads_per_layer"] == kept_heads == [12, 7, 1, 9, 3]
        assert config["intermediate_per_layer"] == kept_inter == [1536, 700, 300, 64, 512]
        assert config["attention_head_size"] == 32

    model, info = _reload(path, trust_remote_code=not vanilla)
    _assert_clean_loading(info)
    assert type(model).__name__ == ("BertModel" if vanilla else "PrunedBertModel")
    batch, ref = _masked_hidden(backbone, tokenizer, TEXTS, zs)
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    diff = _real_diff(out, ref, batch["attention_mask"])
    with capsys.disabled():
        print(f"\n[export] MiniLM {'vanilla' if vanilla else 'default'}: AutoModel max-abs-diff {diff:.2e}")
    assert diff < ATOL

    # Parameter counts: pruning_info == count_params == sum(numel) of the reloaded model.
    pinfo = json.loads((path / "pruning_info.json").read_text())
    n_reloaded = sum(p.numel() for p in model.parameters())
    assert pinfo["params"]["exported"]["total"] == n_reloaded
    assert pinfo["params"]["exported"] == count_params(EncoderShape.from_hf_config(model.config)).to_dict()
    assert pinfo["params"]["before"]["total"] == 22_713_216  # all-MiniLM-L6-v2
    assert pinfo["params"]["before"] == count_params(backbone.shape).to_dict()
    achieved = EncoderShape(hidden_size=384, head_dim=32, heads_per_layer=kept_heads, intermediate_per_layer=kept_inter,
                            vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
    assert pinfo["params"]["after"] == count_params(achieved).to_dict()
    assert pinfo["achieved_shape"]["heads_per_layer"] == kept_heads
    assert pinfo["kept_layers"] == [0, 1, 2, 4, 5]
    assert [len(h) for h in pinfo["kept_heads"]] == kept_heads
    expected_heads = [torch.nonzero(zs["head_z"][i]).flatten().tolist() for i in pinfo["kept_layers"]]
    assert pinfo["kept_heads"] == expected_heads
    assert pinfo["training_steps"] == 123 and pinfo["base_model"] == "all-MiniLM-L6-v2"
    assert pinfo["export"]["trust_remote_code"] is (not vanilla)
    padded = pinfo["export"]["padded_params"]
    assert padded == pinfo["params"]["exported"]["total"] - pinfo["params"]["after"]["total"]
    if vanilla:
        assert padded > 0
        assert n_reloaded == pinfo["params"]["after"]["total"] + padded
    else:
        assert padded == 0 and n_reloaded == pinfo["params"]["after"]["total"]
    assert pinfo["verification"]["max_abs_diff"] < ATOL

    # sentence-transformers files.
    modules = json.loads((path / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    pool_cfg = json.loads((path / "1_Pooling" / "config.json").read_text())
    # sentence-transformers 6's Pooling config (written by its own save): one "pooling_mode" string.
    assert pool_cfg["pooling_mode"] == "mean" and pool_cfg["embedding_dimension"] == 384
    assert (path / "2_Normalize").is_dir()


@pytest.mark.parametrize("vanilla", [False, True], ids=["default", "vanilla"])
def test_minilm_export_sentence_transformers(minilm, minilm_exports, vanilla, capsys):
    from sentence_transformers import SentenceTransformer

    backbone, tokenizer, zs = minilm
    st = SentenceTransformer(str(minilm_exports[vanilla]), device="cpu", trust_remote_code=True)
    got = st.encode(TEXTS, convert_to_tensor=True, batch_size=len(TEXTS))
    batch, hidden = _masked_hidden(backbone, tokenizer, TEXTS, zs)
    expected = dense_embedding(hidden, batch["attention_mask"], "mean")
    diff = float((got.cpu() - expected).abs().max())
    with capsys.disabled():
        print(f"\n[export] MiniLM {'vanilla' if vanilla else 'default'}: SentenceTransformer max-abs-diff {diff:.2e}")
    assert got.shape == (len(TEXTS), 384)
    assert diff < ATOL


def test_minilm_custom_export_needs_trust_remote_code(minilm_exports):
    from transformers import AutoModel

    # The config has the stock model type (so AutoTokenizer needs no remote code): without trust_remote_code
    # AutoModel builds the stock class, which refuses the per-layer weights instead of loading them wrong.
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModel.from_pretrained(str(minilm_exports[False]), trust_remote_code=False)


def test_export_without_pruned_heads_uses_stock_class(minilm, tmp_path):
    backbone, tokenizer, _ = minilm
    g = torch.Generator().manual_seed(1)
    head_z = 0.8 + 0.2 * torch.rand(6, 12, generator=g)  # every head kept, soft values folded in
    int_z = torch.zeros(6, 1536)
    for i in range(6):
        int_z[i, torch.randperm(1536, generator=g)[:1024]] = 0.9
    zs = {"head_z": head_z, "intermediate_z": int_z, "layer_z": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])}
    path = export_pruned_model(backbone, tmp_path / "stock", tokenizer, zs, pooling="mean")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    assert "auto_map" not in config and "heads_per_layer" not in config
    assert not (path / "modeling_pruned.py").exists()
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["intermediate_size"]) == (5, 12, 1024)
    model, info = _reload(path, trust_remote_code=False)
    _assert_clean_loading(info)
    assert type(model).__name__ == "BertModel"
    batch, ref = _masked_hidden(backbone, tokenizer, TEXTS, zs)
    with torch.no_grad():
        diff = _real_diff(model(**batch).last_hidden_state, ref, batch["attention_mask"])
    assert diff < ATOL
    pinfo = json.loads((path / "pruning_info.json").read_text())
    assert pinfo["params"]["after"]["total"] == sum(p.numel() for p in model.parameters())
    assert pinfo["export"]["padded_params"] == 0


# ====================================================================== tiny XLM-R with BGE-M3 heads
TINY_HEADS = [2, 0, 4, 1]          # a layer with no head left
TINY_INTER = [40, 64, 0, 17]       # a layer with no intermediate unit left
TINY_LAYER_Z = [1.0, 1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def tiny(tiny_xlmr_path):
    from transformers import AutoTokenizer

    backbone = MaskedBGEM3Backbone.from_pretrained(str(tiny_xlmr_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_xlmr_path))
    sparse, colbert = SparseHead(32), ColbertHead(32)
    sparse.linear.load_state_dict(torch.load(tiny_xlmr_path / SPARSE_FILE, weights_only=True))
    colbert.linear.load_state_dict(torch.load(tiny_xlmr_path / COLBERT_FILE, weights_only=True))
    return backbone, tokenizer, sparse.eval(), colbert.eval()


def _tiny_zs(layer_z=TINY_LAYER_Z) -> dict:
    return _masks(TINY_HEADS, TINY_INTER, 4, 64, list(layer_z), seed=3)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # 0-width layers in the round trip
@pytest.mark.parametrize("vanilla", [False, True], ids=["default", "vanilla"])
def test_tiny_xlmr_flag_embedding(tiny, tmp_path, vanilla, capsys):
    from FlagEmbedding import BGEM3FlagModel

    backbone, tokenizer, sparse, colbert = tiny
    zs = _tiny_zs()
    path = export_pruned_model(backbone, tmp_path / "m3", tokenizer, zs, sparse_head=sparse, colbert_head=colbert,
                               vanilla=vanilla)
    config = json.loads((path / "config.json").read_text())
    if vanilla:
        assert config["model_type"] == "xlm-roberta" and "auto_map" not in config
    else:
        assert config["model_type"] == "xlm-roberta" and "AutoModel" in config["auto_map"]
        assert config["heads_per_layer"] == TINY_HEADS and config["intermediate_per_layer"] == TINY_INTER
    assert (path / SPARSE_FILE).is_file() and (path / COLBERT_FILE).is_file()

    # A custom export needs trust_remote_code=True (FlagEmbedding passes it on to AutoModel and
    # AutoTokenizer); a vanilla export loads with FlagEmbedding's defaults.
    kwargs = {} if vanilla else {"trust_remote_code": True}
    m3 = BGEM3FlagModel(str(path), use_fp16=False, devices="cpu", **kwargs)
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
        assert set(theirs) == {str(k) for k in ours}
        sparse_diff = max([sparse_diff] + [abs(float(theirs[str(k)]) - w) for k, w in ours.items()])
    colbert_diff = 0.0
    for i, theirs in enumerate(got["colbert_vecs"]):
        n = int(batch["attention_mask"][i].sum()) - 1
        assert theirs.shape == (n, 32)
        colbert_diff = max(colbert_diff, float((torch.as_tensor(theirs) - vecs[i, :n]).abs().max()))
    with capsys.disabled():
        print(f"\n[export] tiny XLM-R {'vanilla' if vanilla else 'default'}: FlagEmbedding max-abs-diff "
              f"dense {dense_diff:.2e} sparse {sparse_diff:.2e} colbert {colbert_diff:.2e}")
    assert max(dense_diff, sparse_diff, colbert_diff) < ATOL
    assert sum(len(w) for w in weights) > 0  # the sparse comparison compared something

    # The export round-trips into the masked backbone (pruning can continue from it).
    again = MaskedBGEM3Backbone.from_pretrained(str(path), trust_remote_code=not vanilla).eval()
    pinfo = json.loads((path / "pruning_info.json").read_text())
    assert count_params(again.shape).to_dict() == pinfo["params"]["exported"]
    with torch.no_grad():
        diff = _real_diff(again(batch["input_ids"], batch["attention_mask"]), hidden, batch["attention_mask"])
    assert diff < ATOL
    with capsys.disabled():
        print(f"[export] tiny XLM-R {'vanilla' if vanilla else 'default'}: AutoModel max-abs-diff "
              f"{pinfo['verification']['max_abs_diff']:.2e}")


def test_tiny_xlmr_reload_matches_with_dropped_layer(tiny, tmp_path):
    backbone, tokenizer, sparse, colbert = tiny
    zs = _tiny_zs([1.0, 0.0, 1.0, 1.0])
    path = export_pruned_model(backbone, tmp_path / "m3", tokenizer, zs, sparse_head=sparse, colbert_head=colbert)
    model, info = _reload(path, trust_remote_code=True)
    _assert_clean_loading(info)
    assert model.config.heads_per_layer == [2, 4, 1]
    batch, ref = _masked_hidden(backbone, tokenizer, TINY_TEXTS, zs)
    with torch.no_grad():
        diff = _real_diff(model(**batch).last_hidden_state, ref, batch["attention_mask"])
    assert diff < ATOL
    pinfo = json.loads((path / "pruning_info.json").read_text())
    assert pinfo["params"]["after"]["total"] == sum(p.numel() for p in model.parameters())
    assert pinfo["heads"] == {"sparse": True, "colbert": True, "colbert_dim": 32}
    for name, head in ((SPARSE_FILE, sparse), (COLBERT_FILE, colbert)):
        saved = torch.load(path / name, weights_only=True)
        assert all(torch.equal(saved[k], v) for k, v in head.linear.state_dict().items())


def test_half_precision_backbone_without_pooler(tiny_xlmr_path, tmp_path):
    """A bf16 backbone is verified and exported in float32; without a pooler the custom class is used."""
    from transformers import AutoTokenizer

    backbone = MaskedBGEM3Backbone.from_pretrained(str(tiny_xlmr_path)).to(torch.bfloat16).eval()
    backbone.pooler = None
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_xlmr_path))
    zs = {"head_z": torch.tensor([[1.0, 1.0, 1.0, 1.0]] * 4)}  # nothing pruned, but no pooler
    path = export_pruned_model(backbone, tmp_path / "bf16", tokenizer, zs)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta" and config["has_pooler"] is False
    assert config["dtype"] == "float32"
    pinfo = json.loads((path / "pruning_info.json").read_text())
    assert pinfo["export"]["source_dtype"] == "bfloat16" and pinfo["params"]["after"]["pooler"] == 0
    model, info = _reload(path, trust_remote_code=True)
    _assert_clean_loading(info)
    assert model.pooler is None and next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == pinfo["params"]["after"]["total"]
    assert next(backbone.parameters()).dtype == torch.bfloat16  # the backbone itself is untouched
    with pytest.raises(ExportError, match="vanilla export needs the pooler"):
        export_pruned_model(backbone, tmp_path / "vanilla", tokenizer, zs, vanilla=True)
    assert _siblings(tmp_path) == ["bf16"]


# ====================================================================== safety
def test_refuses_non_empty_target_and_leaves_it_untouched(tiny, tmp_path):
    backbone, tokenizer, _, _ = tiny
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("my data")
    with pytest.raises(ExportError, match=r"precious.*not empty.*--overwrite"):
        export_pruned_model(backbone, target, tokenizer, _tiny_zs())
    assert _siblings(target) == ["notes.txt"] and (target / "notes.txt").read_text() == "my data"
    # overwrite=True still refuses a directory that is not a model directory.
    with pytest.raises(ExportError, match="does not look like a model directory"):
        export_pruned_model(backbone, target, tokenizer, _tiny_zs(), overwrite=True)
    assert _siblings(target) == ["notes.txt"]
    assert _siblings(tmp_path) == ["precious"]


def test_overwrite_replaces_previous_export(tiny, tmp_path):
    backbone, tokenizer, _, _ = tiny
    target = tmp_path / "export"
    export_pruned_model(backbone, target, tokenizer, _tiny_zs())
    (target / "stale.txt").write_text("old")
    with pytest.raises(ExportError, match="--overwrite"):
        export_pruned_model(backbone, target, tokenizer, None)
    assert (target / "stale.txt").exists()
    export_pruned_model(backbone, target, tokenizer, None, overwrite=True)
    assert not (target / "stale.txt").exists()
    assert json.loads((target / "config.json").read_text())["model_type"] == "xlm-roberta"  # nothing pruned
    assert _siblings(tmp_path) == ["export"]  # the old directory and temp dirs are gone
    # An existing empty directory is filled without --overwrite.
    (tmp_path / "empty").mkdir()
    export_pruned_model(backbone, tmp_path / "empty", tokenizer, None)
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_wrong_mask_shape_fails_clearly_and_leaves_nothing(tiny, tmp_path):
    backbone, tokenizer, _, _ = tiny
    zs = _tiny_zs()
    zs["head_z"] = [zs["head_z"][0], zs["head_z"][1], zs["head_z"][2][:3], zs["head_z"][3]]
    with pytest.raises(ExportError, match=r"head_z'\]\[2\] has 3 entries, layer 2 has 4 heads"):
        export_pruned_model(backbone, tmp_path / "sub" / "out", tokenizer, zs)
    zs = _tiny_zs()
    zs["hidden_z"] = torch.ones(32)
    with pytest.raises(ExportError, match="unsupported masks.*hidden_z"):
        export_pruned_model(backbone, tmp_path / "out", tokenizer, zs)
    zs = _tiny_zs([1.0, 0.5, 1.0, 1.0])
    with pytest.raises(ExportError, match="layer_z.*0 or 1"):
        export_pruned_model(backbone, tmp_path / "out", tokenizer, zs)
    assert _siblings(tmp_path) == []


def test_modeling_mismatch_fails_reload_check_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    backbone, tokenizer, sparse, colbert = tiny
    source = hf_export.modeling_source()
    needle = "sa.scaling = head_size ** -0.5"
    assert needle in source
    monkeypatch.setattr(export_write, "modeling_source", lambda: source.replace(needle, "sa.scaling = 1.0"))
    with pytest.raises(ExportError, match=r"reload check.*max abs diff on real tokens is \d\.\d+e[+-]\d+, above atol"):
        export_pruned_model(backbone, tmp_path / "new" / "out", tokenizer, _tiny_zs(), sparse_head=sparse,
                            colbert_head=colbert)
    assert _siblings(tmp_path) == []  # neither the target, its new parent, nor a temp dir


def test_missing_weight_fails_reload_check(tiny, tmp_path, monkeypatch):
    backbone, tokenizer, _, _ = tiny
    real = export_plan.export_state_dict

    def drop_one(pruned, vanilla):
        state, shape = real(pruned, vanilla)
        state.pop("encoder.layer.0.output.dense.weight")
        return state, shape

    monkeypatch.setattr(export_plan, "export_state_dict", drop_one)
    target = tmp_path / "out"
    target.mkdir()  # an existing empty target stays as it was
    missing = r"missing_keys=\['encoder\.layer\.0\.output\.dense\.weight'\]"
    with pytest.raises(ExportError, match=r"reload check failed.*" + missing):
        export_pruned_model(backbone, target, tokenizer, _tiny_zs())
    assert _siblings(tmp_path) == ["out"] and _siblings(target) == []


def test_bad_arguments(tiny, tmp_path):
    backbone, tokenizer, sparse, _ = tiny
    with pytest.raises(ExportError, match="pooling must be one of"):
        export_pruned_model(backbone, tmp_path / "a", tokenizer, pooling="max")
    with pytest.raises(ExportError, match="colbert_head.linear takes 16 features.*hidden size is 32"):
        export_pruned_model(backbone, tmp_path / "a", tokenizer, colbert_head=ColbertHead(16))
    with pytest.raises(ExportError, match=r"info\['when'\] is not JSON-serializable"):
        export_pruned_model(backbone, tmp_path / "a", tokenizer, info={"when": object()})
    with pytest.raises(ExportError, match="clash"):
        export_pruned_model(backbone, tmp_path / "a", tokenizer, info={"params": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_pruned_model(backbone, tmp_path / "b", tokenizer, sparse_head=sparse)
    assert any("BOTH" in str(w.message) for w in caught)
    assert _siblings(tmp_path) == ["b"]


# ====================================================================== Composer model + script
class _FakeL0:
    def __init__(self, zs):
        self.zs = zs

    def deterministic_zs(self):
        return self.zs


def _fake_composer(tiny, zs):
    backbone, tokenizer, sparse, colbert = tiny
    return types.SimpleNamespace(
        backbone=backbone, l0_module=None if zs is None else _FakeL0(zs), sparse_head=sparse, colbert_head=colbert,
        pooling="cls", normalize=True, tokenizer=tokenizer,
        export_info=lambda: {"base_model": "tiny-xlmr", "training_steps": 7, "pooling": "cls",
                             "target_shape": {"n_layers": 3, "n_heads": 2, "intermediate_size": 32}})


def test_export_composer_model(tiny, tmp_path):
    zs = _tiny_zs([1.0, 1.0, 0.0, 1.0])
    path = export_composer_model(_fake_composer(tiny, zs), tmp_path / "out")
    pinfo = json.loads((path / "pruning_info.json").read_text())
    assert pinfo["base_model"] == "tiny-xlmr" and pinfo["training_steps"] == 7
    assert pinfo["target_shape"] == {"n_layers": 3, "n_heads": 2, "intermediate_size": 32}
    assert pinfo["achieved_shape"]["heads_per_layer"] == [2, 0, 1]
    assert pinfo["kept_layers"] == [0, 1, 3]
    assert pinfo["heads"]["sparse"] and pinfo["heads"]["colbert"]
    # Finetune stage: no L0 module, the backbone is exported as it is.
    path = export_composer_model(_fake_composer(tiny, None), tmp_path / "finetuned", vanilla=True)
    assert json.loads((path / "config.json").read_text())["model_type"] == "xlm-roberta"
    with pytest.raises(ExportError, match="lacks attributes"):
        export_composer_model(types.SimpleNamespace(backbone=tiny[0]), tmp_path / "x")


def _load_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "extract_pruned_model.py"
    spec = importlib.util.spec_from_file_location("extract_pruned_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_checkpoint_loader(tiny, monkeypatch) -> list:
    """Replace the checkpoint module with one whose loader returns the tiny masked model; returns the paths asked."""
    loaded = []

    def load_composer_model(path, trust_remote_code=False):
        loaded.append(path)
        return _fake_composer(tiny, _tiny_zs())

    fake = types.ModuleType("bge_pruning.training.checkpoint")
    fake.load_composer_model = load_composer_model
    fake.CheckpointError = type("CheckpointError", (RuntimeError,), {})
    monkeypatch.setitem(sys.modules, "bge_pruning.training.checkpoint", fake)
    return loaded


def fake_extract_run(tiny, monkeypatch, tmp_path) -> tuple[list, types.ModuleType, Path]:
    """The extract script with the fake checkpoint loader, and a checkpoint file it never reads: (the paths the
    loader was asked for, the script module, the checkpoint path)."""
    loaded = fake_checkpoint_loader(tiny, monkeypatch)
    ckpt = tmp_path / "ep1-ba10-rank0.pt"
    ckpt.write_bytes(b"not read by the fake loader")
    return loaded, _load_script(), ckpt


def test_extract_script(tiny, tmp_path, monkeypatch, capsys):
    loaded, script, ckpt = fake_extract_run(tiny, monkeypatch, tmp_path)

    assert script.main([str(ckpt), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "pruning_info.json").is_file() and loaded == [str(ckpt)]
    capsys.readouterr()

    # A non-empty target is refused (bad input: exit 2) before the checkpoint is even loaded.
    assert script.main([str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and len(loaded) == 1
    assert script.main([str(ckpt), str(tmp_path / "out"), "--overwrite", "--vanilla"]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "xlm-roberta"

    # The checkpoint itself can never be inside the directory that --overwrite would replace.
    inside = tmp_path / "out" / "ckpt.pt"
    inside.write_bytes(b"x")
    assert script.main([str(inside), str(tmp_path / "out"), "--overwrite"]) == 2
    assert "inside" in capsys.readouterr().err and inside.exists()
    assert script.main([str(tmp_path / "missing.pt"), str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err


# ====================================================================== tiny MPNet (relative position bias)
MPNET_HEADS = [3, 1, 4, 2]     # per layer; different head subsets read different bias columns
MPNET_INTER = [10, 64, 0, 33]
MPNET_LAYER_Z = [1.0, 1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def tiny_mpnet(tiny_mpnet_path):
    from transformers import AutoTokenizer

    backbone = MaskedBGEM3Backbone.from_pretrained(str(tiny_mpnet_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_mpnet_path))
    zs = _masks(MPNET_HEADS, MPNET_INTER, 4, 64, MPNET_LAYER_Z, seed=2)
    return backbone, tokenizer, zs


@pytest.mark.parametrize("vanilla", [False, True], ids=["default", "vanilla"])
def test_tiny_mpnet_export_reloads_equal(tiny_mpnet, tmp_path, vanilla):
    from sentence_transformers import SentenceTransformer

    backbone, tokenizer, zs = tiny_mpnet
    out = export_pruned_model(backbone, tmp_path / "m", tokenizer, zs, pooling="mean", vanilla=vanilla,
                              info={"base_model": "tiny-mpnet"})
    info = json.loads((out / "pruning_info.json").read_text())
    config = json.loads((out / "config.json").read_text())
    kept_heads = [torch.nonzero(zs["head_z"][i]).flatten().tolist() for i in range(4)]
    assert info["kept_heads"] == kept_heads
    if vanilla:
        assert info["export"]["class"] == "MPNetModel" and config["model_type"] == "mpnet"
        assert not (out / hf_export.MODELING_FILE).exists() and "relative_attention_heads_per_layer" not in config
    else:
        assert info["export"]["class"] == "PrunedMPNetModel" and config["model_type"] == "mpnet"
        assert config["relative_attention_heads_per_layer"] == kept_heads
        assert config["heads_per_layer"] == MPNET_HEADS and config["intermediate_per_layer"] == MPNET_INTER
    assert "type_vocab_size" not in config

    model, loading = _reload(out, trust_remote_code=not vanilla)
    _assert_clean_loading(loading)
    assert type(model).__name__ == info["export"]["class"]
    assert sum(p.numel() for p in model.parameters()) == info["params"]["exported"]["total"]
    # The unpadded count: the bias table once, the kept heads and units only.
    pruned = EncoderShape.from_hf_config(backbone.config).with_target(4, 4, 64)
    pruned = EncoderShape(**{**pruned.__dict__, "heads_per_layer": tuple(MPNET_HEADS),
                             "intermediate_per_layer": tuple(MPNET_INTER)})
    assert info["params"]["after"]["total"] == count_params(pruned).total
    if not vanilla:
        assert info["params"]["exported"] == info["params"]["after"]

    batch, ref = _masked_hidden(backbone, tokenizer, TINY_TEXTS, zs)
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert _real_diff(hidden, ref, batch["attention_mask"]) < ATOL

    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=not vanilla)
    emb = torch.as_tensor(st.encode(TINY_TEXTS, normalize_embeddings=False))
    want = dense_embedding(ref, batch["attention_mask"], "mean", True)
    assert torch.allclose(emb, want, atol=ATOL)


def test_tiny_mpnet_export_reloads_as_masked_backbone(tiny_mpnet, tmp_path):
    """A custom MPNet export is a valid base for finetuning: the masked backbone rebuilds its per-layer bias
    columns from config.json and reproduces the export."""
    from bge_pruning.models.loading import load_hf_model

    backbone, tokenizer, zs = tiny_mpnet
    out = export_pruned_model(backbone, tmp_path / "m", tokenizer, zs, pooling="mean")
    hf, tok = load_hf_model(str(out))
    again = MaskedBGEM3Backbone.from_hf_model(hf).eval()
    assert again.encoder.relative_attention_heads() == [torch.nonzero(zs["head_z"][i]).flatten().tolist()
                                                        for i in range(4)]
    batch, ref = _masked_hidden(backbone, tokenizer, TINY_TEXTS, zs)
    with torch.no_grad():
        hidden = again(batch["input_ids"], batch["attention_mask"])
    assert _real_diff(hidden, ref, batch["attention_mask"]) < ATOL


@pytest.mark.slow
def test_custom_export_tokenizer_and_config_load_without_remote_code(minilm_exports, minilm_path):
    """AutoTokenizer (which loads the config first) and AutoConfig open a per-layer-width export with no trust
    prompt and no remote code; AutoModel without trust_remote_code refuses its weights loudly (size mismatch),
    with it loads the custom class. Run in a subprocess with stdin closed, as a user's script would."""
    path = minilm_exports[False]
    code = (
        "import sys\n"
        "from transformers import AutoConfig, AutoModel, AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(path)!r})\n"
        f"base = AutoTokenizer.from_pretrained({str(minilm_path)!r})\n"
        "print('TOKENIZER', type(tok).__name__, type(base).__name__,\n"
        "      tok('a dog')['input_ids'] == base('a dog')['input_ids'])\n"
        f"print('CONFIG', type(AutoConfig.from_pretrained({str(path)!r})).__name__)\n"
        f"print('TRUSTED', type(AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True)).__name__)\n"
        "try:\n"
        f"    AutoModel.from_pretrained({str(path)!r})\n"
        "    print('UNTRUSTED loaded')\n"
        "except Exception as e:\n"
        "    print('UNTRUSTED refused', type(e).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "TOKENIZER BertTokenizer BertTokenizer True" in proc.stdout
    assert "CONFIG BertConfig" in proc.stdout and "TRUSTED PrunedBertModel" in proc.stdout
    assert "UNTRUSTED refused RuntimeError" in proc.stdout
    assert "Do you wish to run the custom code" not in out  # the interactive prompt never appears
