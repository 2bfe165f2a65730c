"""Rebuild a ``ComposerBGEM3`` from a Composer checkpoint, offline.

Every checkpoint holds a run record (the ``RunRecord`` callback's state, in ``state["callbacks"]``): the resolved
run config and the base model's HF config, tokenizer files and modeling code (no weights). With it the
architecture is rebuilt without the hub, the base model's directory or any file beside the checkpoint, and the
checkpoint's weights loaded, so a checkpoint file moved alone still exports. ``train.py`` also writes the same
things beside the checkpoints in ``train.save_folder`` (``config.yaml``, ``base_model/``), for people to read and
for checkpoints written before the record existed, which are rebuilt from those files.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from composer import Callback
from omegaconf import OmegaConf

from ..errors import CheckpointError
from ..models.composer_bge_m3 import ComposerBGEM3, build_model
from ..models.loading import resolve_model_path, st_max_seq_length
from ..trust import MODELING_FILE, PRUNING_INFO_FILE, resolve_trust

RUN_CONFIG = "config.yaml"
BASE_MODEL_DIR = "base_model"
VOCAB_RECORD = "vocabulary.json"
ST_CONFIG = "sentence_bert_config.json"

log = logging.getLogger(__name__)


def save_run_files(folder: Path, cfg: Any, model: ComposerBGEM3) -> None:
    """Write the run config and the base model's config/tokenizer (not its weights) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / RUN_CONFIG).is_file() and bool(cfg.train.autoresume) and _checkpoints(folder):
        # Resuming: config.yaml stays the run's original record; this restart's config goes beside it.
        n = 1
        while (folder / f"config.restart-{n}.yaml").exists():
            n += 1
        OmegaConf.save(cfg, folder / f"config.restart-{n}.yaml")
    else:
        OmegaConf.save(cfg, folder / RUN_CONFIG)
    base = folder / BASE_MODEL_DIR
    _write_hf_files(base, model)
    # A pruned export as the base: keep its pruning_info.json beside the modeling file transformers copied,
    # so the rebuild recognises the project's own code (bge_pruning.trust) and needs no opt-in.
    source = Path(str(resolve_model_path(cfg.model.name_or_path)))
    if (base / MODELING_FILE).is_file() and (source / PRUNING_INFO_FILE).is_file():
        shutil.copyfile(source / PRUNING_INFO_FILE, base / PRUNING_INFO_FILE)
    if model.vocab_record:  # the config and tokenizer above are trimmed; the export records how
        (base / VOCAB_RECORD).write_text(json.dumps(model.vocab_record))
    if model.max_seq_length:  # the sentence-transformers limit the export keeps
        (base / ST_CONFIG).write_text(json.dumps({"max_seq_length": model.max_seq_length}))


def _write_hf_files(base: Path, model: ComposerBGEM3) -> None:
    """The base model's HF config (with any modeling code transformers copies beside it) and tokenizer files."""
    model.backbone.config.save_pretrained(base)
    model.tokenizer.save_pretrained(base)


RECORD_FORMAT = 1
_OPTIONAL_DICT = (dict, type(None))
_RECORD_TYPES = {"format": int, "config": str, "earlier_configs": list, "hf_config": dict, "tokenizer": dict,
                 "code": dict, "base_model": str, "pruning_info": _OPTIONAL_DICT, "vocab_record": _OPTIONAL_DICT,
                 "max_seq_length": (int, type(None))}


def build_run_record(cfg: Any, model: ComposerBGEM3) -> dict[str, Any]:
    """What rebuilding ``model`` from a checkpoint needs besides the weights, as plain data.

    Only types ``torch.load(weights_only=True)`` reads (str, bytes, int, dict, list, None), so the record does not
    widen what ``read_checkpoint`` allows. Keys:

    * ``config``: the resolved run config (YAML) of the process that wrote the checkpoint; ``earlier_configs``:
      those of the processes before it when the run was resumed, oldest first (what ``config.yaml`` and
      ``config.restart-N.yaml`` hold beside the checkpoints);
    * ``hf_config``: the base model's ``config.json`` (trimmed when ``model.vocab`` trimmed the vocabulary);
    * ``tokenizer``: the bytes of each file ``tokenizer.save_pretrained`` writes (``tokenizer.json``, ...);
    * ``code``: the Python files transformers copies beside a config with an ``auto_map`` (a pruned export's
      ``modeling_pruned.py``, or code the user trusted with ``model.trust_remote_code``). Stored, never run on
      load unless ``bge_pruning.trust`` allows it: the project's own file, or ``--trust-remote-code``;
    * ``base_model``, ``pruning_info`` (a pruned export as the base), ``vocab_record``, ``max_seq_length``: what
      the export reports and keeps, otherwise read from the base model's directory.

    Args:
        cfg: the run config (``bge_pruning.config.load_config``).
        model: the model built from it (``build_model``).
    """
    with tempfile.TemporaryDirectory(prefix="bge_pruning_record_") as tmp:
        base = Path(tmp)
        _write_hf_files(base, model)
        files = {p.name: p.read_bytes() for p in sorted(base.iterdir()) if p.is_file()}
    hf_config = json.loads(files.pop("config.json"))
    code = {name: files.pop(name) for name in list(files) if name.endswith(".py")}
    return {"format": RECORD_FORMAT, "config": OmegaConf.to_yaml(cfg), "earlier_configs": [],
            "hf_config": hf_config, "tokenizer": files, "code": code, "base_model": str(model.base_model),
            "pruning_info": model.prior_pruning.to_json() if model.prior_pruning is not None else None,
            "vocab_record": model.vocab_record,
            "max_seq_length": model.max_seq_length}


