"""Run configuration: defaults, YAML loading, ``key=value`` overrides and validation.

Every key a run can set is listed in ``DEFAULTS`` (one place). Unknown keys are errors that name the
YAML file and line and list the valid keys beside them (with a "did you mean"), so a typo never costs
an hour of training with a silently ignored setting.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from .models.l0_module import ConfigError

# The dtypes an export can be saved in (bge_pruning.export.hf_export.EXPORT_DTYPES, kept light here so a bad
# value is refused before torch or any model loads).
EXPORT_DTYPES = ("float32", "float16", "bfloat16")

QUANTIZE_CHOICES = ("int8",)  # bge_pruning.export.onnx_export.QUANTIZE_CHOICES (that module imports torch)
REQUIRED = "???"  # OmegaConf's marker for a value the user must give
FREE = {"__free__": True}  # a mapping whose keys are not validated (passed through to a library)

DEFAULTS: dict[str, Any] = {
    "run_name": None,
    "seed": 17,
    "stage": "prune",  # prune: learn masks, then prune physically | finetune: train a (pruned) model, no masks
    "model": {
        "name_or_path": REQUIRED,  # hub id, local directory, or "embedded:all-MiniLM-L6-v2"
        "pooling": "cls",  # cls (BGE-M3) | mean (MiniLM / sentence-transformers)
        "normalize": True,
        "trust_remote_code": False,  # run modeling code from model directories other than this project's exports
        "teacher": None,  # distillation teacher; default: the initial weights (prune) / the export's base (finetune)
        "heads": {"sparse": False, "colbert": False},
        # Vocabulary pruning before training (bge_pruning.vocab): keep the tokens these corpora use. The
        # distillation teacher is trimmed to the same ids, so both see exactly the same tokens.
        "vocab": {"corpus": None, "min_count": 1, "max_vocab": None, "keep_tokens": None},
        "l0_module": {
            # layer | head | intermediate | head_layer, mlp (whole attention / FFN sublayers; global target only)
            "pruning_modules": ["layer", "head", "intermediate"],
            "start_sparsity": 0.0,
            "lagrangian_warmup_steps": "0ba",
            # Deterministic masks: the target (uniform: exactly the target widths; global: the parameter budget)
            # or, when false, the expected number of units per row (CoFi).
            "eval_target_model": True,
            # A uniform target shape, or instead a global target: {n_params: N} or {share: s} of the base's
            # encoder-layer parameters, widths and depth free per layer (see GLOBAL_TARGET_DEFAULTS).
            "target_model": {"n_layers": REQUIRED, "n_heads": REQUIRED, "intermediate_size": REQUIRED},
        },
    },
    "loss": {
        "cosent": 1.0,  # STS pairs: CoSENT on dense cosine
        "cosent_scale": 20.0,
        "infonce": 1.0,  # retrieval: InfoNCE on dense scores (in-batch + hard negatives)
        "temperature": 0.02,  # BGE-M3's
        "sparse": 0.0,  # weight of InfoNCE on sparse scores (needs model.heads.sparse)
        "colbert": 0.0,  # weight of InfoNCE on colbert scores (needs model.heads.colbert)
        "self_distill": 0.0,  # BGE-M3 unified self-distillation toward dense+sparse+colbert
        "distill_embedding": 0.0,  # teacher: MSE between normalized dense embeddings (x dim)
        "distill_similarity": 0.0,  # teacher: KL between in-batch similarity distributions
        "distill_hidden": 0.0,  # teacher: MSE between last-layer token states (real tokens)
        # teacher: CoFi's layer-wise distillation (bge_pruning.training.losses.layer_distillation_loss): each
        # chosen teacher layer pulls the closest student layer (order kept) through a learned D x D map
        "distill_layers": 0.0,
        "distill_layers_teacher": None,  # teacher layers (0-based outputs); None: 4 evenly spaced, last included
        # teacher's BGE-M3 heads (its sparse_linear.pt / colbert_linear.pt on its own token states): MSE of the
        # per-token lexical weights / of the colbert vectors, real tokens only (needs model.heads.sparse / colbert)
        "distill_sparse": 0.0,
        "distill_colbert": 0.0,
        "distill_temperature": 0.05,
    },
    "data": {
        "max_length": 128,
        "train": REQUIRED,  # list of sources, see bge_pruning.data
        "eval": {"sts": None, "retrieval": None},  # {source, split, max_examples}
        "eval_batch_size": 64,
    },
    "train": {
        "device": "auto",  # auto | cpu | gpu
        "precision": "fp32",  # fp32 | amp_bf16 | amp_fp16
        "batch_size": 32,  # per device
        "device_train_microbatch_size": None,  # int, or "auto" on GPU
        "max_duration": "500ba",
        "optimizer": "decoupled_adamw",
        "lr": 2.0e-5,
        "l0_lr": None,  # mask log-alphas; LLM-Shearing uses lag_lr for both
        "lag_lr": 1.0,  # Lagrange multipliers, applied as -lag_lr (gradient ascent)
        "grad_clip_norm": None,  # clip the global gradient norm (Composer's GradientClipping); LLM-Shearing uses 1.0
        "weight_decay": 0.0,  # decoupled (Composer): p *= 1 - wd * lr/lr0 per step, so use ~1e-5, not 0.01
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "scheduler": "linear",  # linear | cosine | constant
        "warmup": "0.1dur",
        "eval_interval": "100ba",
        "eval_first": False,
        "save_folder": "experiments/{run_name}/checkpoints",
        "save_interval": "500ba",
        "save_num_checkpoints_to_keep": -1,
        "save_overwrite": False,
        "autoresume": False,
        "load_path": None,
        "progress_bar": True,
        "log_to_console": False,
        "console_log_interval": "10ba",
        "log_file": "experiments/{run_name}/train_log.jsonl",
        "fsdp_config": None,
        "dist_timeout": 600.0,
    },
    "export": {
        "output_dir": "experiments/{run_name}/model",
        "vanilla": False,
        "overwrite": False,
        "dtype": "float32",  # float32 | float16 | bfloat16: the saved weights' dtype (verified against float32)
        "onnx": False,  # also write onnx/model.onnx, checked with onnxruntime against torch (the 'onnx' extra)
        "quantize": None,  # int8: with onnx, also onnx/model_qint8_avx512_vnni.onnx (dynamic quantization)
    },
    # Composer loggers and monitors, as llm-foundry's: each entry's mapping is passed to the class as keyword
    # arguments, e.g. loggers: {tensorboard: {log_dir: runs/x}}, callbacks: {lr_monitor: {}}.
    "loggers": None,  # tensorboard (TensorboardLogger) | mlflow (MLFlowLogger) | wandb (WandBLogger)
    "callbacks": None,  # lr_monitor | speed_monitor | memory_monitor
    "report": {
        "before_after": False,  # evaluate base vs pruned on data.eval.sts at the end and print a table
    },
}

# ``model.l0_module.target_model`` of a global target: when the file or the command line gives one of these
# keys, they replace the uniform shape's required keys (parse_target refuses a mix of both kinds).
GLOBAL_TARGET_DEFAULTS: dict[str, Any] = {"n_params": None, "share": None}
TARGET_MODEL = ("model", "l0_module", "target_model")


def _target_model(tree: Any) -> Any:
    for key in TARGET_MODEL:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def _defaults_for(*sources: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(defaults to merge, schema to validate against): a global target_model is {n_params, share}, the uniform
    one {n_layers, n_heads, intermediate_size} (required); the schema accepts the keys of both."""
    schema = copy.deepcopy(DEFAULTS)
    target = schema["model"]["l0_module"]["target_model"]
    defaults = copy.deepcopy(DEFAULTS)
    if any(isinstance(t, dict) and any(k in t for k in GLOBAL_TARGET_DEFAULTS) for t in map(_target_model, sources)):
        defaults["model"]["l0_module"]["target_model"] = dict(GLOBAL_TARGET_DEFAULTS)
    target.update(GLOBAL_TARGET_DEFAULTS)
    return defaults, schema


