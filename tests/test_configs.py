"""The shipped configs: valid keys, exact parameter counts in their comments, names that tell the truth."""
import re
from pathlib import Path

import pytest
from transformers import AutoConfig

from bge_pruning.config import load_config
from bge_pruning.models.loading import resolve_model_path
from bge_pruning.shapes import EncoderShape, count_params

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BGE_M3 = EncoderShape.uniform(n_layers=24, n_heads=16, hidden_size=1024, intermediate_size=4096,
                              vocab_size=250002, max_position_embeddings=8194, type_vocab_size=1)


def numbers(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d{1,3}(?:,\d{3})+", text)]


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_validates(path):
    cfg = load_config(path)
    assert cfg.model.name_or_path


@pytest.mark.parametrize("pct", [75, 60, 50])
def test_bge_m3_targets_state_exact_counts(pct):
    path = CONFIGS / f"target_{pct}pct.yaml"
    cfg = load_config(path)
    t = cfg.model.l0_module.target_model
    target = BGE_M3.with_target(t.n_layers, t.n_heads, t.intermediate_size)
    base_c, target_c = count_params(BGE_M3), count_params(target)
    share = target_c.encoder_layers / base_c.encoder_layers
    assert abs(100 * share - pct) <= 2, f"{path.name}: keeps {100 * share:.2f}% of encoder-layer params"
    comment = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    stated = numbers(comment)
    assert [base_c.encoder_layers, base_c.total, target_c.encoder_layers, target_c.total] == stated[:4]
    assert base_c.total == 567_754_752  # BGE-M3's published size: 568M


def test_minilm_configs_are_half_of_minilm():
    base = EncoderShape.from_hf_config(AutoConfig.from_pretrained(resolve_model_path("embedded:all-MiniLM-L6-v2")))
    for name in ("demo.yaml", "stsb_minilm.yaml"):
        cfg = load_config(CONFIGS / name)
        t = cfg.model.l0_module.target_model
        target = base.with_target(t.n_layers, t.n_heads, t.intermediate_size)
        assert count_params(target).encoder_layers / count_params(base).encoder_layers == pytest.approx(0.5, abs=0.02)
        text = (CONFIGS / name).read_text()
        assert f"{count_params(target).encoder_layers:,}" in text and f"{count_params(target).total:,}" in text