class RunRecord(Callback):
    """Stores the run record (``build_run_record``) in every checkpoint, so the checkpoint alone rebuilds the model.

    Composer saves each callback's ``state_dict()`` in the checkpoint under ``state["callbacks"]["RunRecord"]``
    and hands it back to ``load_state_dict`` when a run resumes from it. ``load_composer_model`` reads it.

    Args:
        record: this process's record, from ``build_run_record``.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def state_dict(self) -> dict[str, Any]:
        return self.record

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Resumed: the checkpoints this process writes keep the earlier processes' configs, oldest first (the
        # record's config.restart-N.yaml); the rest is rebuilt by this process from the same base model.
        earlier = list(state.get("earlier_configs") or [])
        if isinstance(state.get("config"), str):
            earlier.append(state["config"])
        self.record = {**self.record, "earlier_configs": earlier}


RUN_RECORD_KEY = RunRecord.__qualname__  # Composer's key for a callback's state


def run_record_of(saved_state: dict[str, Any], checkpoint: Path) -> dict[str, Any] | None:
    """The run record in a checkpoint's ``state``, or None for a checkpoint written before records existed."""
    callbacks = saved_state.get("callbacks")
    record = callbacks.get(RUN_RECORD_KEY) if isinstance(callbacks, dict) else None
    if record is None:
        return None
    if not isinstance(record, dict):
        found = f"a {type(record).__name__}, not a dict"
    elif problems := [k for k, t in _RECORD_TYPES.items() if not isinstance(record.get(k), t)]:
        found = f"bad or missing {problems}"
    elif record["format"] != RECORD_FORMAT:
        found = f"format {record['format']}, this version reads {RECORD_FORMAT}"
    elif bad := [name for files in (record["tokenizer"], record["code"]) for name, data in files.items()
                 if not (isinstance(name, str) and name == Path(name).name and not name.startswith(".")
                         and isinstance(data, bytes))]:
        found = f"the stored file {bad[0]!r} is not a plain file name with bytes"
    else:
        return record
    raise CheckpointError(f"{checkpoint}: its run record ({RUN_RECORD_KEY}) is malformed ({found}); it was not "
                          "written by this version of bge_pruning")


def _write_record_base(record: dict[str, Any], base: Path) -> None:
    """The record's base model files in ``base``, laid out as ``base_model/`` beside a checkpoint would be."""
    (base / "config.json").write_text(json.dumps(record["hf_config"]))
    for name, data in {**record["tokenizer"], **record["code"]}.items():
        (base / name).write_bytes(data)
    if MODELING_FILE in record["code"] and record["pruning_info"] is not None:
        # As save_run_files: with it, bge_pruning.trust recognises the project's own modeling file.
        (base / PRUNING_INFO_FILE).write_text(json.dumps(record["pruning_info"]))


def checkpoint_safe_globals() -> list[Any]:
    """The non-tensor types a Composer checkpoint of this project holds (timestamps, version strings, numpy
    RNG state), allow-listed for ``torch.load(weights_only=True)``: nothing else in the file can run."""
    import datetime

    import numpy as np
    from torch.torch_version import TorchVersion

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return [datetime.timedelta, TorchVersion, _reconstruct, np.ndarray, np.dtype,
            *(getattr(np.dtypes, n) for n in np.dtypes.__all__)]


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """A Composer checkpoint loaded with ``weights_only=True`` (plus ``checkpoint_safe_globals``): a file that
    holds any other object is refused before it can run code, with one line saying so."""
    import pickle

    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(GLOBAL [\w.]+|got <class '[\w.]+'>)", str(e))
        raise CheckpointError(f"{checkpoint}: refused: it holds {found.group(1) if found else 'an object'} that a "
                              "Composer checkpoint of this project never has, and unpickling it could run code; "
                              "only load checkpoints you wrote") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{checkpoint}: not a readable Composer checkpoint (truncated or not a torch file: "
                              f"{(str(e).strip().splitlines() or [type(e).__name__])[0]})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{checkpoint}: not a Composer checkpoint (no 'state' dict)")
    return saved