# Keys whose values are mappings passed through without key validation.
FREE_KEYS = {"train.fsdp_config", "loggers", "callbacks"}


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (YAML would silently keep the last value)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses duplicate keys: ``lr: 5.0e-5`` then ``lr: 1.0`` is a mistake, not 1.0."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(f"{line}: duplicate key '{key}' (first at line {seen[key]}); YAML would "
                                        "silently keep the last value")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _key_lines(path: Path) -> dict[str, int]:
    """Map dotted key paths of a YAML file to their 1-based line numbers (for error messages)."""
    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    walk(root, "")
    return lines


def _validate(user: Any, schema: Any, prefix: str, lines: dict[str, int], source: str) -> None:
    if not isinstance(user, dict) or not isinstance(schema, dict) or prefix.rstrip(".") in FREE_KEYS:
        return
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            valid = sorted(schema)
            near = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            where = f"{source}:{lines[dotted]}: " if dotted in lines else f"{source}: "
            raise ConfigError(f"{where}unknown config key '{dotted}'{hint}; valid keys in "
                              f"'{prefix.rstrip('.') or '<top level>'}': {', '.join(valid)}")
        if schema[key] is not None and isinstance(schema[key], dict):
            _validate(value, schema[key], dotted + ".", lines, source)


def _missing(cfg: DictConfig, prefix: str = "") -> list[str]:
    missing = []
    for key in cfg:
        dotted = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            missing.append(dotted)
        elif isinstance(cfg[key], DictConfig) and dotted not in FREE_KEYS:
            missing += _missing(cfg[key], dotted + ".")
    return missing


