"""L0 module: LLM-Shearing's hard-concrete math, exact target shapes, expected size = count_params."""
import math

import pytest
import torch

from bge_pruning.models.l0_module import TEMPERATURE, ConfigError, L0Module, Mask, TargetShape, parse_target
from bge_pruning.shapes import EncoderShape, count_params

BASE = EncoderShape.uniform(n_layers=6, n_heads=12, hidden_size=384, intermediate_size=1536,
                            vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
TARGET = TargetShape(n_layers=4, n_heads=6, intermediate_size=768)


def make(**kw):
    torch.manual_seed(0)
    return L0Module(BASE, TARGET, lagrangian_warmup_steps=kw.pop("warmup", 100), **kw)


def test_mask_init_and_constraints():
    l0 = make()
    z = l0.masks["head"].z_loga
    assert z.shape == (6, 12)
    assert abs(z.mean().item() - 5.0) < 0.01 and z.std().item() < 0.05
    l0.constrain_parameters()
    assert z.max().item() <= math.log(100) + 1e-6
    # Expected keep-probability of a gate at log-alpha = ln(100): 1 - sigmoid(logit(1/12) * 2/3 - ln 100).
    expected = 1 - 1 / (1 + math.exp(-(math.log(1 / 11) * TEMPERATURE - math.log(100))))
    assert torch.allclose(l0.masks["head"].expected_score(), torch.full((6, 12), expected), atol=1e-6)


def test_sample_z_is_in_unit_interval_and_follows_log_alpha():
    m = Mask("head", (4, 1000), target_mask_size=2)
    with torch.no_grad():
        m.z_loga[:2] = 4.0
        m.z_loga[2:] = -4.0
    z = m.sample_z()
    assert z.min() >= 0 and z.max() <= 1
    assert (z[:2] == 1).float().mean() > 0.9  # open gates are mostly exactly 1 (the stretch)
    assert (z[2:] == 0).float().mean() > 0.9


def test_deterministic_z_keeps_exactly_target_per_row():
    l0 = make()
    with torch.no_grad():
        for m in l0.masks.values():
            m.z_loga.normal_(0, 2)
    l0.eval()
    zs = l0()
    assert ((zs["head_z"] != 0).sum(-1) == 6).all()
    assert ((zs["intermediate_z"] != 0).sum(-1) == 768).all()
    assert set(zs["layer_z"].tolist()) == {0.0, 1.0} and zs["layer_z"].sum() == 4
    # Kept units are the ones with the largest log-alpha, with LLM-Shearing's soft value.
    row = l0.masks["head"].z_loga[0]
    kept = torch.topk(row, 6).indices
    assert torch.allclose(zs["head_z"][0, kept], torch.sigmoid(row[kept] / TEMPERATURE * 0.8))
    assert l0.expected_shape() == BASE.with_target(4, 6, 768)


def test_expected_num_params_uses_count_params(monkeypatch):
    """With 0/1 keep-probabilities in the target pattern, the expected size is exactly the target's count."""
    l0 = make()
    patterns = {"layer": torch.tensor([1, 0, 1, 1, 0, 1.0]),
                "head": torch.cat([torch.ones(6, 6), torch.zeros(6, 6)], 1),
                "intermediate": torch.cat([torch.ones(6, 768), torch.zeros(6, 768)], 1)}
    for name, mask in l0.masks.items():
        monkeypatch.setattr(mask, "expected_score", lambda p=patterns[name]: p)
    assert l0.expected_num_params().item() == count_params(BASE.with_target(4, 6, 768)).encoder_layers
    assert l0.target_model_size == count_params(BASE.with_target(4, 6, 768)).encoder_layers
    assert l0.prunable_model_size == count_params(BASE).encoder_layers
    assert l0.target_sparsity == pytest.approx(1 - l0.target_model_size / l0.prunable_model_size)


def test_target_sparsity_warmup():
    l0 = make(warmup=100, start_sparsity=0.0)
    full = l0.masks["head"].target_sparsity
    assert full == pytest.approx(0.5)
    assert l0.get_target_sparsity(0, full) == 0.0
    assert l0.get_target_sparsity(50, full) == pytest.approx(0.25)
    assert l0.get_target_sparsity(500, full) == pytest.approx(0.5)


def test_lagrangian_gradients_have_the_right_signs():
    """d loss / d lambda_1 = (expected - target); gradient ascent on lambda pushes toward the target."""
    l0 = make(warmup=0)
    with torch.no_grad():
        for name, value in l0.lambdas.items():
            value.fill_(0.1)
    loss, metrics = l0.lagrangian_regularization(step=10)
    loss.backward()
    for name in ("layer", "head", "intermediate"):
        gap = metrics[f"expected_{name}_sparsity"] - metrics[f"target_{name}_sparsity"]
        assert gap < 0  # at init almost nothing is pruned
        assert l0.lambdas[f"lambda_1_{name}"].grad.item() == pytest.approx(gap, abs=1e-6)
        # Ascent then makes lambda_1 negative, and descent on lambda_1 * (s - t) raises s: the push toward t.
        assert l0.masks[name].z_loga.grad is not None and l0.masks[name].z_loga.grad.abs().sum() > 0
    assert metrics["expected_sparsity"] == pytest.approx(1 - metrics["expected_num_params"] / l0.prunable_model_size)


@pytest.mark.parametrize("cfg,msg", [
    ({"n_layers": 8, "n_heads": 6, "intermediate_size": 768}, r"n_layers = 8 is outside 1..6"),
    ({"n_layers": 4, "n_heads": 6.5, "intermediate_size": 768}, r"n_heads must be a whole number"),
    ({"n_layers": 4, "n_heads": 6}, r"intermediate_size is required"),
    ({"n_layers": 4, "n_heads": 6, "intermediate_size": 768, "hidden": 3}, r"unknown key\(s\) \['hidden'\]"),
    ({"n_layers": 4, "n_heads": "six", "intermediate_size": 768}, r"n_heads must be a whole number"),
    (None, r"target_model is required"),
])
def test_parse_target_errors(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_target(cfg, BASE, key="model.l0_module.target_model")


def test_parse_target_accepts_whole_floats():
    assert parse_target({"n_layers": 4.0, "n_heads": 6, "intermediate_size": 768}, BASE) == TARGET


def test_deterministic_masks_read_clamped_log_alphas():
    """An optimizer step can leave log-alphas past the clamp until the next forward: the deterministic soft
    value must be the clamped one (sigmoid(ln 100 / T * 0.8)), not the raw one."""
    l0 = make()
    mask = l0.masks["head"]
    with torch.no_grad():
        mask.z_loga.fill_(4.76)  # past ln 100 = 4.605
        mask.z_loga[:, :6] = -4.76  # past ln 0.01
    z = mask.deterministic_z()
    top = 1 / (1 + math.exp(-math.log(100) / TEMPERATURE * 0.8))
    assert torch.allclose(z[:, 6:], torch.full((6, 6), top), atol=1e-6)
    assert (z[:, :6] == 0).all()
    assert mask.z_loga.max().item() == pytest.approx(4.76)  # reading does not change the parameter


def test_convergence_report_flags_gap_and_dead_units():
    l0 = make()
    # Fresh gates are all open: expected sparsity ~0 against targets of 1/3 (layers), 1/2 (heads, FFN).
    report = l0.convergence_report()
    assert not report["converged"]
    assert report["modules"]["head"]["gap"] == pytest.approx(0.5, abs=0.01)
    assert report["modules"]["layer"]["gap"] == pytest.approx(1 / 3, abs=0.01)
    assert any("head masks: expected sparsity" in w for w in report["warnings"])
    # Put the gates where the target is: 6 of 12 heads open, the rest closed -> gap ~0 (the clamp keeps a
    # closed gate's keep-probability at 0.047, so the expected sparsity is 0.5 - 0.5 * 0.047).
    with torch.no_grad():
        for name, keep in (("layer", 4), ("head", 6), ("intermediate", 768)):
            z = l0.masks[name].z_loga
            z.fill_(math.log(100))
            z[..., keep:] = math.log(0.01)
    report = l0.convergence_report()
    for name in ("layer", "head", "intermediate"):
        assert report["modules"][name]["gap"] < 0.05, report
    assert report["converged"] and report["modules"]["head"]["dead_share"] == 0.0
    # Half of the kept FFN units barely open: deterministic value sigmoid(-2 / T * 0.8) = 0.083 is not dead,
    # sigmoid(-4 / T * 0.8) = 0.008 is.
    with torch.no_grad():
        l0.masks["intermediate"].z_loga[:, :384] = -4.0 + torch.linspace(0, 0.01, 384)
    report = l0.convergence_report()
    assert report["modules"]["intermediate"]["dead_share"] == pytest.approx(0.5)
    assert any("below 0.05" in w for w in report["warnings"])
