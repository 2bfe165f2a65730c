"""Sublayer gates (head_layer / mlp) and the global parameter target of the L0 module.

A removed post-LN sublayer is an exact identity; removed sublayers are counted, pruned and exported exactly;
a global target keeps the parameter budget to within one unit.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from test_reliability import error_line, run_main, snapshot, write_config
from transformers import AutoModel, AutoTokenizer

from bge_pruning.config import load_config
from bge_pruning.export import ExportError, export_pruned_model
from bge_pruning.models.l0_module import LOG_ALPHA_MAX, LOG_ALPHA_MIN, ConfigError, GlobalTarget, L0Module, parse_target
from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone
from bge_pruning.shapes import EncoderShape, count_params, layer_params

BASE = EncoderShape.uniform(n_layers=6, n_heads=12, hidden_size=384, intermediate_size=1536,
                            vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
ALL = ("layer", "head", "intermediate", "head_layer", "mlp")
TEXTS = ["the cat sits on the red car.", "a dog", "people walk near the river and the big house with music.",
         "der hund und die katze."]


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def load(path):
    return (MaskedBGEM3Backbone.from_hf_model(AutoModel.from_pretrained(str(path))).eval(),
            AutoTokenizer.from_pretrained(str(path)))


# ----------------------------------------------------------------------------------------------- accounting
def test_sublayer_parameter_accounting_by_hand():
    d, dh = 32, 8
    # Attention sublayer: 4 heads of 4*32*8 + 3*8 = 1048, plus its output bias and LayerNorm 3*32 = 96.
    assert layer_params(d, dh, 4, 0, ffn=False) == 4 * 1048 + 96
    # 0 heads but kept: bias + LayerNorm remain (not an identity); removed: nothing.
    assert layer_params(d, dh, 0, 0, ffn=False) == 96
    assert layer_params(d, dh, 0, 0, attention=False, ffn=False) == 0
    # FFN sublayer: 10 units of 2*32 + 1 = 65, plus 96.
    assert layer_params(d, dh, 0, 10, attention=False) == 10 * 65 + 96
    assert layer_params(d, dh, 4, 10) == 4 * 1048 + 10 * 65 + 192  # the stock 6d per layer
    shape = EncoderShape(hidden_size=d, head_dim=dh, heads_per_layer=(0, 2, 0), intermediate_per_layer=(10, 0, 0),
                         vocab_size=100, max_position_embeddings=40, type_vocab_size=1,
                         attention_kept_per_layer=(False, True, True), ffn_kept_per_layer=(True, False, False))
    assert count_params(shape).encoder_layers == (650 + 96) + (2 * 1048 + 96) + 96
    assert shape.has_removed_sublayers and not shape.is_uniform
    assert shape.to_dict()["attention_kept_per_layer"] == [False, True, True]
    # Defaults: every sublayer there, and the dict as it always was.
    plain = EncoderShape.uniform(2, 4, 32, 64, 100, 40, 1)
    assert plain.attention_kept_per_layer == (True, True) and "ffn_kept_per_layer" not in plain.to_dict()
    with pytest.raises(ValueError, match="a removed sublayer must have width 0"):
        EncoderShape(hidden_size=d, head_dim=dh, heads_per_layer=(2,), intermediate_per_layer=(10,), vocab_size=100,
                     max_position_embeddings=40, type_vocab_size=1, attention_kept_per_layer=(False,))


# ----------------------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("which", ["xlmr", "minilm", "mpnet"])
def test_removed_sublayer_is_exact_identity(which, tiny_xlmr_path, minilm_path, tiny_mpnet_path):
    model, tok = load({"xlmr": tiny_xlmr_path, "minilm": minilm_path, "mpnet": tiny_mpnet_path}[which])
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    L = len(model.encoder.layer)
    one, zero = torch.ones(L), torch.ones(L)
    zero[1] = 0.0
    with torch.no_grad():
        _, plain = model(ids, mask, output_hidden_states=True)
        # Attention of layer 1 removed: layer 1's output is its FFN block applied to its input, exactly.
        _, hs = model(ids, mask, head_layer_z=zero, mlp_z=one, output_hidden_states=True)
        layer = model.encoder.layer[1]
        x = hs[1]
        ffn_only = layer.output(layer.intermediate(x), x)
        assert torch.equal(hs[2], ffn_only)
        # FFN of layer 1 removed: layer 1's output is its attention output, exactly.
        _, hs = model(ids, mask, head_layer_z=one, mlp_z=zero, output_hidden_states=True)
        attn = layer.attention(hs[1], model.encoder.attention_mask(mask), None)
        assert torch.equal(hs[2], attn)
        # Both removed: layer 1 returns its input bit for bit, and the layers before it are untouched.
        _, hs = model(ids, mask, head_layer_z=zero, mlp_z=zero, output_hidden_states=True)
        assert torch.equal(hs[2], hs[1]) and torch.equal(hs[1], plain[1])
        # Gates of 1 everywhere change nothing.
        out = model(ids, mask, head_layer_z=one, mlp_z=one)
        assert torch.equal(out, plain[-1])
        # A kept attention sublayer with every head masked is NOT an identity: bias + LayerNorm still apply.
        head_z = torch.ones(L, model.shape.heads_per_layer[0])
        head_z[1] = 0
        _, hs = model(ids, mask, head_z=head_z, head_layer_z=one, mlp_z=zero, output_hidden_states=True)
        assert (hs[2] - hs[1]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------- masked == pruned
def random_masks(L, H, I, seed):
    """Soft unit masks (some rows empty) and binary layer / sublayer gates covering every case: a removed
    attention, a removed FFN, both removed, attention kept with 0 heads, a dropped layer."""
    g = torch.Generator().manual_seed(seed)
    head_z = torch.rand(L, H, generator=g) * (torch.rand(L, H, generator=g) > 0.4)
    int_z = torch.rand(L, I, generator=g) * (torch.rand(L, I, generator=g) > 0.5)
    head_z[3] = 0  # attention kept, no head
    att = torch.tensor([0.0, 1, 0, 1] + [1.0] * (L - 4))
    ffn = torch.tensor([1.0, 0, 0, 1] + [1.0] * (L - 4))
    layer = torch.ones(L)
    layer[-1] = 0
    return {"head_z": head_z, "intermediate_z": int_z, "layer_z": layer, "head_layer_z": att, "mlp_z": ffn}


@pytest.mark.parametrize("which", ["xlmr", "minilm", "mpnet"])
def test_masked_equals_pruned_with_removed_sublayers(which, tmp_path, minilm_path):
    from tiny_models import build_tiny_mpnet, build_tiny_xlmr

    path = {"xlmr": lambda: build_tiny_xlmr(tmp_path / "t", n_layers=6), "minilm": lambda: minilm_path,
            "mpnet": lambda: build_tiny_mpnet(tmp_path / "t", n_layers=6)}[which]()
    model, tok = load(path)
    s = model.shape
    L, H, I = s.n_layers, s.heads_per_layer[0], s.intermediate_per_layer[0]
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    for seed in (0, 1):
        zs = random_masks(L, H, I, seed)
        pruned = MaskedBGEM3Backbone.from_hf_model(AutoModel.from_pretrained(str(path))).eval()
        with torch.no_grad():
            ref = model(batch["input_ids"], batch["attention_mask"], **zs)
            kept = pruned.prune_params(zs)
            out = pruned(batch["input_ids"], batch["attention_mask"])
        assert (ref - out).abs()[real].max() < 1e-5
        # Layer 2 (both removed) and the last (layer_z 0) are gone; the flags follow the gates.
        assert kept["kept_layers"] == [0, 1, 3, 4]
        assert kept["attention_kept"] == [False, True, True, True] and kept["ffn_kept"] == [True, False, True, True]
        shape = pruned.shape
        assert shape.heads_per_layer[0] == 0 and shape.heads_per_layer[2] == 0  # removed / kept with no head
        assert shape.intermediate_per_layer[1] == 0
        assert shape.heads_per_layer[3] == int((zs["head_z"][4] != 0).sum())
        assert pruned.encoder.layer[0].attention is None  # weights, bias and LayerNorm gone
        assert count_params(shape).total == numel(pruned)
        assert count_params(shape).encoder_layers == numel(pruned.encoder.layer)  # MPNet: bias table is not a layer's
    # The encoder rebuilt from the pruned shape has the same parameter names (a checkpoint reloads).
    rebuilt = MaskedBGEM3Backbone(pruned.config, shape)
    assert rebuilt.state_dict().keys() == pruned.state_dict().keys()


@pytest.mark.parametrize("which", ["xlmr", "minilm", "mpnet"])
def test_export_with_removed_sublayers_reloads_equal(which, tmp_path, minilm_path):
    from tiny_models import build_tiny_mpnet, build_tiny_xlmr

    path = {"xlmr": lambda: build_tiny_xlmr(tmp_path / "t", n_layers=6), "minilm": lambda: minilm_path,
            "mpnet": lambda: build_tiny_mpnet(tmp_path / "t", n_layers=6)}[which]()
    model, tok = load(path)
    s = model.shape
    zs = random_masks(s.n_layers, s.heads_per_layer[0], s.intermediate_per_layer[0], seed=3)
    out = export_pruned_model(model, tmp_path / "export", tok, zs, pooling="cls" if which == "xlmr" else "mean")
    config = json.loads((out / "config.json").read_text())
    assert config["attention_kept_per_layer"] == [False, True, True, True]
    assert config["ffn_kept_per_layer"] == [True, False, True, True]
    info = json.loads((out / "pruning_info.json").read_text())
    assert info["kept_sublayers"] == {"attention": [False, True, True, True], "ffn": [True, False, True, True]}
    assert info["achieved_shape"]["attention_kept_per_layer"] == [False, True, True, True]
    reloaded, loading = AutoModel.from_pretrained(str(out), output_loading_info=True, trust_remote_code=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"] and not loading["mismatched_keys"]
    assert not any(k.startswith("encoder.layer.0.attention") or k.startswith("encoder.layer.1.output")
                   for k in reloaded.state_dict())
    assert numel(reloaded) == info["params"]["after"]["total"]
    batch = tok(["a short text", "another one that is a good deal longer than the first text"], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        ref = model(batch["input_ids"], batch["attention_mask"], **zs)
        got = reloaded.eval()(**batch).last_hidden_state
    assert (ref - got).abs()[batch["attention_mask"].bool()].max() < 1e-4
    # The export loads back into the masked backbone (a finetune of the pruned model), sublayers and all.
    again = MaskedBGEM3Backbone.from_hf_model(reloaded).eval()
    assert again.shape.attention_kept_per_layer == (False, True, True, True)
    with torch.no_grad():
        assert (again(batch["input_ids"], batch["attention_mask"]) - got).abs().max() < 1e-5
    # Vanilla cannot hold a removed post-LN sublayer: refused, nothing written.
    with pytest.raises(ExportError, match="vanilla export cannot represent a removed attention / FFN sublayer"):
        export_pruned_model(model, tmp_path / "vanilla", tok, zs, vanilla=True)
    assert not (tmp_path / "vanilla").exists()


# ----------------------------------------------------------------------------------------------- global target
def global_l0(modules=ALL, share=0.5, seed=0, **kw):
    target = parse_target({"share": share}, BASE)
    torch.manual_seed(seed)
    l0 = L0Module(BASE, target, pruning_modules=modules, **kw)
    with torch.no_grad():
        for m in l0.masks.values():
            m.z_loga.normal_(1.0, 2.0)
    return l0


def shape_from_pattern(p) -> EncoderShape:
    """The shape a 0/1 pattern of all five gates describes, built by hand."""
    heads, inter, att, ffn = [], [], [], []
    for i in range(BASE.n_layers):
        a, f = bool(p["head_layer"][i]) and bool(p["layer"][i]), bool(p["mlp"][i]) and bool(p["layer"][i])
        if not (a or f):
            continue
        heads.append(int(p["head"][i].sum()) if a else 0)
        inter.append(int(p["intermediate"][i].sum()) if f else 0)
        att.append(a)
        ffn.append(f)
    return EncoderShape(hidden_size=384, head_dim=32, heads_per_layer=heads, intermediate_per_layer=inter,
                        vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
                        attention_kept_per_layer=att, ffn_kept_per_layer=ffn)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_expected_size_equals_count_params_at_binary_masks(seed, monkeypatch):
    l0 = global_l0(seed=seed)
    g = torch.Generator().manual_seed(seed)
    pattern = {"layer": (torch.rand(6, generator=g) > 0.2).float(),
               "head": (torch.rand(6, 12, generator=g) > 0.5).float(),
               "intermediate": (torch.rand(6, 1536, generator=g) > 0.5).float(),
               "head_layer": (torch.rand(6, generator=g) > 0.4).float(),
               "mlp": (torch.rand(6, generator=g) > 0.4).float()}
    for name, mask in l0.masks.items():
        monkeypatch.setattr(mask, "expected_score", lambda p=pattern[name]: p)
    assert l0.expected_num_params().item() == count_params(shape_from_pattern(pattern)).encoder_layers


def test_global_expected_size_at_the_deterministic_masks(monkeypatch):
    """The size the Lagrangian sees at the deterministic masks' 0/1 pattern is what pruning keeps."""
    l0 = global_l0(seed=4)
    zs = l0.deterministic_zs()
    achieved = l0.deterministic_num_params()
    for name, mask in l0.masks.items():
        monkeypatch.setattr(mask, "expected_score", lambda p=(zs[f"{name}_z"] != 0).float(): p)
    assert l0.expected_num_params().item() == achieved


