"""The run driver behind ``train.py``: config -> model, data, optimizer, callbacks -> Composer Trainer -> export."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from composer import Algorithm, Trainer
from composer.core import DataSpec, Evaluator
from composer.utils import dist, get_device, reproducibility
from torch.utils.data import DataLoader

from ..config import fill_run_name, to_container
from ..data import PairCollator, TripletCollator, build_train_dataloader, load_sts, load_triplets, num_samples_in_batch
from ..models.composer_bge_m3 import ComposerBGEM3, build_model
from ..models.l0_module import ConfigError
from ..paths import too_little_space, unwritable
from ..shapes import EncoderShape
from .batching import split_batch
from .callbacks import (
    CompleteOptimizerState,
    JsonlLogger,
    NonFiniteLossGuard,
    PruningCallback,
    ReplicatedGradSync,
    TrainingOutOfMemoryError,
    latest_checkpoint,
)
from .checkpoint import (
    CheckpointError,
    RunRecord,
    build_run_record,
    check_save_folder,
    lock_run_folder,
    save_run_files,
)
from .optim import build_optimizer, build_scheduler
from .report import before_after, sts_of_export, sts_of_model

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "gpu"):
        raise ConfigError(f"train.device must be auto, cpu or gpu, got {name!r}")
    if name == "gpu" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'gpu' but no CUDA device is available")
    return name


def _grad_tensors(obj: Any) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj] if obj.requires_grad else []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _grad_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _grad_tensors(v)]
    return []


class OutputsInLoss(Algorithm):
    """Under DDP, makes every differentiable forward output part of the loss (with weight 0).

    DDP needs every parameter that produced a forward output to receive a gradient in every step. The sparse and
    ColBERT heads are computed for every batch but scored only on retrieval batches (and not at all when their
    loss weight is 0), so without this DDP stops at the second step ("Expected to have finished reduction in the
    prior iteration"). Adding ``0 * sum(output)`` gives those parameters zero gradients, leaves the loss value and
    every other gradient unchanged, and costs one sum per output. (``find_unused_parameters=True`` is no way out:
    the Lagrange multipliers are used only in ``loss()``, outside DDP's forward, and it would mark them ready
    twice.) Single-process runs are left alone.
    """

    def match(self, event: Any, state: Any) -> bool:
        from composer.core import Event

        return event == Event.AFTER_LOSS and dist.get_world_size() > 1 and isinstance(state.loss, dict)

    def apply(self, event: Any, state: Any, logger: Any) -> None:
        tensors = _grad_tensors(state.outputs)
        if tensors:
            state.loss["total"] = state.loss["total"] + 0.0 * sum(t.float().sum() for t in tensors)


LOGGERS = {"tensorboard": "TensorboardLogger", "mlflow": "MLFlowLogger", "wandb": "WandBLogger"}
MONITORS = {"lr_monitor": "LRMonitor", "speed_monitor": "SpeedMonitor", "memory_monitor": "MemoryMonitor"}


def _named_objects(section: Any, key: str, names: dict[str, str], module: str, run_name: str) -> list[Any]:
    """``{name: {kwargs}}`` of a config section -> Composer objects; unknown names and bad kwargs are ConfigErrors."""
    import importlib
    import inspect

    if section is None:
        return []
    section = to_container(section)
    if not isinstance(section, dict):
        raise ConfigError(f"{key} must be a mapping of {' | '.join(names)} to their settings, got {section!r}")
    out = []
    for name, kwargs in section.items():
        if name not in names:
            raise ConfigError(f"{key}.{name}: unknown; valid: {', '.join(names)}")
        kwargs = dict(kwargs or {})
        if not all(isinstance(k, str) for k in kwargs):
            raise ConfigError(f"{key}.{name} must map setting names to values")
        kwargs = {k: fill_run_name(v, run_name) if isinstance(v, str) else v for k, v in kwargs.items()}
        try:
            cls = getattr(importlib.import_module(module), names[name])
        except ImportError as e:
            raise ConfigError(f"{key}.{name} needs a package that is not installed ({e.name}); pip install "
                              f"'bge_pruning[loggers]'") from None
        params = inspect.signature(cls).parameters
        bad = sorted(set(kwargs) - set(params))
        if bad:
            raise ConfigError(f"{key}.{name}: unknown setting(s) {bad}; {names[name]} takes {', '.join(params)}")
        try:
            out.append(cls(**kwargs))
        except ImportError as e:  # Composer imports the logging library when the logger is built
            raise ConfigError(f"{key}.{name} needs a package that is not installed ({e.name}); pip install "
                              f"'bge_pruning[loggers]'") from None
    return out


def build_loggers(cfg: Any) -> list[Any]:
    """The JSON-lines log, plus ``loggers:`` (Composer's TensorBoard / MLflow / W&B loggers)."""
    loggers: list[Any] = [JsonlLogger(fill_run_name(cfg.train.log_file, cfg.run_name))] if cfg.train.log_file else []
    return loggers + _named_objects(cfg.get("loggers"), "loggers", LOGGERS, "composer.loggers", cfg.run_name)


def build_monitors(cfg: Any) -> list[Any]:
    """``callbacks:``: Composer's LR, speed and memory monitors."""
    return _named_objects(cfg.get("callbacks"), "callbacks", MONITORS, "composer.callbacks", cfg.run_name)


def build_algorithms(tcfg: Any) -> list[Algorithm]:
    """``OutputsInLoss`` always; Composer's ``GradientClipping`` (global norm, every parameter group, as
    LLM-Shearing) when ``train.grad_clip_norm`` is set."""
    algorithms: list[Algorithm] = [OutputsInLoss()]
    clip = tcfg.get("grad_clip_norm")
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
            raise ConfigError(f"train.grad_clip_norm must be a positive number or null, got {clip!r}")
        from composer.algorithms import GradientClipping

        algorithms.append(GradientClipping(clipping_type="norm", clipping_threshold=float(clip)))
    return algorithms


def _data_spec(loader: DataLoader) -> DataSpec:
    return DataSpec(loader, get_num_samples_in_batch=num_samples_in_batch, split_batch=split_batch)


def build_evaluators(cfg: Any, tokenizer: Any) -> list[Evaluator]:
    """STS dev Spearman and in-batch retrieval MRR evaluators, for whichever eval sets are configured."""
    evaluators = []
    ecfg, max_length, bs = cfg.data.eval, cfg.data.max_length, cfg.data.eval_batch_size
    if ecfg.get("sts"):
        s = ecfg.sts
        pairs = load_sts(s.source, s.get("split", "validation"), s.get("max_examples"))
        loader = DataLoader(pairs, batch_size=bs, shuffle=False, collate_fn=PairCollator(tokenizer, max_length),
                            sampler=dist.get_sampler(pairs, shuffle=False) if dist.get_world_size() > 1 else None)
        evaluators.append(Evaluator(label="sts", dataloader=_data_spec(loader), metric_names=["STSSpearman"]))
    if ecfg.get("retrieval"):
        r = ecfg.retrieval
        n_neg = int(r.get("n_negatives", 0))
        triplets = load_triplets(r.source, r.get("split", "validation"), n_neg, r.get("max_examples"))
        loader = DataLoader(triplets, batch_size=bs, shuffle=False, drop_last=True,
                            collate_fn=TripletCollator(tokenizer, max_length, n_neg),
                            sampler=dist.get_sampler(triplets, shuffle=False) if dist.get_world_size() > 1 else None)
        evaluators.append(Evaluator(label="retrieval", dataloader=_data_spec(loader), metric_names=["InBatchMRR"]))
    return evaluators


def _max_batches(max_duration: str) -> int | None:
    text = str(max_duration)
    return int(text[:-2]) if text.endswith("ba") and text[:-2].isdigit() else None


def check_output_paths(cfg: Any) -> None:
    """``train.log_file`` and the export's parent can be written: found out at start-up, not after training."""
    if cfg.train.log_file:
        log_file = Path(fill_run_name(cfg.train.log_file, cfg.run_name))
        if log_file.is_dir():
            raise ConfigError(f"train.log_file: {log_file} is a directory; give a file path (a .jsonl)")
        problem = unwritable(log_file)
        if problem:
            raise ConfigError(f"train.log_file: {log_file}: {problem}")
    out = Path(fill_run_name(cfg.export.output_dir, cfg.run_name))
    problem = unwritable(out)
    if problem:
        raise ConfigError(f"export.output_dir: {out}: {problem}")


def check_export_space(cfg: Any, model: ComposerBGEM3) -> None:
    """Enough free space for the float32 export, checked before training (on BGE-M3, hours before it)."""
    from ..shapes import count_params

    out = Path(fill_run_name(cfg.export.output_dir, cfg.run_name))
    needed = 4 * count_params(model.backbone.shape).total  # an upper bound: the export is never larger
    problem = too_little_space(out, needed)
    if problem:
        raise ConfigError(f"export.output_dir: {out.absolute()}: {problem}; free space or choose another directory")


def check_export_target(cfg: Any) -> Path:
    """Fail before training, not after it, when the export directory would be refused."""
    out = Path(fill_run_name(cfg.export.output_dir, cfg.run_name))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export.output_dir: {out} exists and is a file, not a directory")
    if out.exists() and any(out.iterdir()) and not cfg.export.overwrite:
        raise ConfigError(f"export.output_dir: {out} exists and is not empty; choose another directory or set "
                          f"export.overwrite=true (the old export is replaced only after the new one verifies)")
    return out


def check_parallelism(cfg: Any) -> dict[str, Any] | None:
    """The FSDP config (``train.fsdp_config``) or None; refuses what the run could not finish with."""
    if not cfg.train.fsdp_config:
        return None
    fsdp = to_container(cfg.train.fsdp_config)
    if fsdp.get("state_dict_type", "full") != "full":
        raise ConfigError(f"train.fsdp_config.state_dict_type: only 'full' is supported (got "
                          f"{fsdp['state_dict_type']!r}): the export and load_composer_model read whole checkpoints")
    if cfg.report.before_after:
        raise ConfigError("report.before_after is not available with train.fsdp_config (the base model would be "
                          "scored on rank 0 alone while its weights are sharded); compare afterwards with "
                          "scripts/evaluate_model.py")
    return fsdp


def prepare_fsdp(model: ComposerBGEM3) -> None:
    """Mark what Composer's FSDP wraps: each encoder layer is its own FSDP unit (and activation-checkpointed
    when ``activation_checkpointing: true``); the L0 module is not sharded.

    The L0 module's parameters are read outside any FSDP forward (the Lagrangian in ``loss()``, the deterministic
    masks at evaluation and export), which a sharded parameter does not allow; they are few (about 0.1M for
    BGE-M3), so every rank keeps all of them and ``ReplicatedGradSync`` averages their gradients.
    """
    for layer in model.backbone.encoder.layer:
        layer._fsdp_wrap = True
        layer._activation_checkpointing = True
    if model.l0_module is not None:
        model.l0_module._fsdp_wrap = False


def build_trainer(cfg: Any, model: ComposerBGEM3 | None = None) -> tuple[Trainer, ComposerBGEM3]:
    """Everything ``Trainer.fit`` needs, from a validated config."""
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    dist.initialize_dist(get_device(device), timeout=tcfg.dist_timeout)
    reproducibility.seed_all(cfg.seed)
    model = model or build_model(cfg)
    if getattr(model.backbone, "pooler", None) is not None:
        # BGE-M3 pools the last hidden state: the CLS pooler gets no gradient. Frozen, it stays out of the optimizer
        # and of DDP's gradient buckets (which would otherwise wait for it forever); it is exported unchanged.
        model.backbone.pooler.requires_grad_(False)
    max_batches = _max_batches(tcfg.max_duration)
    train_loader = build_train_dataloader(
        to_container(cfg.data), model.tokenizer, tcfg.batch_size, cfg.seed,
        num_batches=max_batches * dist.get_world_size() if max_batches else None)
    evaluators = build_evaluators(cfg, model.tokenizer)
    save_folder = fill_run_name(tcfg.save_folder, cfg.run_name)
    # RunRecord: every checkpoint carries its config, base HF config and tokenizer, so the file alone rebuilds
    callbacks = [PruningCallback(save_folder=save_folder), NonFiniteLossGuard(save_folder=save_folder),
                 CompleteOptimizerState(), RunRecord(build_run_record(cfg, model))]
    loggers = build_loggers(cfg)
    callbacks += build_monitors(cfg)
    fsdp = check_parallelism(cfg)
    if fsdp is not None:
        prepare_fsdp(model)
        if model.l0_module is not None:
            callbacks.append(ReplicatedGradSync(model.l0_module))
    trainer = Trainer(
        model=model,
        train_dataloader=_data_spec(train_loader),
        eval_dataloader=evaluators or None,
        eval_interval=tcfg.eval_interval if evaluators else 1,
        optimizers=build_optimizer(model, tcfg),
        schedulers=build_scheduler(tcfg),
        max_duration=tcfg.max_duration,
        device=device,
        precision=tcfg.precision,
        device_train_microbatch_size=tcfg.device_train_microbatch_size or tcfg.batch_size,
        parallelism_config={"fsdp": fsdp} if fsdp else None,
        algorithms=build_algorithms(tcfg),
        callbacks=callbacks,
        loggers=loggers,
        run_name=cfg.run_name,
        seed=cfg.seed,
        save_folder=save_folder,
        save_interval=tcfg.save_interval,
        save_num_checkpoints_to_keep=tcfg.save_num_checkpoints_to_keep,
        save_overwrite=tcfg.save_overwrite,
        autoresume=tcfg.autoresume,
        load_path=tcfg.load_path,
        progress_bar=tcfg.progress_bar,
        log_to_console=tcfg.log_to_console,
        console_log_interval=tcfg.console_log_interval,
        dist_timeout=tcfg.dist_timeout,
    )
    return trainer, model


def is_disk_full(error: BaseException) -> bool:
    """A write that ran out of space: ENOSPC, or torch's zip writer's 'unexpected pos' when a short write failed."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "unexpected pos" in text or "No space left on device" in text


def disk_full_message(folder: Path, step: int, error: BaseException) -> str:
    """Move the partial checkpoint aside (autoresume must not see it) and say how to go on."""
    from .checkpoint import CHECKPOINT_FILE, INTERRUPTED_DIR, is_intact

    moved = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if CHECKPOINT_FILE.match(p.name) and p.is_file() and not is_intact(p):
                aside = folder / INTERRUPTED_DIR
                aside.mkdir(exist_ok=True)
                p.rename(aside / p.name)
                moved.append(p.name)
    latest = latest_checkpoint(str(folder))
    where = (f"rerun with train.autoresume=true to continue from {latest.name}" if latest is not None
             else "rerun (no complete checkpoint was written yet)")
    partial = f"; the partial {', '.join(moved)} was moved to {folder / INTERRUPTED_DIR}" if moved else ""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (f"train.save_folder: the disk filled up while writing a checkpoint at step {step} in {folder}{partial}. "
            f"Free space (or point train.save_folder elsewhere), then {where}. [{first}]")


def out_of_memory_message(cfg: Any, step: int | None, error: BaseException, evaluating: bool = False) -> str:
    """What to change after a CUDA out-of-memory error (Composer micro-batching first)."""
    tcfg = cfg.train
    bs, mb = tcfg.batch_size, tcfg.device_train_microbatch_size
    at = f" at step {step}" if step is not None else ""
    smaller = max(1, bs // 2 if mb in (None, "auto") else int(mb) // 2)
    ckpt = fill_run_name(tcfg.save_folder, cfg.run_name)
    first = (str(error).strip().splitlines() or [""])[0]
    during_eval = "; it happened while evaluating: lower data.eval_batch_size" if evaluating else ""
    bf16 = ", or use train.precision=amp_bf16" if tcfg.precision == "fp32" else ""
    resume = ("rerun with the change to continue from the latest (train.autoresume is on)" if tcfg.autoresume
              else "add train.autoresume=true to continue from the latest")
    return (f"out of GPU memory{at} (train.batch_size={bs} per device, train.device_train_microbatch_size="
            f"{mb if mb is not None else bs}). Set train.device_train_microbatch_size to a smaller divisor of the "
            f"batch size, e.g. {smaller} (Composer accumulates gradients over the micro-batches: same batch per "
            f"optimizer step, less memory; in-batch negatives then come from each micro-batch), or to 'auto' "
            f"(Composer halves it until a step fits); or lower data.max_length or train.batch_size{bf16}"
            f"{during_eval}. Checkpoints already written in {ckpt} are kept: {resume}. [{first}]")


def _report_pairs(cfg: Any) -> list | None:
    """The eval STS pairs for the before/after table (``report.before_after``), or None."""
    if not cfg.report.before_after:
        return None
    s = cfg.data.eval.get("sts")
    if not s:
        raise ConfigError("report.before_after needs data.eval.sts (the pairs to score base and pruned on)")
    return load_sts(s.source, s.get("split", "validation"), s.get("max_examples"))


def training_finished(trainer: Any) -> bool:
    """Whether the trainer's clock already reached ``max_duration`` (a run autoresumed from its final checkpoint)."""
    max_duration = trainer.state.max_duration
    return max_duration is not None and trainer.state.timestamp.get(max_duration.unit) >= max_duration


def run(cfg: Any) -> dict[str, Any]:
    """Train (prune or finetune), then export the result as an HF directory; returns a summary."""
    started = time.time()
    out_dir = check_export_target(cfg)
    check_output_paths(cfg)
    lock = (lock_run_folder(Path(fill_run_name(cfg.train.save_folder, cfg.run_name)), cfg.run_name)
            if dist.get_global_rank() == 0 else None)
    try:
        return _run(cfg, out_dir, started)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: Any, out_dir: Path, started: float) -> dict[str, Any]:
    check_save_folder(cfg)
    sharded = check_parallelism(cfg) is not None
    trainer, model = build_trainer(cfg)
    check_export_space(cfg, model)
    if dist.get_global_rank() == 0:
        save_run_files(Path(fill_run_name(cfg.train.save_folder, cfg.run_name)), cfg, model)
    report_pairs = _report_pairs(cfg)
    resumed_at = int(trainer.state.timestamp.batch.value)
    if report_pairs and resumed_at:
        # Autoresume already loaded the trained weights: the model in memory is no longer the base.
        log.warning("report.before_after: this run resumed at step %d, so the base model is no longer in memory; "
                    "the before/after table is skipped (score the base with scripts/evaluate_model.py)", resumed_at)
        report_pairs = None
    base_sts = sts_of_model(model, report_pairs) if report_pairs and dist.get_global_rank() == 0 else None
    base_shape = model.backbone.shape
    if cfg.train.eval_first and trainer.state.evaluators:
        trainer.eval()
    start_step = int(trainer.state.timestamp.batch.value)  # > 0 when autoresumed from a checkpoint
    try:
        if training_finished(trainer):
            # Autoresumed from the last checkpoint of a run that was stopped after it (during the final eval or
            # the export): nothing is left to train, and Composer's fit() would refuse; finish the export.
            log.warning("resumed at the end of training (step %d of %s): nothing left to train; exporting",
                        start_step, trainer.state.max_duration)
            model.trained_steps = start_step
        else:
            trainer.fit()
    except torch.cuda.OutOfMemoryError as e:
        evaluating = trainer.state.dataloader_label not in (None, "train")
        raise TrainingOutOfMemoryError(out_of_memory_message(cfg, int(trainer.state.timestamp.batch.value) + 1, e,
                                                             evaluating)) from None
    except (RuntimeError, OSError) as e:
        if not is_disk_full(e):
            raise
        raise CheckpointError(disk_full_message(Path(fill_run_name(cfg.train.save_folder, cfg.run_name)),
                                                int(trainer.state.timestamp.batch.value), e)) from None
    summary: dict[str, Any] = {"run_name": cfg.run_name, "steps": int(trainer.state.timestamp.batch.value),
                               "train_seconds": time.time() - started}
    if start_step:
        summary["resumed_from_step"] = start_step
    if model.l0_module is not None:
        summary["final_shape"] = model.l0_module.expected_shape().to_dict()
        summary["l0"] = dict(model.last_metrics)
        summary["convergence"] = model.l0_module.convergence_report()
        for warning in summary["convergence"]["warnings"]:
            log.warning("pruning did not converge: %s", warning)
    if dist.get_global_rank() == 0:
        from ..export import export_composer_model
        from ..export.model_card import record_evaluation

        to_export = model
        if sharded:  # the live backbone holds only this rank's shard: export the final (whole) checkpoint
            from .checkpoint import load_composer_model

            to_export = load_composer_model(latest_checkpoint(fill_run_name(cfg.train.save_folder, cfg.run_name)))
        export_dir = export_composer_model(to_export, out_dir, vanilla=cfg.export.vanilla,
                                           overwrite=cfg.export.overwrite, dtype=cfg.export.dtype,
                                           onnx=cfg.export.onnx, quantize=cfg.export.quantize)
        summary["export_dir"] = str(export_dir)
        if base_sts is not None:
            from transformers import AutoConfig

            from ..trust import is_own_export

            pruned_shape = EncoderShape.from_hf_config(AutoConfig.from_pretrained(export_dir,
                                                                                  trust_remote_code=is_own_export(export_dir)),
                                                       has_pooler=base_shape.has_pooler)
            pruned_sts = sts_of_export(export_dir, report_pairs, model.tokenizer.model_max_length)
            table, numbers = before_after(base_shape, pruned_shape, base_sts, pruned_sts,
                                          Path(str(cfg.data.eval.sts.source)).name)
            summary["before_after"] = numbers
            summary["before_after_table"] = table
            task = Path(str(cfg.data.eval.sts.source)).name
            record_evaluation(export_dir, [{"task": task, "metric": m, "base": base_sts[m], "pruned": pruned_sts[m]}
                                           for m in ("spearman", "pearson") if m in base_sts and m in pruned_sts],
                              source=f"report.before_after on {cfg.data.eval.sts.source}")
        summary_file = Path(fill_run_name(cfg.train.save_folder, cfg.run_name)).parent / "summary.json"
        summary_file.write_text(json.dumps(summary, indent=2))
        summary["summary_file"] = str(summary_file)
    dist.barrier()
    trainer.close()
    return summary