def load_config(path: str | Path, overrides: list[str] | None = None, required: bool = True) -> DictConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated; returns a resolved DictConfig."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a YAML run config such as configs/demo.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        user = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except DuplicateKeyError as e:
        raise ConfigError(f"{path}:{e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    lines = _key_lines(path)
    _, schema = _defaults_for()
    _validate(user, schema, "", lines, str(path))
    cli: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key, value = item.split("=", 1)
        node = cli
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(value)
    _validate(cli, schema, "", {}, "command line")
    defaults, _ = _defaults_for(user, cli)
    cfg = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.create(user), OmegaConf.create(cli))
    if required:
        missing = _missing(cfg)
        if cfg.stage == "finetune":
            missing = [m for m in missing if not m.startswith("model.l0_module.")]
        if missing:
            raise ConfigError(f"{path}: missing required config key(s): {', '.join(missing)}")
    if cfg.stage not in ("prune", "finetune"):
        raise ConfigError(f"{path}: stage must be 'prune' or 'finetune', got {cfg.stage!r}")
    if cfg.export.dtype not in EXPORT_DTYPES:
        on_cli = isinstance(cli.get("export"), dict) and "dtype" in cli["export"]
        where = "command line" if on_cli else (f"{path}:{lines['export.dtype']}" if "export.dtype" in lines else str(path))
        raise ConfigError(f"{where}: export.dtype must be one of {', '.join(EXPORT_DTYPES)}, got {cfg.export.dtype!r}")
    for key, ok, want in (("onnx", isinstance(cfg.export.onnx, bool), "true or false"),
                          ("quantize", cfg.export.quantize in (None,) + QUANTIZE_CHOICES,
                           "null or one of " + ", ".join(QUANTIZE_CHOICES))):
        if not ok:
            on_cli = isinstance(cli.get("export"), dict) and key in cli["export"]
            where = "command line" if on_cli else f"{path}:{lines.get('export.' + key, '?')}"
            raise ConfigError(f"{where}: export.{key} must be {want}, got {cfg.export[key]!r}")
    if cfg.export.quantize is not None and not cfg.export.onnx:
        raise ConfigError(f"{path}: export.quantize={cfg.export.quantize} quantizes the ONNX model: set export.onnx: true")
    if cfg.run_name is None:
        cfg.run_name = default_run_name(cfg, path)
    return cfg


def _parse_value(text: str) -> Any:
    """YAML scalar, plus floats like 1e-4 that YAML 1.1 reads as strings."""
    if not text:
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def to_container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg) else cfg


def default_run_name(cfg: DictConfig, path: Path) -> str:
    """A finetune of ``experiments/<run>/model`` is ``<run>_finetune``, so each prune target gets its own
    finetune folder (and export); otherwise the config file's name."""
    if cfg.stage == "finetune" and isinstance(cfg.model.name_or_path, str):
        source = Path(cfg.model.name_or_path)
        if source.name == "model" and source.parent.name:
            return f"{source.parent.name}_finetune"
        if source.name and not str(cfg.model.name_or_path).startswith("embedded:"):
            return f"{source.name}_finetune"
    return path.stem


def fill_run_name(value: str | None, run_name: str) -> str | None:
    return None if value is None else value.replace("{run_name}", run_name)
