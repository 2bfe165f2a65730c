"""The masked backbone equals HF's models, masks behave as specified, parameter counts are exact."""
import pytest
import torch
from tiny_models import build_tiny_xlmr
from transformers import AutoModel, AutoTokenizer

from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone
from bge_pruning.shapes import EncoderShape, count_params

TEXTS = ["a short one.", "the cat sits on the red house near the river and sings very happily today."]


def load_pair(path):
    hf = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return hf, MaskedBGEM3Backbone.from_hf_model(hf).eval(), tok


def numel(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("which", ["minilm", "xlmr"])
def test_matches_hf_on_padded_batch(which, minilm_path, tiny_xlmr_path):
    path = minilm_path if which == "minilm" else tiny_xlmr_path
    hf, model, tok = load_pair(path)
    # Zero missing / unexpected keys in both directions.
    result = model.load_state_dict({k: v for k, v in hf.state_dict().items()
                                    if not k.endswith(("position_ids", "token_type_ids"))}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must be padded"
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        out = model(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    diff = (ref - out).abs().amax(-1)
    # Padding positions carry no meaning (HF's own eager and SDPA paths differ there by ~2e-5 on MiniLM).
    assert diff[real].max().item() < 1e-5
    # All-ones masks change nothing.
    L, H, I = len(model.encoder.layer), model.shape.heads_per_layer[0], model.shape.intermediate_per_layer[0]
    with torch.no_grad():
        ones = model(batch["input_ids"], batch["attention_mask"], head_z=torch.ones(L, H),
                     intermediate_z=torch.ones(L, I), layer_z=torch.ones(L))
    assert torch.equal(ones, out)


def test_xlmr_position_ids_follow_padding_idx(tiny_xlmr_path):
    _, model, tok = load_pair(tiny_xlmr_path)
    ids = tok(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    pos = model.embeddings.position_ids(ids)
    pad = model.config.pad_token_id
    assert pos[0, 0].item() == pad + 1
    assert (pos[ids == pad] == pad).all()


def test_zero_layer_is_exact_identity(minilm_path):
    _, model, tok = load_pair(minilm_path)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    layer_z = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    with torch.no_grad():
        masked = model(batch["input_ids"], batch["attention_mask"], layer_z=layer_z)
        model.encoder.layer = torch.nn.ModuleList(l for i, l in enumerate(model.encoder.layer) if layer_z[i] == 1)
        dropped = model(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(masked, dropped)


def test_head_and_intermediate_masks_act_where_specified(minilm_path):
    """A zeroed head must not influence the output: changing its Q/K/V weights changes nothing."""
    _, model, tok = load_pair(minilm_path)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    head_z = torch.ones(6, 12)
    head_z[2, 5] = 0
    int_z = torch.ones(6, 1536)
    int_z[3, :100] = 0
    with torch.no_grad():
        before = model(batch["input_ids"], batch["attention_mask"], head_z=head_z, intermediate_z=int_z)
        layer = model.encoder.layer[2].attention.self
        layer.value.weight[5 * 32:6 * 32].normal_()
        layer.query.weight[5 * 32:6 * 32].normal_()
        model.encoder.layer[3].intermediate.dense.weight[:100].normal_()
        after = model(batch["input_ids"], batch["attention_mask"], head_z=head_z, intermediate_z=int_z)
        unmasked = model(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(before, after)
    assert (after - unmasked).abs().max() > 1e-3


@pytest.mark.parametrize("layers,heads,hidden,inter", [(2, 2, 16, 32), (3, 4, 32, 48), (1, 8, 64, 128)])
def test_count_params_matches_tiny_xlmrs(tmp_path, layers, heads, hidden, inter):
    path = build_tiny_xlmr(tmp_path / "m", n_layers=layers, n_heads=heads, hidden=hidden, intermediate=inter)
    hf = AutoModel.from_pretrained(path)
    shape = EncoderShape.from_hf_config(hf.config)
    assert count_params(shape).total == numel(hf)
    assert count_params(MaskedBGEM3Backbone.from_hf_model(hf).shape).total == numel(hf)


def test_count_params_matches_minilm(minilm_path):
    hf = AutoModel.from_pretrained(minilm_path)
    counts = count_params(EncoderShape.from_hf_config(hf.config))
    assert counts.total == numel(hf) == 22_713_216
    assert counts.encoder_layers == sum(p.numel() for p in hf.encoder.parameters())
    assert counts.embeddings == sum(p.numel() for p in hf.embeddings.parameters())
