"""Reliability: a killed run resumes exactly, and every bad input stops early with a message naming the place.

The resume test is a real ``SIGKILL`` of ``python train.py`` mid-run. Everything else goes through
``train.main(argv)`` in-process (exit code + the ``error:`` line on stderr) and checks that nothing was lost or
created: no export directory, no checkpoint overwritten, no half-written files.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import tiny_config

import train as train_script
from bge_pruning.config import load_config
from bge_pruning.models.l0_module import ConfigError, TargetShape, parse_target
from bge_pruning.shapes import EncoderShape
from bge_pruning.training.callbacks import NonFiniteLossError, NonFiniteLossGuard
from bge_pruning.training.checkpoint import load_composer_model

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict:
    # One thread per process: the reference and the killed run share the 2 cores, and a fixed thread count keeps
    # CPU float reductions identical from run to run (the resume comparison is bitwise).
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def write_config(folder: Path, tiny_xlmr_path: Path, edit=None, **train) -> Path:
    """The tiny XLM-R config of test_training (no distillation, for speed), edited by ``edit(cfg_dict)``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = tiny_config(folder, tiny_xlmr_path, **train)
    cfg = yaml.safe_load(path.read_text())
    cfg["loss"].update(distill_embedding=0.0, distill_similarity=0.0)
    cfg["train"]["device"] = "cpu"
    if edit is not None:
        edit(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``folder`` (what a failed run must leave as it was)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_main(capsys, config: Path, *overrides: str) -> tuple[int, str]:
    code = train_script.main([str(config), *overrides])
    return code, capsys.readouterr().err


def error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------------------------- resume

RESUME_STEPS = 60


def resume_config(folder: Path, tiny_xlmr_path: Path) -> Path:
    def edit(cfg):
        cfg["run_name"] = "resume"
        cfg["loss"].update(colbert=0.0, self_distill=0.0)  # the ColBERT head gets no gradient: no optimizer state
        cfg["data"]["eval"] = {"sts": {"source": cfg["data"]["train"][0]["source"], "max_examples": 32}}
        cfg["train"].update(eval_interval="30ba")  # evaluation between checkpoints draws from the torch RNG

    return write_config(folder, tiny_xlmr_path, edit, batch_size=8, max_duration=f"{RESUME_STEPS}ba",
                        save_interval="20ba", autoresume=True, warmup="5ba")


def latest_batch(save_folder: Path) -> int:
    link = save_folder / "latest-rank0.pt"
    if not link.is_symlink():
        return 0
    return int(os.readlink(link).split("-ba")[1].split("-")[0])


def losses_by_step(log: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [(r["step"], r["loss/train/total"]) for r in rows if "loss/train/total" in r]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, tiny_xlmr_path):
    """SIGKILL after the step-40 checkpoint, rerun the same command: the result equals an uninterrupted run.

    Tolerance: exact (bitwise). Both runs are CPU processes with the same thread count, Composer restores the
    model, the optimizer (three groups, Adam moments), the scheduler, the clock (which drives the L0 warmup
    through PruningCallback) and the torch/numpy/python RNG states (the masks' hard-concrete noise), and
    fast-forwards our map-style dataset of whole batches (SequentialSampler) to batch 41, so every float
    operation after the resume is the one the uninterrupted run did.
    """
    cmd = [sys.executable, "train.py"]
    ref_cfg = resume_config(tmp_path / "ref", tiny_xlmr_path)
    cfg = resume_config(tmp_path / "run", tiny_xlmr_path)
    ckpt = tmp_path / "run" / "ckpt"
    env = subprocess_env()
    ref = subprocess.Popen(cmd + [str(ref_cfg)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    victim = subprocess.Popen(cmd + [str(cfg)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_batch(ckpt) < 40 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = sorted(p.name for p in ckpt.glob("ep*-ba*-rank0.pt"))
    assert killed_at == ["ep0-ba20-rank0.pt", "ep0-ba40-rank0.pt"], killed_at
    assert not (tmp_path / "run" / "model").exists()
    kept = {name: (ckpt / name).stat().st_mtime_ns for name in killed_at}
    logged_before = [s for s, _ in losses_by_step(tmp_path / "run" / "log.jsonl")]
    assert max(logged_before) >= 39  # the killed run had logged up to the checkpoint (maybe a step beyond)
    # A kill while a checkpoint is being written leaves a partial file newer than the latest link.
    (ckpt / "ep0-ba60-rank0.pt").write_bytes(b"partial write")

    again = subprocess.run(cmd + [str(cfg)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"run 'resume': {RESUME_STEPS} steps (resumed from step 40)" in again.stdout
    assert (ckpt / "interrupted_saves" / "ep0-ba60-rank0.pt").read_bytes() == b"partial write"
    assert {name: (ckpt / name).stat().st_mtime_ns for name in killed_at} == kept  # not rewritten
    ref_out, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err[-3000:]

    final = ckpt / f"ep0-ba{RESUME_STEPS}-rank0.pt"
    ref_final = tmp_path / "ref" / "ckpt" / final.name
    model, ref_model = load_composer_model(final), load_composer_model(ref_final)
    assert model.trained_steps == ref_model.trained_steps == RESUME_STEPS
    zs, ref_zs = model.l0_module.deterministic_zs(), ref_model.l0_module.deterministic_zs()
    assert set(zs) == {"layer_z", "head_z", "intermediate_z"}
    for k in zs:
        torch.testing.assert_close(zs[k], ref_zs[k], rtol=0, atol=0)
    state, ref_state = model.state_dict(), ref_model.state_dict()
    assert state.keys() == ref_state.keys()
    for k in state:  # backbone weights, heads, log-alphas (l0_module.masks.*.z_loga), lambdas
        torch.testing.assert_close(state[k], ref_state[k], rtol=0, atol=0, msg=k)
    # The run moved: the masks are not at their initial values and the multipliers are not 0.
    assert any(v.abs().item() > 0.01 for v in model.l0_module.lambdas.values())

    raw = torch.load(final, map_location="cpu", weights_only=False)["state"]
    ref_raw = torch.load(ref_final, map_location="cpu", weights_only=False)["state"]
    assert raw["timestamp"]["Timestamp"]["batch"] == RESUME_STEPS
    opt, ref_opt = raw["optimizers"]["DecoupledAdamW"], ref_raw["optimizers"]["DecoupledAdamW"]
    groups = [(g["name"], g["lr"], g["initial_lr"]) for g in opt["param_groups"]]
    assert groups == [(g["name"], g["lr"], g["initial_lr"]) for g in ref_opt["param_groups"]]
    assert [(name, init) for name, _, init in groups] == [("model", 1e-4), ("l0_masks", 0.3), ("lagrangian", -0.2)]
    assert opt["state"].keys() == ref_opt["state"].keys()
    assert any("colbert_head" in k for k in opt["state"])  # state even for a parameter without gradients
    # The run record (RunRecord callback) carries the killed process's config forward as an earlier one.
    record, ref_record = raw["callbacks"]["RunRecord"], ref_raw["callbacks"]["RunRecord"]
    assert record["earlier_configs"] == [record["config"]] and ref_record["earlier_configs"] == []
    assert record["config"] == (tmp_path / "run" / "ckpt" / "config.restart-1.yaml").read_text()
    for name, s in opt["state"].items():
        for key, value in s.items():
            torch.testing.assert_close(value, ref_opt["state"][name][key], rtol=0, atol=0, msg=f"{name}.{key}")

    # The data position was restored: the same batch, so the same loss, at every step; each step logged once
    # (the log was cut back to the checkpoint and continued).
    logged, ref_logged = losses_by_step(tmp_path / "run" / "log.jsonl"), losses_by_step(tmp_path / "ref" / "log.jsonl")
    assert [s for s, _ in logged] == list(range(RESUME_STEPS))
    assert logged == ref_logged
    masks = sorted(p.name for p in (ckpt / "masks").glob("zs_s*.pt"))
    assert masks == ["zs_s30.pt", "zs_s60.pt"]
    for name in masks:
        ours, theirs = torch.load(ckpt / "masks" / name), torch.load(tmp_path / "ref" / "ckpt" / "masks" / name)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# ----------------------------------------------------------------------------------------------- config

def test_unknown_key_names_file_line_and_lists_the_valid_keys(tmp_path, tiny_xlmr_path, capsys):
    config = write_config(tmp_path, tiny_xlmr_path, lrr=3e-4)
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if text.strip().startswith("lrr:"))
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    msg = error_line(err)
    assert msg.startswith(f"error: {config}:{line}: unknown config key 'train.lrr' (did you mean 'train.lr'?); "
                          f"valid keys in 'train': ")
    assert "autoresume" in msg and "device_train_microbatch_size" in msg and "lag_lr" in msg
    assert snapshot(tmp_path) == before


def test_missing_required_key_is_named(tmp_path, tiny_xlmr_path, capsys):
    config = write_config(tmp_path, tiny_xlmr_path,
                          lambda c: c["model"]["l0_module"]["target_model"].pop("n_heads"))
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    assert error_line(err) == f"error: {config}: missing required config key(s): model.l0_module.target_model.n_heads"
    assert snapshot(tmp_path) == before


def set_target(**target):
    return lambda c: c["model"]["l0_module"]["target_model"].update(target)


@pytest.mark.parametrize("target, message", [
    ({"n_layers": 6}, "model.l0_module.target_model.n_layers = 6 is outside 1..4 (the base model has 4)"),
    ({"intermediate_size": 65}, "model.l0_module.target_model.intermediate_size = 65 is outside 1..64 "
                                "(the base model has 64)"),
    # a wrong type is the typed config's: one line with the file and line, before the model loads
    ({"n_heads": 2.5}, "{config}:{line}: model.l0_module.target_model.n_heads must be an integer, got 2.5"),
    ({"n_heads": 0}, "model.l0_module.target_model.n_heads = 0 is outside 1..4 (the base model has 4)"),
])
def test_impossible_target_shapes_are_refused_before_training(tmp_path, tiny_xlmr_path, capsys, target, message):
    config = write_config(tmp_path, tiny_xlmr_path, set_target(**target))
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if text.strip().startswith("n_heads:"))
    assert error_line(err) == "error: " + message.format(config=config, line=line)
    assert snapshot(tmp_path) == before  # no checkpoint folder, no log, no export


def test_any_head_count_up_to_the_base_is_a_valid_target():
    """Decision: head pruning removes whole heads and keeps head_dim, so the pruned attention width is
    n_heads x head_dim for any n_heads in 1..H; nothing requires n_heads to divide H (BGE-M3: 16 heads of 64,
    a 5-head target is 320 wide). Only whole numbers in 1..H are accepted; the rest are tested above."""
    bge_m3 = EncoderShape.uniform(24, 16, 1024, 4096, 250002, 8194, 1)
    assert parse_target({"n_layers": 12, "n_heads": 5, "intermediate_size": 1000}, bge_m3) == TargetShape(12, 5, 1000)
    assert parse_target({"n_layers": 24, "n_heads": 16, "intermediate_size": 4096}, bge_m3) == TargetShape(24, 16, 4096)
    with pytest.raises(ConfigError, match=r"n_heads = 17 is outside 1\.\.16"):
        parse_target({"n_layers": 12, "n_heads": 17, "intermediate_size": 1000}, bge_m3)
    with pytest.raises(ConfigError, match="whole number"):
        parse_target({"n_layers": 12, "n_heads": "8", "intermediate_size": 1000}, bge_m3)


def test_a_head_count_that_does_not_divide_the_base_trains_to_that_shape(tmp_path, tiny_xlmr_path):
    from bge_pruning.models.composer_bge_m3 import build_model

    cfg = load_config(write_config(tmp_path, tiny_xlmr_path, set_target(n_heads=3)))
    model = build_model(cfg, with_teacher=False)
    l0 = model.l0_module
    assert l0.target_shape.heads_per_layer == (3, 3)  # 2 layers kept, 3 of 4 heads each
    assert l0.masks["head"].target_mask_size == 3
    assert (l0.deterministic_zs()["head_z"] != 0).sum(-1).tolist() == [3, 3, 3, 3]


# ----------------------------------------------------------------------------------------------- data

def test_missing_data_file_names_the_key_and_path(tmp_path, tiny_xlmr_path, capsys):
    missing = tmp_path / "nowhere" / "pairs.tsv"
    config = write_config(tmp_path, tiny_xlmr_path,
                          lambda c: c["data"]["train"][0].update(source=str(missing)))
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    assert error_line(err) == f"error: data.train[0].source: file not found: {missing}"
    assert snapshot(tmp_path) == before


def test_malformed_data_row_names_file_and_line(tmp_path, tiny_xlmr_path, capsys):
    config = write_config(tmp_path, tiny_xlmr_path)
    pairs = tmp_path / "pairs.tsv"
    lines = pairs.read_text().splitlines()
    lines[6] = "a dog runs.\ta cat sits.\tabc"
    pairs.write_text("\n".join(lines) + "\n")
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    assert error_line(err) == f"error: {pairs}:7: score 'abc' is not a number"
    assert snapshot(tmp_path) == before


def test_empty_dataset_after_filtering(tmp_path, tiny_xlmr_path, capsys):
    config = write_config(tmp_path, tiny_xlmr_path)
    pairs = tmp_path / "pairs.tsv"
    original = pairs.read_text().splitlines()

    pairs.write_text(original[0] + "\n")  # the header only
    code, err = run_main(capsys, config)
    assert code == 2 and error_line(err) == f"error: no examples in {pairs}"

    code, err = run_main(capsys, config, "data.train=" + json.dumps(
        [{"name": "pairs", "type": "sts", "source": str(pairs), "max_examples": 0}]))
    assert code == 2
    assert error_line(err) == "error: data.train[0].max_examples: must be a positive integer or null, got 0"

    pairs.write_text("\n".join(original[:4]) + "\n")  # 3 pairs: not one batch of 16
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    assert error_line(err) == "error: source 'pairs': 3 example(s), fewer than one batch (batch_size 16)"
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------- model

def test_tokenizer_larger_than_the_model_vocabulary(tmp_path, tiny_xlmr_path, capsys):
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_xlmr_path)
    small = tmp_path / "mismatched"
    config_hf = XLMRobertaConfig.from_pretrained(tiny_xlmr_path)
    config_hf.vocab_size = len(tokenizer) - 20
    XLMRobertaModel(config_hf).save_pretrained(small)
    tokenizer.save_pretrained(small)
    config = write_config(tmp_path / "run", tiny_xlmr_path,
                          lambda c: c["model"].update(name_or_path=str(small), heads={"sparse": False,
                                                                                     "colbert": False}))
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config, "loss.sparse=0", "loss.colbert=0", "loss.self_distill=0")
    assert code == 2
    assert error_line(err) == (f"error: model.name_or_path: the tokenizer has {len(tokenizer)} tokens but the "
                               f"model's vocabulary has {len(tokenizer) - 20}: tokenizer and model do not match")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------- outputs

def test_existing_export_directory_fails_before_training(tmp_path, tiny_xlmr_path, capsys):
    config = write_config(tmp_path, tiny_xlmr_path)
    export = tmp_path / "model"
    export.mkdir()
    (export / "config.json").write_text('{"precious": true}')
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    assert error_line(err).startswith(f"error: export.output_dir: {export} exists and is not empty; choose another "
                                      f"directory or set export.overwrite=true")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "ckpt").exists()  # failed before anything was built


def test_existing_checkpoints_are_never_overwritten(tmp_path, tiny_xlmr_path, capsys):
    config = write_config(tmp_path, tiny_xlmr_path, lambda c: c.update(run_name="first"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "ep0-ba20-rank0.pt").write_bytes(b"an earlier run's checkpoint")
    (ckpt / "config.yaml").write_text("the earlier run's config\n")
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config)
    assert code == 2
    assert error_line(err) == (
        f"error: train.save_folder: {ckpt} already holds 1 checkpoint(s) of a run named 'first' (newest: "
        f"ep0-ba20-rank0.pt); they are not overwritten. Either continue that run with train.autoresume=true, or "
        f"start a new one with another run_name (e.g. run_name=first_2) or train.save_folder.")
    assert snapshot(tmp_path) == before

    # Autoresume without the latest-rank0.pt link cannot tell a complete checkpoint from a partial one.
    code, err = run_main(capsys, config, "train.autoresume=true")
    assert code == 2
    assert error_line(err).startswith(f"error: train.save_folder: {ckpt} holds checkpoints but no valid "
                                      f"latest-rank0.pt link")
    assert f"train.load_path={ckpt / 'ep0-ba20-rank0.pt'}" in err
    assert snapshot(tmp_path) == before

    # Composer keeps no local checkpoint (and no latest link) with save_num_checkpoints_to_keep=0.
    code, err = run_main(capsys, config, "train.autoresume=true", "train.save_num_checkpoints_to_keep=0")
    assert code == 2
    assert error_line(err) == ("error: train.autoresume needs the checkpoints on local disk, but "
                               "train.save_num_checkpoints_to_keep is 0 (keep none): use -1 (keep all) or a number "
                               ">= 1")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------- training

@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_xlmr_path, capsys):
    """lr 1e10 makes the step-1 update explode the weights: the step-2 loss is NaN."""
    config = write_config(tmp_path, tiny_xlmr_path, lr=1e10, warmup="0ba", save_interval="1ba",
                          max_duration="10ba")
    code, err = run_main(capsys, config)
    assert code == 2
    ckpt = tmp_path / "ckpt"
    good = ckpt / "ep0-ba1-rank0.pt"
    msg = error_line(err)
    assert msg.startswith("error: non-finite loss at step 2 (")
    assert "total=nan): training stopped before that step's update; " in msg
    assert f"the last good checkpoint is {good}. Lower train.lr / train.l0_lr / train.lag_lr" in msg
    assert sorted(p.name for p in ckpt.glob("ep*.pt")) == ["ep0-ba1-rank0.pt"]
    assert (ckpt / "latest-rank0.pt").resolve() == good
    model = load_composer_model(good)
    assert model.trained_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (tmp_path / "model").exists()  # nothing exported


def test_non_finite_weights_stop_before_the_checkpoint(tmp_path):
    """An update can overflow although the loss was finite: batch_end (before batch_checkpoint) stops it."""
    model = torch.nn.Linear(2, 2)
    (tmp_path / "ep0-ba6-rank0.pt").write_bytes(b"x")
    (tmp_path / "latest-rank0.pt").symlink_to("ep0-ba6-rank0.pt")
    state = SimpleNamespace(model=model, timestamp=SimpleNamespace(batch=SimpleNamespace(value=7)))
    guard = NonFiniteLossGuard(save_folder=str(tmp_path))
    guard.batch_end(state, None)  # finite: nothing happens
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(NonFiniteLossError) as e:
        guard.batch_end(state, None)
    assert str(e.value).startswith("non-finite weights after the optimizer update of step 7 (bias) although the "
                                   "loss was finite: training stopped before that step's checkpoint; the last good "
                                   f"checkpoint is {tmp_path / 'ep0-ba6-rank0.pt'}.")


def test_non_finite_loss_guard_is_composers_nan_monitor_and_also_catches_inf(tmp_path):
    """Composer's NaNMonitor checks the loss for NaN only and raises a bare RuntimeError; the guard built on it
    also stops at +-inf, names every bad part with its value and the step, and raises the one-line UserError."""
    from composer.callbacks import NaNMonitor

    from bge_pruning.errors import UserError

    guard = NonFiniteLossGuard(save_folder=str(tmp_path))
    assert isinstance(guard, NaNMonitor)

    def state(loss):
        return SimpleNamespace(loss=loss, timestamp=SimpleNamespace(batch=SimpleNamespace(value=4)))

    finite = {"total": torch.tensor(1.5), "cosent": torch.tensor(0.5)}
    guard.after_loss(state(finite), None)  # finite: nothing happens
    NaNMonitor().after_loss(state({"total": torch.tensor(float("inf"))}), None)  # what NaNMonitor alone lets by
    with pytest.raises(NonFiniteLossError) as e:
        guard.after_loss(state({"total": torch.tensor(float("inf")), "cosent": torch.tensor(0.5),
                                "sparse": torch.tensor(float("-inf"))}), None)
    assert isinstance(e.value, UserError)
    assert str(e.value).startswith("non-finite loss at step 5 (total=inf, sparse=-inf): training stopped before "
                                   "that step's update; no checkpoint was written before it")
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 5 \(loss\[1\]=nan\)"):
        guard.after_loss(state([torch.tensor(1.0), torch.tensor(float("nan"))]), None)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 5 \(total=non-finite\)"):
        guard.after_loss(state(torch.tensor([1.0, float("nan")])), None)
    with pytest.raises(TypeError, match="should be a tensor or a sequence of tensors"):  # NaNMonitor's type check
        guard.after_loss(state(1.0), None)


def test_out_of_gpu_memory_suggests_micro_batching(tmp_path, tiny_xlmr_path, capsys, monkeypatch):
    """CUDA OOM cannot happen on CPU: the trainer's fit raises it as it would on a GPU."""
    from bge_pruning.training import run as run_module

    def fit(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")

    monkeypatch.setattr(run_module.Trainer, "fit", fit)
    config = write_config(tmp_path, tiny_xlmr_path)
    code, err = run_main(capsys, config)
    assert code == 2
    msg = error_line(err)
    assert msg.startswith("error: out of GPU memory at step 1 (train.batch_size=16 per device, "
                          "train.device_train_microbatch_size=16). Set train.device_train_microbatch_size to a "
                          "smaller divisor of the batch size, e.g. 8 ")
    assert "or to 'auto' (Composer halves it until a step fits)" in msg
    assert msg.endswith("[CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)]")
    assert "Traceback" not in err
    assert not (tmp_path / "model").exists()


# ----------------------------------------------------------------------------------------------- scale configs

def test_multi_gpu_configs_load_and_use_composer_fsdp_keys():
    from composer.utils.parallelism import FSDPConfig

    ddp = load_config(ROOT / "configs" / "multi_gpu_bge_m3.yaml")
    fsdp = load_config(ROOT / "configs" / "multi_gpu_bge_m3_fsdp.yaml")
    for cfg in (ddp, fsdp):
        assert cfg.model.name_or_path == "BAAI/bge-m3" and cfg.train.precision == "amp_bf16"
        assert dict(cfg.model.l0_module.target_model) == {"n_layers": 17, "n_heads": 12, "intermediate_size": 2816}
        # 8 GPUs x 16 per GPU x 800 steps = the 102,400 examples of the single-GPU 32 x 3200.
        assert 8 * cfg.train.batch_size * int(cfg.train.max_duration.removesuffix("ba")) == 32 * 3200
        assert cfg.train.autoresume and cfg.train.device_train_microbatch_size == 16
    assert ddp.train.fsdp_config is None
    options = dict(fsdp.train.fsdp_config)
    assert options["sharding_strategy"] == "FULL_SHARD" and options["state_dict_type"] == "full"
    assert set(options) <= set(FSDPConfig.__dataclass_fields__)
    FSDPConfig(**options)  # Composer accepts every value


def test_fsdp_runs_refuse_what_they_could_not_finish(tmp_path, tiny_xlmr_path, capsys):
    config = write_config(tmp_path, tiny_xlmr_path)
    before = snapshot(tmp_path)
    code, err = run_main(capsys, config, "train.fsdp_config={sharding_strategy: FULL_SHARD, state_dict_type: sharded}")
    assert code == 2
    assert error_line(err) == ("error: train.fsdp_config.state_dict_type: only 'full' is supported (got 'sharded'): "
                               "the export and load_composer_model read whole checkpoints")
    code, err = run_main(capsys, config, "train.fsdp_config={sharding_strategy: FULL_SHARD}",
                         "report.before_after=true")
    assert code == 2
    assert error_line(err).startswith("error: report.before_after is not available with train.fsdp_config")
    assert snapshot(tmp_path) == before


def test_fsdp_shards_encoder_layers_but_not_the_l0_module(tmp_path, tiny_xlmr_path):
    """What Composer's FSDP makes of prepare_fsdp's marks: its own wrap policy and activation-checkpointing check
    run over every module of the model. The FSDP units inside the backbone are exactly the encoder layers (as many
    as the base config has), no L0 parameter is in any unit, and every other parameter is."""
    from composer.distributed.activation_checkpointing import generate_default_check_fn
    from composer.distributed.fsdp2_utils import generate_composer_model_policy
    from transformers import AutoConfig

    from bge_pruning.models.composer_bge_m3 import build_model
    from bge_pruning.training.run import prepare_fsdp

    model = build_model(load_config(write_config(tmp_path, tiny_xlmr_path)), with_teacher=False)
    prepare_fsdp(model)
    # FSDP1's policy is a closure inside prepare_fsdp_module; this is Composer's public one that "mimics FSDP1
    # behavior" (each direct child is a root unit unless marked _fsdp_wrap=False; marked modules decide for
    # themselves). Composer deprecates the _fsdp_wrap attribute in favour of fsdp_wrap_fn and says so.
    with pytest.warns(DeprecationWarning, match="_fsdp_wrap attribute will be removed"):
        policy = generate_composer_model_policy(model)
    units = set(policy._run_policy(model, set(), {}))  # what torch's FSDP would wrap, module by module
    layers = list(model.backbone.encoder.layer)
    assert len(layers) == AutoConfig.from_pretrained(tiny_xlmr_path).num_hidden_layers == 4
    inside_backbone = {m for m in units if m is not model.backbone and any(m is b for b in model.backbone.modules())}
    assert inside_backbone == set(layers)
    l0_modules = set(model.l0_module.modules())
    assert not units & l0_modules
    owned = {id(p) for unit in units for p in unit.parameters()}
    l0_params = {id(p) for p in model.l0_module.parameters()}
    assert l0_params and not owned & l0_params
    assert {id(p) for p in model.parameters()} - l0_params <= owned
    check = generate_default_check_fn(model)
    assert {m for m in model.modules() if check(m)} == set(layers)


@pytest.mark.slow
def test_a_run_stopped_after_its_last_checkpoint_resumes_to_the_export(tmp_path, tiny_xlmr_path, capsys, caplog):
    """Killed during the export (its last checkpoint is the final step): the same command with autoresume does not
    train again (Composer's fit() would refuse, max_duration reached) and writes the export of those weights."""
    import shutil

    from safetensors.torch import load_file

    config = write_config(tmp_path, tiny_xlmr_path, lambda c: c.update(run_name="ends", report={"before_after": True}),
                          max_duration="6ba", save_interval="6ba", autoresume=True, warmup="1ba")
    code, err = run_main(capsys, config)
    assert code == 0, err[-2000:]
    summary_file = tmp_path / "summary.json"
    assert "before_after" in json.loads(summary_file.read_text())
    export = Path(load_config(config).export.output_dir)
    first = load_file(export / "model.safetensors")
    info = json.loads((export / "pruning_info.json").read_text())
    # The run's before/after figures are recorded in the export: pruning_info.json and the model card.
    numbers = json.loads(summary_file.read_text())["before_after"]
    assert info["evaluation"]["rows"][0]["metric"] == "spearman"
    assert info["evaluation"]["rows"][0]["pruned"] == numbers["pruned"]["sts"]["spearman"]
    assert "## Evaluation" in (export / "README.md").read_text()
    shutil.rmtree(export)  # as if the process died while exporting

    caplog.clear()
    code, err = run_main(capsys, config)
    assert code == 0, err[-2000:]
    assert any("resumed at the end of training (step 6 of 6ba)" in r.getMessage() for r in caplog.records)
    # The weights in memory are the trained ones: no "before" column computed from them.
    assert any("before/after table is skipped" in r.getMessage() for r in caplog.records)
    assert "before_after" not in json.loads(summary_file.read_text())
    again = load_file(export / "model.safetensors")
    assert again.keys() == first.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert json.loads((export / "pruning_info.json").read_text())["training_steps"] == info["training_steps"] == 6