def test_gates_only_global_target():
    """Only whole layers / sublayers pruned: the gates keep their expected number, every unit stays."""
    l0 = global_l0(("layer", "head_layer", "mlp"), seed=2)
    zs = l0.deterministic_zs()
    assert set(zs) == {"layer_z", "head_layer_z", "mlp_z"}
    shape = l0.expected_shape()
    assert all(h == 12 for h, a in zip(shape.heads_per_layer, shape.attention_kept_per_layer) if a)
    assert l0.deterministic_num_params() == count_params(shape_from_pattern(
        {"layer": zs["layer_z"], "head_layer": zs["head_layer_z"], "mlp": zs["mlp_z"],
         "head": torch.ones(6, 12), "intermediate": torch.ones(6, 1536)})).encoder_layers


@pytest.mark.parametrize("modules", [ALL, ("layer", "head", "intermediate"), ("head", "intermediate", "mlp"),
                                     ("layer", "intermediate", "head_layer"), ("layer", "head", "mlp")])
@pytest.mark.parametrize("share", [0.3, 0.5, 0.8])
def test_budget_rule_keeps_the_best_units_to_within_one_unit(modules, share):
    l0 = global_l0(modules, share=share, seed=7)
    zs = l0.deterministic_zs()
    target, achieved = l0.target_model_size, l0.deterministic_num_params()
    # Recomputed here from the rule's statement: gates keep round(sum P) highest-scored; then every unit of a
    # kept sublayer, ranked by P(z != 0) (ties in index order, heads first), while the size fits.
    p = lambda m: 1 - l0.masks[m].cdf_qz(l0.masks[m].z_loga.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX))  # noqa: E731
    gates = {}
    for m in ("layer", "head_layer", "mlp"):
        if m in l0.masks:
            k = round(float(p(m).sum()))
            gates[m] = torch.zeros(6, dtype=torch.bool)
            gates[m][torch.topk(p(m), k).indices] = True
        else:
            gates[m] = torch.ones(6, dtype=torch.bool)
        assert torch.equal(zs.get(f"{m}_z", torch.ones(6)) != 0, gates[m])
    att, ffn = gates["layer"] & gates["head_layer"], gates["layer"] & gates["mlp"]
    units = []
    for m, on, cost in (("head", att, 4 * 384 * 32 + 96), ("intermediate", ffn, 769)):
        if m in l0.masks:
            score = p(m)
            units += [(-float(score[i, j]), len(units), cost, m, i, j)
                      for i in range(6) if on[i] for j in range(score.shape[1])]
    units = [u for _, u in sorted(((u[0], u[1]), u) for u in units)]
    fixed = 1152 * int(att.sum()) + 1152 * int(ffn.sum())
    fixed += 0 if "head" in l0.masks else int(att.sum()) * 12 * (4 * 384 * 32 + 96)
    fixed += 0 if "intermediate" in l0.masks else int(ffn.sum()) * 1536 * 769
    size, kept, next_cost = fixed, set(), None
    for _, _, cost, m, i, j in units:
        if size + cost > target:
            next_cost = cost
            break
        size += cost
        kept.add((m, i, j))
    assert achieved == size
    report = l0.convergence_report()
    if fixed > target:  # the gates' fixed parameters alone exceed the budget: no unit kept, and said so
        assert achieved == fixed and not kept
        assert any("fixed parameters alone exceed the target" in w for w in report["warnings"])
    else:
        assert achieved <= target and (next_cost is None or target - achieved < next_cost)
    for m in ("head", "intermediate"):
        if m in l0.masks:
            got = {(m, int(i), int(j)) for i, j in torch.nonzero(zs[f"{m}_z"])}
            assert got == {k for k in kept if k[0] == m}
    report = report["global"]
    assert report["achieved_n_params"] == achieved and report["achieved_share"] == achieved / l0.prunable_model_size
    assert report["target_n_params"] == target and report["rule"] == "budget"