def _find_run_folder(checkpoint: Path) -> Path:
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / RUN_CONFIG).is_file():
            return folder
    raise CheckpointError(f"{checkpoint}: it holds no run record and has no {RUN_CONFIG} beside it; was it written "
                          "by train.py?")


def load_composer_model(path: str | Path, trust_remote_code: bool = False) -> ComposerBGEM3:
    """The model of a Composer checkpoint (``ep*-ba*-rank0.pt`` / ``latest-rank0.pt``) as it was trained.

    The architecture comes from the checkpoint's run record (``RunRecord``), so the file may be alone in its
    folder; a checkpoint without one (written before records existed) needs ``config.yaml`` and ``base_model/``
    beside it or one folder up, as ``train.py`` writes them. Modeling code, from either, runs only when
    ``bge_pruning.trust`` allows it (this project's own ``modeling_pruned.py``) or ``trust_remote_code`` is set.

    Args:
        path: the checkpoint file.
        trust_remote_code: run the base model's stored modeling code even when it is not this project's own.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    checkpoint = Path(path)
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    saved = read_checkpoint(checkpoint)["state"]  # a crafted file is refused before anything else is read
    record = run_record_of(saved, checkpoint)
    with tempfile.TemporaryDirectory(prefix="bge_pruning_record_") as tmp:
        if record is not None:
            cfg = OmegaConf.create(record["config"])
            base = Path(tmp)
            _write_record_base(record, base)
            where = f"{checkpoint} (the base model stored in it)"
            base_info = {k: record[k] for k in ("base_model", "pruning_info", "max_seq_length")}
        else:
            folder = _find_run_folder(checkpoint.resolve())
            cfg = OmegaConf.load(folder / RUN_CONFIG)
            base = folder / BASE_MODEL_DIR
            where = f"{checkpoint} ({BASE_MODEL_DIR}/ beside it)"
            base_info = None
        trust = resolve_trust(str(base), trust_remote_code, where, "pass --trust-remote-code")
        hf_config = AutoConfig.from_pretrained(base, trust_remote_code=trust)
        hf_model = AutoModel.from_config(hf_config, trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust)
        model = build_model(cfg, hf_model=hf_model, tokenizer=tokenizer, with_teacher=False, base_info=base_info)
        if record is not None:
            model.vocab_record = record["vocab_record"]
        else:
            if (base / VOCAB_RECORD).is_file():
                model.vocab_record = json.loads((base / VOCAB_RECORD).read_text())
            model.max_seq_length = st_max_seq_length(str(base))
    try:
        state = saved["model"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{checkpoint}: not a readable Composer checkpoint ({e})") from None
    # A checkpoint of a DDP-wrapped model may prefix keys with "module."; FSDP / activation-checkpoint wrappers
    # normally strip theirs, but not every torch version does.
    state = {k.removeprefix("module.").replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", ""):
             v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: does not match the run's model: missing={result.missing_keys[:5]} "
                              f"unexpected={result.unexpected_keys[:5]}")
    # Composer stores the clock as {"Timestamp": {"batch": N, ...}}.
    model.trained_steps = int(saved.get("timestamp", {}).get("Timestamp", {}).get("batch", 0))
    return model.eval()


CHECKPOINT_FILE = re.compile(r"^ep(\d+)-ba(\d+)-rank(\d+)\.pt$")  # Composer's default checkpoint names
LATEST_LINK = "latest-rank0.pt"
INTERRUPTED_DIR = "interrupted_saves"


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(batch, path) of the Composer checkpoints in ``folder``, by batch."""
    found = []
    for p in folder.iterdir():
        m = CHECKPOINT_FILE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(2)), p))
    return sorted(found)


