"""Physical pruning: the pruned model's plain forward equals the masked forward, counts stay exact."""
import copy

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone
from bge_pruning.shapes import count_params

TEXTS = ["two dogs play in the snow.", "a man is reading a very old book in the park near the river at night.",
         "rain."]


def random_masks(gen, n_layers, n_heads, inter, kept_heads, kept_inter, dropped_layers):
    """Soft deterministic-style masks: kept units get values in (0.5, 1], pruned units 0."""
    head_z = torch.zeros(n_layers, n_heads)
    int_z = torch.zeros(n_layers, inter)
    for l in range(n_layers):
        keep_h = torch.randperm(n_heads, generator=gen)[: kept_heads[l]]
        head_z[l, keep_h] = 0.5 + 0.5 * torch.rand(len(keep_h), generator=gen)
        keep_i = torch.randperm(inter, generator=gen)[: kept_inter[l]]
        int_z[l, keep_i] = 0.5 + 0.5 * torch.rand(len(keep_i), generator=gen)
    layer_z = torch.ones(n_layers)
    layer_z[list(dropped_layers)] = 0
    return {"head_z": head_z, "intermediate_z": int_z, "layer_z": layer_z}


CASES = {
    # name: (kept heads per layer, kept intermediate per layer, dropped layers)
    "uniform_half": ([6] * 6, [768] * 6, []),
    "one_head_left_and_layer_dropped": ([12, 1, 7, 3, 12, 5], [1536, 10, 700, 1, 300, 1200], [4]),
    "two_layers_dropped": ([2, 4, 6, 8, 10, 12], [64] * 6, [0, 5]),
}


@pytest.fixture(scope="module")
def minilm(minilm_path):
    hf = AutoModel.from_pretrained(minilm_path).eval()
    return MaskedBGEM3Backbone.from_hf_model(hf).eval(), AutoTokenizer.from_pretrained(minilm_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pruned_equals_masked(minilm, case):
    base, tok = minilm
    heads, inter, dropped = CASES[case]
    zs = random_masks(torch.Generator().manual_seed(len(case)), 6, 12, 1536, heads, inter, dropped)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    model = copy.deepcopy(base)
    with torch.no_grad():
        masked = model(batch["input_ids"], batch["attention_mask"], **zs)
        info = model.prune_params(zs)
        pruned = model(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    diff = (masked - pruned).abs().amax(-1)[real].max().item()
    print(f"{case}: max |masked - pruned| on real tokens = {diff:.2e}")
    assert diff < 1e-4
    kept_layers = [l for l in range(6) if l not in dropped]
    assert info["kept_layers"] == kept_layers
    assert model.shape.heads_per_layer == tuple(heads[l] for l in kept_layers)
    assert model.shape.intermediate_per_layer == tuple(inter[l] for l in kept_layers)
    assert [len(h) for h in info["kept_heads"]] == [heads[l] for l in kept_layers]
    assert count_params(model.shape).total == sum(p.numel() for p in model.parameters())


def test_prune_rejects_soft_layer_values_and_bad_shapes(minilm):
    base, _ = minilm
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match=r"zs\['layer_z'\] must be 0 or 1"):
        model.prune_params({"layer_z": torch.tensor([1, 0.7, 1, 1, 1, 1.0])})
    with pytest.raises(ValueError, match=r"zs\['head_z'\]\[0\] has 11 entries, layer 0 has 12 heads"):
        model.prune_params({"head_z": [torch.ones(11)] + [torch.ones(12)] * 5})
    with pytest.raises(ValueError, match=r"zs\['intermediate_z'\] has 5 rows, the backbone has 6 layers"):
        model.prune_params({"intermediate_z": torch.ones(5, 1536)})
    # Nothing was modified by the rejected calls.
    assert model.shape == base.shape


def test_pruning_twice_composes(minilm):
    """A pruned model can be pruned again (e.g. finetune stage exports): masks index the current widths."""
    base, tok = minilm
    model = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(3)
    model.prune_params(random_masks(gen, 6, 12, 1536, [8] * 6, [1000] * 6, [1]))
    zs = random_masks(gen, 5, 8, 1000, [4] * 5, [500] * 5, [2])
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        masked = model(batch["input_ids"], batch["attention_mask"], **zs)
        model.prune_params(zs)
        pruned = model(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (masked - pruned).abs().amax(-1)[real].max() < 1e-4
    assert model.shape.heads_per_layer == (4,) * 4