def test_expected_units_rule_keeps_the_expected_count_per_row():
    l0 = global_l0(eval_target_model=False, seed=5)
    zs = l0.deterministic_zs()
    mask = l0.masks["intermediate"]
    score = 1 - mask.cdf_qz(mask.z_loga.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX))
    att = (zs["layer_z"] != 0) & (zs["head_layer_z"] != 0)
    ffn = (zs["layer_z"] != 0) & (zs["mlp_z"] != 0)
    for i in range(6):
        expected = round(float(score[i].sum())) if ffn[i] else 0
        assert int((zs["intermediate_z"][i] != 0).sum()) == expected
        if not att[i]:
            assert not zs["head_z"][i].any()
    assert l0.convergence_report()["global"]["rule"] == "expected_units"


def test_global_lagrangian_is_one_term_on_the_whole_encoder():
    l0 = global_l0(share=0.5, lagrangian_warmup_steps=0)
    assert set(l0.lambdas) == {"lambda_1", "lambda_2"}
    with torch.no_grad():
        l0.lambdas["lambda_1"].fill_(0.3)
        l0.lambdas["lambda_2"].fill_(0.2)
    loss, metrics = l0.lagrangian_regularization(step=5)
    s = 1 - l0.expected_num_params().item() / l0.prunable_model_size
    t = 1 - l0.target_model_size / l0.prunable_model_size
    assert metrics["expected_sparsity"] == pytest.approx(s) and metrics["target_sparsity"] == pytest.approx(t)
    assert loss.item() == pytest.approx(0.3 * (s - t) + 0.2 * (s - t) ** 2, rel=1e-5)
    loss.backward()
    assert l0.lambdas["lambda_1"].grad.item() == pytest.approx(s - t, abs=1e-6)
    for name in ALL:
        assert l0.masks[name].z_loga.grad.abs().sum() > 0


