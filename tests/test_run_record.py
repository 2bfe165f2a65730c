"""Self-contained checkpoints: the run record (RunRecord callback state) rebuilds a checkpoint moved alone.

A tiny XLM-R prune run is trained once (module fixture); its base model directory is then moved away, so nothing
but the checkpoint file can supply the architecture, the tokenizer or the base model's metadata.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from bge_pruning.cli.extract import main as extract_main
from bge_pruning.config import load_config
from bge_pruning.errors import CheckpointError
from bge_pruning.training.checkpoint import RUN_RECORD_KEY, RunRecord, load_composer_model, read_checkpoint

TEXTS = ["a man is playing a guitar", "the cat sits on the mat", "a woman slices an onion"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _without_record(checkpoint: Path, out: Path) -> Path:
    """A copy of ``checkpoint`` as written before the record existed (no RunRecord state)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del saved["state"]["callbacks"][RUN_RECORD_KEY]
    torch.save(saved, out)
    return out


def _embeddings(model_dir: Path) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=True)
    return st.encode(TEXTS, convert_to_tensor=True)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, tiny_xlmr_path):
    """A finished 8-step prune run of a copy of the tiny XLM-R; the copy is moved away afterwards."""
    from bge_pruning.training.run import run

    tmp = tmp_path_factory.mktemp("record_run")
    base = Path(shutil.copytree(tiny_xlmr_path, tmp / "base"))
    cfg = load_config(tiny_config(tmp, base, max_duration="8ba", save_interval="8ba", eval_interval="8ba"),
                      ["run_name=record"])
    summary = run(cfg)
    assert summary["steps"] == 8
    base.rename(tmp / "base_moved")  # from here on the run's model.name_or_path does not exist
    return tmp


@pytest.mark.slow
def test_checkpoint_copied_alone_extracts_the_same_model(pruned_run, tmp_path, capsys):
    """extract_pruned_model.py on the .pt alone in an empty folder (no config.yaml, no base_model/, no base model
    directory) gives the export train.py wrote at the end of the run: same files byte for byte (weights,
    config.json, tokenizer, pruning_info.json) and identical sentence embeddings; so do the record in the run
    folder and, for a checkpoint without a record, the side-car files beside it."""
    run_ckpt = (pruned_run / "ckpt" / "latest-rank0.pt").resolve()
    alone = tmp_path / "empty" / "copied.pt"
    alone.parent.mkdir()
    shutil.copyfile(run_ckpt, alone)
    assert sorted(p.name for p in alone.parent.iterdir()) == ["copied.pt"]

    assert extract_main([str(alone), str(tmp_path / "from_alone")]) == 0
    assert extract_main([str(run_ckpt), str(tmp_path / "from_run_folder")]) == 0
    old_style = _without_record(run_ckpt, pruned_run / "ckpt" / "old-style.pt")  # beside config.yaml, base_model/
    assert extract_main([str(old_style), str(tmp_path / "from_side_cars")]) == 0
    capsys.readouterr()

    trained = _files(pruned_run / "model")  # the export of the live model at the end of training
    assert {"model.safetensors", "config.json", "tokenizer.json", "pruning_info.json", "modeling_pruned.py"} <= set(
        trained)
    reference = load_file(str(pruned_run / "model" / "model.safetensors"))
    embeddings = _embeddings(pruned_run / "model")
    for name in ("from_alone", "from_run_folder", "from_side_cars"):
        out = tmp_path / name
        assert _files(out) == trained, name
        weights = load_file(str(out / "model.safetensors"))
        assert weights.keys() == reference.keys()
        assert all(torch.equal(weights[k], reference[k]) for k in reference), name
        assert torch.equal(_embeddings(out), embeddings), name
    info = json.loads((tmp_path / "from_alone" / "pruning_info.json").read_text())
    assert info["training_steps"] == 8 and info["base_model"] == str(pruned_run / "base")


@pytest.mark.slow
def test_record_contents(pruned_run):
    """The record holds the resolved config, the base model's HF config and the tokenizer files train.py also
    writes to base_model/, and the base model's metadata."""
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    run_ckpt = pruned_run / "ckpt" / "latest-rank0.pt"
    record = read_checkpoint(run_ckpt)["state"]["callbacks"][RUN_RECORD_KEY]  # readable with weights_only=True
    assert OmegaConf.create(record["config"]) == OmegaConf.load(pruned_run / "ckpt" / "config.yaml")
    assert record["earlier_configs"] == []
    base = pruned_run / "base_moved"
    side_car = pruned_run / "ckpt" / "base_model"
    assert record["hf_config"] == json.loads((side_car / "config.json").read_text())
    expected, stored = AutoConfig.from_pretrained(base), AutoConfig.for_model(**record["hf_config"])
    assert type(stored) is type(expected)
    assert {k: v for k, v in stored.to_dict().items() if k not in ("transformers_version", "_name_or_path")} == {
        k: v for k, v in expected.to_dict().items() if k not in ("transformers_version", "_name_or_path")}
    assert record["tokenizer"] == {p.name: p.read_bytes() for p in side_car.iterdir()
                                   if p.name not in ("config.json",)}
    assert record["code"] == {} and record["pruning_info"] is None  # a plain base model: no code to store
    assert record["base_model"] == str(pruned_run / "base") and record["vocab_record"] is None
    # a plain base was pruned once: its export reports no earlier pruning
    info = json.loads((pruned_run / "model" / "pruning_info.json").read_text())
    assert "pruned_by" not in info