def check_save_folder(cfg: Any) -> None:
    """Before anything is built: never overwrite another run's checkpoints, and make autoresume resumable.

    * checkpoints already in ``train.save_folder`` and neither ``train.autoresume`` nor ``train.save_overwrite``
      (nor ``train.load_path``): CheckpointError naming the folder and the two ways on;
    * ``train.autoresume``: checkpoint files newer than the one ``latest-rank0.pt`` points at were being
      written when the run was killed (Composer writes the file, then moves the link). Composer would refuse
      to start beside them, so they are moved, not deleted, into ``{save_folder}/interrupted_saves/``.
    """
    from composer.utils import dist

    from ..config import fill_run_name

    tcfg = cfg.train
    if tcfg.autoresume and tcfg.save_num_checkpoints_to_keep == 0:
        raise CheckpointError("train.autoresume needs the checkpoints on local disk, but "
                              "train.save_num_checkpoints_to_keep is 0 (keep none): use -1 (keep all) or a number >= 1")
    folder = Path(fill_run_name(tcfg.save_folder, cfg.run_name))
    if not folder.is_dir() or tcfg.save_overwrite:
        return
    found = _checkpoints(folder)
    if not found:
        return
    newest = found[-1][1]
    if not tcfg.autoresume:
        if tcfg.load_path:
            return  # continuing from an explicit checkpoint: Composer protects the files after it
        raise CheckpointError(
            f"train.save_folder: {folder} already holds {len(found)} checkpoint(s) of a run named "
            f"'{cfg.run_name}' (newest: {newest.name}); they are not overwritten. Either continue that run with "
            f"train.autoresume=true, or start a new one with another run_name (e.g. run_name={cfg.run_name}_2) "
            f"or train.save_folder.")
    link = folder / LATEST_LINK
    if not link.is_symlink() or not link.exists():
        raise CheckpointError(
            f"train.save_folder: {folder} holds checkpoints but no valid {LATEST_LINK} link, so autoresume cannot "
            f"tell which one is complete. Continue from one explicitly with train.autoresume=false "
            f"train.load_path={newest} (if that file is complete), or use a new run_name.")
    m = CHECKPOINT_FILE.match(Path(os.readlink(link)).name)
    if m is None:
        return
    latest_batch = int(m.group(2))
    newer = [p for batch, p in found if batch > latest_batch]
    if newer and dist.get_global_rank() == 0:
        aside = folder / INTERRUPTED_DIR
        aside.mkdir(exist_ok=True)
        for p in newer:
            target = aside / p.name
            n = 1
            while target.exists():
                target, n = aside / f"{p.name}.{n}", n + 1
            p.rename(target)
            log.warning("%s is newer than %s (an interrupted save?): moved to %s; resuming from %s", p.name,
                        LATEST_LINK, target, link.resolve().name)
    latest = link.resolve()
    if dist.get_global_rank() == 0 and not is_intact(latest):
        intact = [p for batch, p in found if batch < latest_batch and is_intact(p)]
        aside = folder / INTERRUPTED_DIR
        aside.mkdir(exist_ok=True)
        latest.rename(aside / latest.name)
        if not intact:
            link.unlink()
            raise CheckpointError(f"train.autoresume: the latest checkpoint {latest.name} in {folder} is truncated "
                                  f"(moved to {aside}) and there is no intact earlier one to resume from; start over "
                                  f"with another run_name")
        link.unlink()
        link.symlink_to(intact[-1].name)
        log.warning("the latest checkpoint %s is truncated (a disk that filled up, or a kill mid-write?): moved to "
                    "%s; resuming from %s instead", latest.name, aside, intact[-1].name)


def is_intact(checkpoint: Path) -> bool:
    """A whole torch zip file: its end-of-archive record is there (a truncated write loses it). Cheap: reads
    the central directory only, not the tensors."""
    import zipfile

    try:
        with zipfile.ZipFile(checkpoint) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


RUN_LOCK = ".run.lock"


class RunLock:
    """The flock on ``{save_folder}/.run.lock`` that a run holds. ``release`` removes the lock file (and the
    folders the lock created, when they are still empty), so a run that stopped early leaves nothing behind."""

    def __init__(self, fd: int, path: Path, created: list[Path]) -> None:
        self.fd: int | None = fd
        self.path = path
        self.created = created

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held: a waiter that opened it re-checks the inode
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None
        for folder in reversed(self.created):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break


def lock_run_folder(folder: Path, run_name: str) -> RunLock:
    """Take the run folder for this run (flock on ``{folder}/.run.lock``); a second run with the same folder
    stops at once with one line. Also proves the folder is writable before any work."""
    import fcntl

    created = []
    p = folder.absolute()
    while not p.exists():
        created.append(p)
        p = p.parent
    created.reverse()
    lock = folder / RUN_LOCK
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            raise CheckpointError(f"train.save_folder: cannot write in {folder} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(f"train.save_folder: {folder} is in use by another run (pid {owner}) of "
                                  f"'{run_name}'; wait for it to finish, or start this one with another "
                                  "run_name") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(fd, lock, created)