def test_parse_global_targets():
    full = count_params(BASE).encoder_layers
    assert parse_target({"share": 0.5}, BASE) == GlobalTarget(round(0.5 * full), round(0.5 * full) / full,
                                                             {"share": 0.5})
    assert parse_target({"n_params": 5_000_000, "share": None}, BASE).share == pytest.approx(5e6 / full)


@pytest.mark.parametrize("cfg,msg", [
    ({"share": 1.5}, r"target_model.share must be a number in \(0, 1\]"),
    ({"share": 0}, r"target_model.share must be a number in \(0, 1\]"),
    ({"share": "half"}, r"target_model.share must be a number"),
    ({"share": 1e-6}, r"target_model.share = 1e-06 keeps 11 parameters, fewer than one layer"),
    ({"n_params": 10**9}, r"target_model.n_params = 1,000,000,000 is outside"),
    ({"n_params": 2.5}, r"target_model.n_params must be a whole number"),
    ({"n_params": float("inf")}, r"target_model.n_params must be a whole number"),
    ({"n_params": float("nan")}, r"target_model.n_params must be a whole number"),
    ({"share": float("nan")}, r"target_model.share must be a number in \(0, 1\]"),
    ({"n_params": 5_000_000, "share": 0.5}, r"give one of n_params or share .* not \['n_params', 'share'\]"),
    ({"share": 0.5, "n_layers": 4}, r"not \['share', 'n_layers'\]"),
    ({"share": 0.5, "width": 4}, r"unknown key\(s\) \['width'\]"),
])
def test_bad_global_targets(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_target(cfg, BASE, key="model.l0_module.target_model")


def test_sublayer_gates_need_a_global_target():
    target = parse_target({"n_layers": 4, "n_heads": 6, "intermediate_size": 768}, BASE)
    with pytest.raises(ConfigError, match=r"pruning_modules: \['mlp'\] need a global target"):
        L0Module(BASE, target, pruning_modules=("layer", "head", "mlp"))


def test_global_target_config_replaces_the_required_shape(tmp_path, tiny_xlmr_path):
    path = write_config(tmp_path, tiny_xlmr_path,
                        lambda c: c["model"]["l0_module"].update(target_model={"share": 0.5}))
    cfg = load_config(path)
    assert dict(cfg.model.l0_module.target_model) == {"n_params": None, "share": 0.5}
    # A typo names the valid keys of both kinds.
    with pytest.raises(ConfigError, match="unknown config key 'model.l0_module.target_model.shares'.*n_params.*share"):
        load_config(path, ["model.l0_module.target_model.shares=0.5"])


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"]["l0_module"].update(target_model={"share": 2}),
     "model.l0_module.target_model.share must be a number in (0, 1] (the kept share of encoder-layer parameters), "
     "got 2"),
    (lambda c: c["model"]["l0_module"]["target_model"].update(share=0.5),
     "model.l0_module.target_model: give one of n_params or share (a global target) or n_layers, n_heads and "
     "intermediate_size (a uniform shape), not ['share', 'intermediate_size', 'n_heads', 'n_layers']"),
    (lambda c: c["model"]["l0_module"].update(pruning_modules=["layer", "head_layer"]),
     "l0_module.pruning_modules: ['head_layer'] need a global target (model.l0_module.target_model: {n_params: N} "
     "or {share: s}); a uniform target shape keeps every sublayer"),
    (lambda c: (c["model"]["l0_module"].update(target_model={"share": 0.5}, pruning_modules=list(ALL)),
                c.setdefault("export", {}).update(vanilla=True)),
     "export.vanilla: true cannot represent a removed attention / FFN sublayer (pruning modules ['head_layer', "
     "'mlp']); export without vanilla (modeling_pruned.py) or drop them"),
])
def test_bad_global_configs_stop_before_training(tmp_path, tiny_xlmr_path, capsys, edit, message):
    config = write_config(tmp_path, tiny_xlmr_path, edit)
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    assert error_line(err) == f"error: {message}"
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_short_global_training_exports_the_achieved_size(tmp_path, tiny_xlmr_path, capsys):
    def edit(c):
        c["model"]["l0_module"].update(target_model={"share": 0.5}, pruning_modules=list(ALL),
                                       lagrangian_warmup_steps="20ba")
        c["model"]["heads"] = {"sparse": False, "colbert": False}
        c["loss"].update(sparse=0.0, colbert=0.0, self_distill=0.0, distill_hidden=0.0)
        c["data"]["train"] = c["data"]["train"][:1]
        c["train"].update(max_duration="40ba", eval_interval="40ba", batch_size=8)

    config = write_config(tmp_path, tiny_xlmr_path, edit)
    code, err = run_main(capsys, config)
    assert code == 0, err[-3000:]
    info = json.loads((tmp_path / "model" / "pruning_info.json").read_text())
    g = info["global_target"]
    base = count_params(EncoderShape.from_hf_config(AutoModel.from_pretrained(str(tiny_xlmr_path)).config))
    assert g["given"] == {"share": 0.5} and g["target_n_params"] == round(0.5 * base.encoder_layers)
    # The achieved size is the exported model's, at most the target and within one head of it.
    assert g["achieved_n_params"] == info["params"]["after"]["encoder_layers"]
    assert g["achieved_share"] == pytest.approx(info["kept_encoder_share"])
    per_head = 4 * 32 * 8 + 3 * 8
    assert 0 <= g["target_n_params"] - g["achieved_n_params"] < per_head
    assert info["target_shape"] is None and info["pruning_modules"] == list(ALL)
    assert info["convergence"]["global"]["achieved_n_params"] == g["achieved_n_params"]
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    last = [r for r in rows if "l0/lambda_1" in r][-1]
    assert math.isfinite(last["l0/expected_sparsity"]) and "l0/expected_mlp_sparsity" in last
    reloaded = AutoModel.from_pretrained(str(tmp_path / "model"), trust_remote_code=True)
    assert numel(reloaded) == info["params"]["after"]["total"]


def test_demo_global_config_states_its_target(minilm_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "demo_global.yaml"
    cfg = load_config(path)
    base = EncoderShape.from_hf_config(AutoModel.from_pretrained(str(minilm_path)).config)
    target = parse_target(dict(cfg.model.l0_module.target_model), base)
    assert isinstance(target, GlobalTarget) and target.n_params == count_params(base).encoder_layers // 2
    text = path.read_text()
    assert f"{target.n_params:,}" in text and f"{count_params(base).encoder_layers:,}" in text
    assert list(cfg.model.l0_module.pruning_modules) == list(ALL)