def test_run_record_keeps_earlier_configs_on_resume():
    """A resumed process records its own config and carries the earlier processes' configs, oldest first."""
    first = RunRecord({"config": "a: 1\n", "earlier_configs": [], "hf_config": {"x": 1}})
    second = RunRecord({"config": "a: 2\n", "earlier_configs": [], "hf_config": {"x": 1}})
    second.load_state_dict(first.state_dict())
    third = RunRecord({"config": "a: 3\n", "earlier_configs": [], "hf_config": {"x": 1}})
    third.load_state_dict(second.state_dict())
    assert third.state_dict() == {"config": "a: 3\n", "earlier_configs": ["a: 1\n", "a: 2\n"], "hf_config": {"x": 1}}


@pytest.mark.parametrize("edit, found", [
    (lambda r: r.pop("hf_config"), "bad or missing ['hf_config']"),
    (lambda r: r.update(config=3), "bad or missing ['config']"),
    (lambda r: r.update(format=99), "format 99, this version reads 1"),
    (lambda r: r["tokenizer"].update({"../../evil.py": b"x"}),
     "the stored file '../../evil.py' is not a plain file name with bytes"),
    (lambda r: r["code"].update({"m.py": "text"}), "the stored file 'm.py' is not a plain file name with bytes"),
])
def test_malformed_record_is_one_checkpoint_error(tmp_path, edit, found):
    record = {"format": 1, "config": "stage: prune\n", "earlier_configs": [], "hf_config": {}, "tokenizer": {},
              "code": {}, "base_model": "b", "pruning_info": None, "vocab_record": None, "max_seq_length": None}
    edit(record)
    path = tmp_path / "ckpt.pt"
    torch.save({"state": {"model": {}, "callbacks": {RUN_RECORD_KEY: record}}}, path)
    with pytest.raises(CheckpointError) as e:
        load_composer_model(path)
    assert str(e.value) == (f"{path}: its run record (RunRecord) is malformed ({found}); it was not written by this "
                            "version of bge_pruning")


def test_checkpoint_without_record_or_side_cars_names_what_is_missing(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state": {"model": {}, "callbacks": {}}}, path)
    with pytest.raises(CheckpointError, match="it holds no run record and has no config.yaml beside it"):
        load_composer_model(path)


@pytest.mark.slow
def test_finetune_of_a_pruned_export_stores_its_modeling_code_and_rebuilds_alone(pruned_run, tmp_path):
    """A finetune run's base is a custom-class export: the record stores its modeling_pruned.py and
    pruning_info.json, and the checkpoint alone rebuilds (the project's own code is trusted with no opt-in) with
    the export gone, keeping what the export reports about the first pruning."""
    from bge_pruning.training.run import build_trainer

    export = Path(shutil.copytree(pruned_run / "model", tmp_path / "pruned"))
    overrides = ["stage=finetune", f"model.name_or_path={export}", "run_name=ft", "loss.distill_similarity=0",
                 "loss.distill_embedding=0", "loss.distill_hidden=0", f"train.save_folder={tmp_path / 'ckpt'}",
                 f"train.log_file={tmp_path / 'log.jsonl'}", f"export.output_dir={tmp_path / 'ft_model'}"]
    cfg = load_config(tiny_config(tmp_path, pruned_run / "model", max_duration="2ba", save_interval="2ba",
                                  eval_interval="2ba"), overrides)
    trainer, model = build_trainer(cfg)
    trainer.fit()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    pruned_by = model.export_info()["pruned_by"]
    trainer.close()
    checkpoint = Path(cfg.train.save_folder) / "latest-rank0.pt"
    record = read_checkpoint(checkpoint)["state"]["callbacks"][RUN_RECORD_KEY]
    assert record["code"] == {"modeling_pruned.py": (export / "modeling_pruned.py").read_bytes()}
    assert record["pruning_info"] == json.loads((export / "pruning_info.json").read_text())

    alone = tmp_path / "alone" / "ft.pt"
    alone.parent.mkdir()
    shutil.copyfile(checkpoint, alone)
    shutil.rmtree(export)
    rebuilt = load_composer_model(alone)
    assert rebuilt.l0_module is None and rebuilt.trained_steps == 2
    assert rebuilt.export_info()["pruned_by"] == pruned_by and pruned_by["training_steps"] == 8
    state = rebuilt.state_dict()
    assert state.keys() == trained.keys()
    assert all(torch.equal(state[k], trained[k]) for k in trained)
