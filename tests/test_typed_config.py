"""The typed run config (bge_pruning.config): a wrong type or range is one line naming the key, where it was
given, what it must be and the value, before anything loads; ``${run_name}``; ``train.py --print-config``."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from transformers import AutoConfig

from bge_pruning.config import fill_run_name, load_config
from bge_pruning.models.l0_module import ConfigError
from bge_pruning.models.loading import resolve_model_path
from bge_pruning.shapes import EncoderShape, count_params

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
DURATION = "a Composer duration > 0 such as 500ba, 2ep or 10000sp"


@pytest.mark.parametrize("override, message", [
    ("train.lr=fast", "train.lr must be a float >= 0, got 'fast'"),
    ("train.lr=-1e-4", "train.lr must be a float >= 0, got -0.0001"),
    ("train.batch_size=0", "train.batch_size must be an integer > 0, got 0"),
    ("train.batch_size=-4", "train.batch_size must be an integer > 0, got -4"),
    ("train.batch_size=2.5", "train.batch_size must be an integer > 0, got 2.5"),
    ("train.max_duration=-5", f"train.max_duration must be {DURATION}, got -5"),
    ("train.max_duration=0ba", f"train.max_duration must be {DURATION}, got '0ba'"),
    ("train.max_duration=abc", f"train.max_duration must be {DURATION}, got 'abc'"),
    ("train.max_duration=0.5dur", f"train.max_duration must be {DURATION}, got '0.5dur'"),
    ("train.warmup=5", "train.warmup must be a Composer duration >= 0 such as 0.1dur or 100ba, got '5'"),
    ("train.precision=bf16", "train.precision must be one of fp32, amp_bf16, amp_fp16, got 'bf16'"),
    ("train.precision=fp64", "train.precision must be one of fp32, amp_bf16, amp_fp16, got 'fp64'"),
    ("train=5", "train must be a mapping of keys (the train.* section), got 5"),
    ("model.l0_module.target_model=null",
     "model.l0_module.target_model must be a mapping of keys (the model.l0_module.target_model.* section), got None"),
    ("model.name_or_path=", "model.name_or_path must be a non-empty string, got None"),
    ("model.name_or_path=' '", "model.name_or_path must be a non-empty string, got ' '"),
    ("model.l0_module.start_sparsity=1.5", "model.l0_module.start_sparsity must be a float in [0, 1), got 1.5"),
    ("model.l0_module.target_model.n_heads=six",
     "model.l0_module.target_model.n_heads must be an integer, got 'six'"),
    ("train.betas=[0.9, 2]", "train.betas must be two floats in [0, 1), got [0.9, 2.0]"),
    ("train.eps=0", "train.eps must be a float > 0, got 0.0"),
    ("train.device_train_microbatch_size=0",
     "train.device_train_microbatch_size must be an integer > 0 or 'auto' (GPU) or null, got 0"),
    ("train.autoresume=maybe", "train.autoresume must be true or false, got 'maybe'"),
    ("loss.cosent=-1", "loss.cosent must be a float >= 0, got -1.0"),
    ("data.eval_batch_size=0", "data.eval_batch_size must be an integer > 0, got 0"),
    ("stage=train", "stage must be one of prune, finetune, got 'train'"),
    ("loggers=5", "loggers must be a mapping or null, got 5"),
    ("export.output_dir=${nope}",
     "export.output_dir: cannot resolve an interpolation: Interpolation key 'nope' not found"),
])
def test_a_bad_override_is_one_line_naming_it(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert str(err.value) == f"override {override}: {message}"


def test_a_bad_value_in_the_file_names_its_line(tmp_path):
    text = DEMO.read_text().replace("  lr: 5.0e-5\n", "  lr: fast\n").replace("  batch_size: 16\n",
                                                                             "  batch_size: -4\n")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = text.splitlines().index("  lr: fast") + 1
    with pytest.raises(ConfigError) as err:  # the merge meets batch_size first (file order): fix one, see the next
        load_config(path, ["train.batch_size=8"])
    assert str(err.value) == f"{path}:{line}: train.lr must be a float >= 0, got 'fast'"
    path.write_text(text.replace("  lr: fast\n", "  lr: 5.0e-5\n"))
    bs_line = text.splitlines().index("  batch_size: -4") + 1
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:{bs_line}: train.batch_size must be an integer > 0, got -4"
    assert load_config(path, ["train.batch_size=8"]).train.batch_size == 8  # the override wins, and is valid
    path.write_text("model:\n  name_or_path: x\ntrain: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:3: train must be a mapping of keys (the train.* section), got 5"


def test_types_are_converted_and_kept():
    cfg = load_config(DEMO, ["train.lr=1e-4", "train.batch_size=8", "train.max_duration=3", "loss.cosent=2",
                             "train.device_train_microbatch_size=auto"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # YAML 1.1 would read '1e-4' as a string
    assert cfg.train.max_duration == 3  # Composer reads a plain integer as epochs
    assert cfg.loss.cosent == 2.0 and isinstance(cfg.loss.cosent, float)
    assert cfg.train.device_train_microbatch_size == "auto"
    with pytest.raises(Exception):  # the returned config keeps checking types (struct, typed)
        cfg.train.batch_size = "many"
    with pytest.raises(Exception):
        cfg.train.new_key = 1


def test_run_name_interpolation(tmp_path):
    path = tmp_path / "named.yaml"
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.pop("run_name")
    cfg["export"] = {"output_dir": "experiments/${run_name}/hf"}
    cfg["train"]["log_file"] = "logs/{run_name}.jsonl"  # the older placeholder still works, filled later
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_config(path)
    assert loaded.run_name == "named" and loaded.export.output_dir == "experiments/named/hf"
    assert load_config(path, ["run_name=other"]).export.output_dir == "experiments/other/hf"
    assert fill_run_name(loaded.train.log_file, loaded.run_name) == "logs/named.jsonl"
    # A finetune of experiments/<run>/model is named <run>_finetune, and the interpolation sees that name.
    ft = load_config(path, ["stage=finetune", "model.name_or_path=experiments/base60/model"])
    assert ft.run_name == "base60_finetune" and ft.export.output_dir == "experiments/base60_finetune/hf"


def test_global_and_mixed_targets_keep_their_keys(tmp_path):
    path = tmp_path / "global.yaml"
    path.write_text(DEMO.read_text().replace("target_model: {n_layers: 4, n_heads: 9, intermediate_size: 1152}",
                                             "target_model: {share: 0.5}"))
    assert dict(load_config(path).model.l0_module.target_model) == {"n_params": None, "share": 0.5}
    with pytest.raises(ConfigError) as err:
        load_config(path, ["model.l0_module.target_model.n_params=1.5"])
    assert str(err.value) == ("override model.l0_module.target_model.n_params=1.5: model.l0_module.target_model."
                              "n_params must be an integer or null, got 1.5")
    # Both kinds at once load with every key, so that parse_target names the mix (as it did before typing).
    mixed = load_config(DEMO, ["model.l0_module.target_model.share=0.5"]).model.l0_module.target_model
    assert dict(mixed) == {"n_layers": 4, "n_heads": 9, "intermediate_size": 1152, "n_params": None, "share": 0.5}


def run_train(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_train_py_stops_at_a_bad_value_before_the_model_loads(tmp_path):
    proc = run_train(DEMO, "train.batch_size=0", f"train.save_folder={tmp_path}/ckpt",
                     f"export.output_dir={tmp_path}/model")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: override train.batch_size=0: train.batch_size must be an integer > 0, "
                                        "got 0"]
    assert proc.stdout == ""  # no model, data or trainer output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_print_config_shows_the_resolved_config_shapes_and_sizes(tmp_path):
    proc = run_train(DEMO, "--print-config", "run_name=shown", "export.output_dir=out/${run_name}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = yaml.safe_load(proc.stdout)  # the report lines are YAML comments: the output loads as a config
    expected = load_config(DEMO, ["run_name=shown", "export.output_dir=out/shown"])
    assert printed["train"]["save_folder"] == "experiments/shown/checkpoints"  # {run_name} shown filled in
    expected = OmegaConf.to_container(expected)
    expected["train"].update(save_folder="experiments/shown/checkpoints", log_file="experiments/shown/train_log.jsonl")
    assert printed == expected
    assert printed["export"]["output_dir"] == "out/shown" and printed["train"]["lr"] == 5e-5
    base = EncoderShape.from_hf_config(AutoConfig.from_pretrained(resolve_model_path("embedded:all-MiniLM-L6-v2")))
    b, t = count_params(base), count_params(base.with_target(4, 9, 1152))
    # The README's demo table: 10,646,784 -> 5,325,696 encoder-layer and 22,713,216 -> 17,392,128 total parameters.
    assert (b.encoder_layers, t.encoder_layers, b.total, t.total) == (10_646_784, 5_325_696, 22_713_216, 17_392_128)
    report = [line for line in proc.stdout.splitlines() if line.startswith("# ")]
    assert "# shape: 6L/12H/1536I -> 4L/9H/1152I" in report
    assert any(line.split()[1:] == ["encoder-layer", "params", "10,646,784", "5,325,696", "50.0%"] for line in report)
    assert any(line.split()[1:] == ["total", "params", "22,713,216", "17,392,128", "76.6%"] for line in report)
    assert f"# export (float32): model.safetensors about {4 * t.total / 1e6:,.1f} MB" in report
    # A Composer checkpoint of this run: float32 weights of the base plus two Adam moments per trained weight
    # (the frozen pooler has none). Measured: 273,419,065 bytes for a MiniLM 50% prune checkpoint.
    expected = (12 * b.total - 8 * b.pooler) / 1e6
    assert ("# training checkpoint (float32 weights + Adam moments): "
            f"about {expected:,.1f} MB each, keeping all") in report
    assert "Loading" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_print_config_of_a_global_target(tmp_path):
    path = tmp_path / "global.yaml"
    path.write_text(DEMO.read_text().replace("target_model: {n_layers: 4, n_heads: 9, intermediate_size: 1152}",
                                             "target_model: {share: 0.5}"))
    proc = run_train(path, "--print-config", "export.dtype=float16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    half = round(0.5 * 10_646_784)
    assert f"# shape: 6L/12H/1536I -> global target {half:,} encoder-layer params" in proc.stdout
    assert f"# export (float16): model.safetensors about {2 * (22_713_216 - 10_646_784 + half) / 1e6:,.1f} MB" \
        in proc.stdout
