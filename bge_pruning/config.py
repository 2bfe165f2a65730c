"""Run configuration: typed defaults, YAML loading, ``key=value`` overrides and validation.

Every key a run can set is a field of the dataclasses below (``RunConfig`` and its sections, after
llm-foundry's ``TrainConfig``): its type, its default (``MISSING`` when the user must give it) and, where a
type is not enough, a ``Rule`` (a range, a set of choices, a Composer duration). ``load_config`` merges
defaults <- YAML file <- ``key=value`` overrides through ``OmegaConf.structured``, so every mistake is one
``ConfigError`` line naming the key, where it was given (``file:line`` or ``override KEY=VALUE``), what it must
be and the value, before any model or data loads:

    configs/x.yaml:12: train.lr must be a float >= 0, got 'fast'
    override train.batch_size=0: train.batch_size must be an integer > 0, got 0

Unknown keys name the file and line and list the valid keys beside them (with a "did you mean"), and a
duplicate YAML key names both lines, so a typo never costs an hour of training with a silently ignored
setting. String values may use ``${run_name}`` (OmegaConf interpolation) as well as the older ``{run_name}``.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from .errors import ConfigError

# The dtypes an export can be saved in (bge_pruning.export.plan.EXPORT_DTYPES, kept light here so a bad
# value is refused before torch or any model loads).
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
# Composer precisions this project trains in (composer.core.Precision without amp_fp8, which needs
# TransformerEngine); amp_fp16 needs a GPU.
PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")
STAGES = ("prune", "finetune")
QUANTIZE_CHOICES = ("int8",)  # bge_pruning.export.onnx_export.QUANTIZE_CHOICES (that module imports torch)

# Optional[int] and int | None: the annotations below are written the PEP 604 way, OmegaConf may hand back either.
UNION_TYPES = (Union, UnionType)
REQUIRED = MISSING  # "???": a value the user must give


# ----------------------------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    """What a value must be beyond its type: ``ok(value)`` and the words for the error (``text``)."""

    ok: Callable[[Any], bool]
    text: str


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def greater(bound: float, what: str = "a float") -> Rule:
    return Rule(lambda v: _number(v) and v > bound, f"{what} > {bound:g}")


def at_least(bound: float, what: str = "a float") -> Rule:
    return Rule(lambda v: _number(v) and v >= bound, f"{what} >= {bound:g}")


def within(lo: float, hi: float, what: str = "a float") -> Rule:
    return Rule(lambda v: _number(v) and lo <= v <= hi, f"{what} in [{lo:g}, {hi:g}]")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, f"one of {', '.join(choices)}")


NON_EMPTY = Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")


def _composer_time(value: Any, int_unit: str) -> Any:
    """``value`` as a Composer ``Time`` (``ensure_time``: a time string such as ``500ba``, or an int counted in
    ``int_unit``); None when Composer refuses it. Composer imports torch, so it is imported only here."""
    from composer.core.time import ensure_time

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    try:
        return ensure_time(value, int_unit)
    except (ValueError, TypeError):
        return None


# Training-time units (Composer's TimeUnit without wall-clock seconds, which its schedulers refuse; note that
# Composer reads a bare "5" as 50 seconds).
TIME_UNITS = ("ep", "ba", "sp", "tok", "iter")


def duration(int_unit: str | None = "ep", *, positive: bool = True, units: tuple[str, ...] = TIME_UNITS,
             example: str = "500ba, 2ep or 10000sp") -> Rule:
    """A Composer duration (``composer.core.time.ensure_time``) in ``units``, > 0 (or >= 0); a fraction of the
    run (``dur``, when in ``units``) is in [0, 1]. ``int_unit``: the unit of a plain integer (None: refused,
    for keys Composer reads only as time strings)."""

    def ok(v: Any) -> bool:
        if int_unit is None and not isinstance(v, str):
            return False
        t = _composer_time(v, int_unit or "ba")
        if t is None or t.unit.value not in units:
            return False
        if t.unit.value == "dur" and t.value > 1:
            return False
        return t.value > 0 if positive else t.value >= 0

    return Rule(ok, f"a Composer duration {'> 0' if positive else '>= 0'} such as {example}")


def spec(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
         rule: Rule | None = None) -> Any:
    """A dataclass field with its ``Rule`` in the metadata (checked by ``load_config`` after the merge)."""
    meta = {"rule": rule} if rule else {}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------- schema

@dataclass
class UniformTarget:
    """``model.l0_module.target_model`` of a uniform target shape: every kept layer keeps the same widths."""

    n_layers: int = MISSING
    n_heads: int = MISSING
    intermediate_size: int = MISSING


@dataclass
class GlobalTarget:
    """A global target: ``{n_params: N}`` or ``{share: s}`` of the base's encoder-layer parameters (one of them;
    bge_pruning.models.l0_module.parse_target checks the range against the base)."""

    n_params: int | None = None
    share: int | float | None = None  # kept as written (2 stays 2 in parse_target's message)


@dataclass
class MixedTarget:
    """Keys of both kinds: accepted here so that parse_target can name the mix in one message."""

    n_layers: int | None = None
    n_heads: int | None = None
    intermediate_size: int | None = None
    n_params: int | None = None
    share: int | float | None = None


SHAPE_KEYS = ("n_layers", "n_heads", "intermediate_size")
GLOBAL_KEYS = ("n_params", "share")
TARGET_MODEL = ("model", "l0_module", "target_model")


@dataclass
class L0ModuleConfig:
    # layer | head | intermediate | head_layer, mlp (whole attention / FFN sublayers; global target only)
    pruning_modules: list[str] = spec(factory=lambda: ["layer", "head", "intermediate"])
    start_sparsity: float = spec(0.0, rule=Rule(lambda v: _number(v) and 0 <= v < 1, "a float in [0, 1)"))
    lagrangian_warmup_steps: int | str = spec(
        "0ba", rule=duration("ba", positive=False, units=("ba",), example="200 or 200ba (batches)"))
    # Deterministic masks: the target (uniform: exactly the target widths; global: the parameter budget)
    # or, when false, the expected number of units per row (CoFi).
    eval_target_model: bool = True
    # UniformTarget, or a GlobalTarget ({n_params: N} or {share: s}); load_config picks the kind from the keys given.
    target_model: Any = None


@dataclass
class HeadsConfig:
    sparse: bool = False
    colbert: bool = False


@dataclass
class VocabConfig:
    """Vocabulary pruning before training (bge_pruning.vocab): keep the tokens these corpora use. The
    distillation teacher is trimmed to the same ids, so both see exactly the same tokens."""

    corpus: Any = None  # a path or a list of corpus specs
    min_count: int = spec(1, rule=at_least(1, "an integer"))
    max_vocab: int | None = spec(None, rule=greater(0, "an integer"))
    keep_tokens: str | None = None


@dataclass
class ModelConfig:
    name_or_path: str = spec(MISSING, rule=NON_EMPTY)  # hub id, local directory, or "embedded:all-MiniLM-L6-v2"
    pooling: str = spec("cls", rule=one_of("cls", "mean"))  # cls (BGE-M3) | mean (MiniLM / sentence-transformers)
    normalize: bool = True
    trust_remote_code: bool = False  # run modeling code from model directories other than this project's exports
    teacher: str | None = None  # distillation teacher; default: the initial weights (prune) / the export's base
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    l0_module: L0ModuleConfig = field(default_factory=L0ModuleConfig)


WEIGHT = at_least(0)  # a loss weight


@dataclass
class LossConfig:
    cosent: float = spec(1.0, rule=WEIGHT)  # STS pairs: CoSENT on dense cosine
    cosent_scale: float = spec(20.0, rule=greater(0))
    infonce: float = spec(1.0, rule=WEIGHT)  # retrieval: InfoNCE on dense scores (in-batch + hard negatives)
    temperature: float = spec(0.02, rule=greater(0))  # BGE-M3's
    sparse: float = spec(0.0, rule=WEIGHT)  # weight of InfoNCE on sparse scores (needs model.heads.sparse)
    colbert: float = spec(0.0, rule=WEIGHT)  # weight of InfoNCE on colbert scores (needs model.heads.colbert)
    self_distill: float = spec(0.0, rule=WEIGHT)  # BGE-M3 unified self-distillation toward dense+sparse+colbert
    distill_embedding: float = spec(0.0, rule=WEIGHT)  # teacher: MSE between normalized dense embeddings (x dim)
    distill_similarity: float = spec(0.0, rule=WEIGHT)  # teacher: KL between in-batch similarity distributions
    distill_hidden: float = spec(0.0, rule=WEIGHT)  # teacher: MSE between last-layer token states (real tokens)
    # teacher: CoFi's layer-wise distillation (bge_pruning.models.losses.layer_distillation_loss): each
    # chosen teacher layer pulls the closest student layer (order kept) through a learned D x D map
    distill_layers: float = spec(0.0, rule=WEIGHT)
    distill_layers_teacher: list[int] | None = None  # teacher layers (0-based); None: 4 evenly spaced, last included
    # teacher's BGE-M3 heads (its sparse_linear.pt / colbert_linear.pt on its own token states): MSE of the
    # per-token lexical weights / of the colbert vectors, real tokens only (needs model.heads.sparse / colbert)
    distill_sparse: float = spec(0.0, rule=WEIGHT)
    distill_colbert: float = spec(0.0, rule=WEIGHT)
    distill_temperature: float = spec(0.05, rule=greater(0))


@dataclass
class EvalConfig:
    sts: dict[str, Any] | None = None  # {source, split, max_examples}
    retrieval: dict[str, Any] | None = None  # {source, split, n_negatives, max_examples}


@dataclass
class DataConfig:
    max_length: int = spec(128, rule=at_least(2, "an integer"))
    train: Any = MISSING  # list of sources, checked by bge_pruning.data.parse_data_config
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_batch_size: int = spec(64, rule=greater(0, "an integer"))


def _microbatch(v: Any) -> bool:
    return v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v > 0)


@dataclass
class TrainConfig:
    device: str = spec("auto", rule=one_of("auto", "cpu", "gpu"))
    precision: str = spec("fp32", rule=one_of(*PRECISIONS))
    batch_size: int = spec(32, rule=greater(0, "an integer"))  # per device
    device_train_microbatch_size: int | str | None = spec(
        None, rule=Rule(_microbatch, "an integer > 0 or 'auto' (GPU)"))
    max_duration: int | str = spec("500ba", rule=duration("ep"))
    optimizer: str = spec("decoupled_adamw", rule=one_of("decoupled_adamw"))
    lr: float = spec(2.0e-5, rule=at_least(0))
    l0_lr: float | None = spec(None, rule=at_least(0))  # mask log-alphas; LLM-Shearing uses lag_lr for both
    lag_lr: float = spec(1.0, rule=at_least(0))  # Lagrange multipliers, applied as -lag_lr (gradient ascent)
    # clip the global gradient norm (Composer's GradientClipping); LLM-Shearing uses 1.0
    grad_clip_norm: float | None = spec(None, rule=Rule(lambda v: _number(v) and v > 0, "a positive number"))
    weight_decay: float = spec(0.0, rule=at_least(0))  # decoupled (Composer): use ~1e-5, not 0.01
    betas: list[float] = spec(factory=lambda: [0.9, 0.999], rule=Rule(
        lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v), "two floats in [0, 1)"))
    eps: float = spec(1.0e-8, rule=greater(0))
    scheduler: str = spec("linear", rule=one_of("linear", "cosine", "constant"))
    warmup: str = spec("0.1dur", rule=duration(None, positive=False, units=TIME_UNITS + ("dur",),
                                               example="0.1dur or 100ba"))
    eval_interval: int | str = spec("100ba", rule=duration("ep"))
    eval_first: bool = False
    save_folder: str = "experiments/{run_name}/checkpoints"
    save_interval: int | str = spec("500ba", rule=duration("ep"))
    save_num_checkpoints_to_keep: int = spec(-1, rule=at_least(-1, "an integer"))
    save_overwrite: bool = False
    autoresume: bool = False
    load_path: str | None = None
    progress_bar: bool = True
    log_to_console: bool = False
    console_log_interval: int | str = spec("10ba", rule=duration("ep"))
    log_file: str | None = "experiments/{run_name}/train_log.jsonl"
    fsdp_config: dict[str, Any] | None = None  # passed to Composer as it is
    dist_timeout: float = spec(600.0, rule=greater(0))


@dataclass
class ExportConfig:
    output_dir: str = "experiments/{run_name}/model"
    vanilla: bool = False
    overwrite: bool = False
    dtype: str = spec("float32", rule=one_of(*EXPORT_DTYPES))  # the saved weights' dtype (verified against float32)
    onnx: bool = False  # also write onnx/model.onnx, checked with onnxruntime against torch (the 'onnx' extra)
    # int8: with onnx, also onnx/model_qint8_avx512_vnni.onnx (dynamic quantization)
    quantize: str | None = spec(None, rule=Rule(lambda v: v in QUANTIZE_CHOICES,
                                                   "null or one of " + ", ".join(QUANTIZE_CHOICES)))


@dataclass
class ReportConfig:
    before_after: bool = False  # evaluate base vs pruned on data.eval.sts at the end and print a table


@dataclass
class RunConfig:
    """The whole run (``train.py CONFIG``); sections below, free-form mappings where a library reads them."""

    run_name: str | None = None  # default: the config file's name (a finetune: <source run>_finetune)
    seed: int = 17
    stage: str = spec("prune", rule=one_of(*STAGES))  # prune: masks, then prune physically | finetune: no masks
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # Composer loggers and monitors, as llm-foundry's: each entry's mapping is passed to the class as keyword
    # arguments, e.g. loggers: {tensorboard: {log_dir: runs/x}}, callbacks: {lr_monitor: {}}.
    loggers: dict[str, Any] | None = None  # tensorboard (TensorboardLogger) | mlflow | wandb
    callbacks: dict[str, Any] | None = None  # lr_monitor | speed_monitor | memory_monitor
    report: ReportConfig = field(default_factory=ReportConfig)


# Keys whose values are mappings passed through without key validation.
FREE_KEYS = {"train.fsdp_config", "loggers", "callbacks"}


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _schema(cls: type) -> dict[str, Any]:
    """Nested ``{key: sub-schema or None}`` of a dataclass (the keys ``_validate`` accepts); ``target_model``
    accepts the keys of both kinds of target."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        out[f.name] = _schema(tp) if _is_section(tp) else None
        if cls is L0ModuleConfig and f.name == "target_model":
            out[f.name] = _schema(MixedTarget)
    return out


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    import typing

    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _field_at(parts: list[str], target: type = MixedTarget) -> tuple[Any, dataclasses.Field | None]:
    """(type hint, dataclass field) of a dotted key, or (None, None) inside a free-form value; ``target``: the
    kind of ``model.l0_module.target_model`` this config has."""
    cls: Any = RunConfig
    tp, fld = None, None
    for part in parts:
        if cls is L0ModuleConfig and part == "target_model":
            cls, tp, fld = target, target, None
            continue
        if not _is_section(cls):
            return None, None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None, None
        fld = fields[part]
        tp = _hints(cls)[part]
        cls = tp
    return tp, fld


def _describe(tp: Any) -> str:
    """Words for a type hint: ``Optional[int]`` -> 'an integer or null'."""
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in UNION_TYPES:
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_describe(a) for a in inner)
        return f"{text} or null" if type(None) in args else text
    if origin is list:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if _is_section(tp):
        return "a mapping of keys (a section)"
    return {int: "an integer", float: "a float", bool: "true or false", str: "a string"}.get(tp, "a value")


def _expected(tp: Any, fld: dataclasses.Field | None) -> str:
    rule = fld.metadata.get("rule") if fld is not None else None
    if rule is None:
        return _describe(tp)
    import typing

    optional = typing.get_origin(tp) in UNION_TYPES and type(None) in typing.get_args(tp)
    return rule.text + (" or null" if optional and "null" not in rule.text else "")


class DuplicateKeyError(ConfigError, yaml.YAMLError):
    """A mapping names the same key twice (YAML would silently keep the last value); ``load_config`` adds the path."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses duplicate keys (``lr: 5.0e-5`` then ``lr: 1.0`` is a mistake, not 1.0) and
    reads ``1e-4`` as a float, as YAML 1.2 does (YAML 1.1, PyYAML's, needs a dot: ``1.0e-4``)."""

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


_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


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


class _Places:
    """Where each key was given: ``file:line`` in the YAML file, ``override KEY=VALUE`` on the command line."""

    def __init__(self, path: Path, lines: dict[str, int], overrides: dict[str, str]) -> None:
        self.path, self.lines, self.overrides = path, lines, overrides

    def __call__(self, key: str, source: str = "any") -> str:
        parts = _split_key(key)
        for n in range(len(parts), 0, -1):  # the key itself, else the closest parent that was given
            dotted = ".".join(parts[:n])
            if source in ("any", "cli") and dotted in self.overrides:
                return f"override {self.overrides[dotted]}"
            if source in ("any", "file") and dotted in self.lines:
                return f"{self.path}:{self.lines[dotted]}"
        return "command line" if source == "cli" else str(self.path)


def _split_key(key: str) -> list[str]:
    """``train.betas[1]`` -> ['train', 'betas'] (a list item is located and typed by its list)."""
    return [p for p in re.sub(r"\[\d+\]", "", key).split(".") if p]


def _lookup(tree: Any, parts: list[str]) -> Any:
    for p in parts:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _check_sections(tree: dict[str, Any], cls: type, prefix: str, where: Callable[[str], str]) -> None:
    """A section given a scalar (``train=5``) is refused here, where the key is known (OmegaConf's error is not)."""
    for key, value in tree.items():
        tp, _ = _field_at(_split_key(prefix + key))
        dotted = prefix + key
        if _is_section(tp) or dotted == "model.l0_module.target_model":
            if not isinstance(value, dict):
                raise ConfigError(f"{where(dotted)}: {dotted} must be a mapping of keys (the {dotted}.* section), "
                                  f"got {value!r}")
            if _is_section(tp):
                _check_sections(value, tp, dotted + ".", where)


def _merge(base: DictConfig, tree: dict[str, Any], where: Callable[[str], str], target: type) -> DictConfig:
    """``OmegaConf.merge`` with a wrong type turned into one line: place, key, expected type, value."""
    try:
        return OmegaConf.merge(base, OmegaConf.create(tree))
    except oc_errors.OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        parts = _split_key(key)
        tp, fld = _field_at(parts, target)
        value = _lookup(tree, parts)
        if not key or tp is None:  # not a typed key: OmegaConf's own words, first line
            raise ConfigError(f"{where(key)}: {key or 'config'}: {str(e).splitlines()[0]}") from None
        raise ConfigError(f"{where(key)}: {key} must be {_expected(tp, fld)}, got {value!r}") from None


def _check_rules(cfg: DictConfig, cls: type, prefix: str, where: Callable[[str], str]) -> None:
    """The ranges, choices and durations of the fields' ``Rule``s, on the merged (and resolved) values."""
    for f in dataclasses.fields(cls):
        dotted = prefix + f.name
        if OmegaConf.is_missing(cfg, f.name):
            continue
        value = cfg[f.name]
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            _check_rules(value, tp, dotted + ".", where)
            continue
        rule = f.metadata.get("rule")
        if rule is not None and value is not None:
            plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            if not rule.ok(plain):
                raise ConfigError(f"{where(dotted)}: {dotted} must be {_expected(tp, f)}, got {plain!r}")


def _target_kind(*trees: Any) -> type:
    given: set[str] = set()
    for tree in trees:
        target = _lookup(tree, list(TARGET_MODEL))
        if isinstance(target, dict):
            given |= set(target)
    if given & set(GLOBAL_KEYS):
        return MixedTarget if given & set(SHAPE_KEYS) else GlobalTarget
    return UniformTarget


def parse_overrides(overrides: list[str] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """``["train.lr=1e-4", ...]`` -> (nested dict of values, {dotted key: the override as typed})."""
    cli: dict[str, Any] = {}
    items: dict[str, str] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key, value = item.split("=", 1)
        try:
            parsed = _parse_value(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item}: not a valid YAML value ({str(e).splitlines()[0]})") from None
        node = cli
        parts = key.split(".")
        for n, part in enumerate(parts[:-1]):
            items.setdefault(".".join(parts[:n + 1]), item)
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item}: {'.'.join(parts[:n + 1])} is given a value by another override")
        node[parts[-1]] = parsed
        items[key] = item

        def record(prefix: str, value: Any) -> None:  # the keys of a mapping value come from this override too
            if isinstance(value, dict):
                for k, v in value.items():
                    items[f"{prefix}.{k}"] = item
                    record(f"{prefix}.{k}", v)

        record(key, parsed)
    return cli, items


def load_config(path: str | Path, overrides: list[str] | None = None, required: bool = True) -> DictConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, typed and validated; returns a resolved DictConfig.

    The result is the structured config of ``RunConfig`` (OmegaConf keeps checking types on assignment).
    Raises ``ConfigError`` with one line for an unknown, duplicate, missing or mistyped key or a value out of
    range, naming the place (``file:line`` or ``override KEY=VALUE``).
    """
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
    schema = _schema(RunConfig)
    _validate(user, schema, "", lines, str(path))
    cli, items = parse_overrides(overrides)
    _validate(cli, schema, "", {}, "command line")
    where = _Places(path, lines, items)
    _check_sections(user, RunConfig, "", lambda k: where(k, "file"))
    _check_sections(cli, RunConfig, "", lambda k: where(k, "cli"))

    base = OmegaConf.structured(RunConfig)
    target = _target_kind(user, cli)
    base.model.l0_module.target_model = OmegaConf.structured(target)
    cfg = _merge(base, user, lambda k: where(k, "file"), target)
    cfg = _merge(cfg, cli, lambda k: where(k, "cli"), target)
    if cfg.run_name is None and cfg.stage in STAGES:
        cfg.run_name = default_run_name(cfg, path)
    _resolve(cfg, where)
    if required:
        missing = _missing(cfg)
        if cfg.stage == "finetune":
            missing = [m for m in missing if not m.startswith("model.l0_module.")]
        if missing:
            raise ConfigError(f"{path}: missing required config key(s): {', '.join(missing)}")
    _check_rules(cfg, RunConfig, "", where)
    if cfg.export.quantize is not None and not cfg.export.onnx:
        raise ConfigError(f"{path}: export.quantize={cfg.export.quantize} quantizes the ONNX model: "
                          "set export.onnx: true")
    return cfg


def _resolve(cfg: DictConfig, where: Callable[[str], str]) -> None:
    """Resolve ``${...}`` interpolations in place (``experiments/${run_name}/hf``), so every later reader and the
    saved config.yaml see plain values; a reference to no key is one line naming the key that holds it."""
    try:
        OmegaConf.resolve(cfg)
    except oc_errors.OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{where(key)}: {key}: cannot resolve an interpolation: {str(e).splitlines()[0]}") from None


def _parse_value(text: str) -> Any:
    """An override's value as YAML (``1e-4`` is a float, as in the file); an empty value is null."""
    if not text:
        return None
    return yaml.load(text, Loader=_UniqueKeyLoader)


def to_container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg) else cfg


def default_run_name(cfg: DictConfig, path: Path) -> str:
    """A finetune of ``experiments/<run>/model`` is ``<run>_finetune``, so each prune target gets its own
    finetune folder (and export); otherwise the config file's name."""
    if cfg.stage == "finetune" and isinstance(cfg.model.name_or_path, str) and not OmegaConf.is_missing(
            cfg.model, "name_or_path"):
        source = Path(cfg.model.name_or_path)
        if source.name == "model" and source.parent.name:
            return f"{source.parent.name}_finetune"
        if source.name and not str(cfg.model.name_or_path).startswith("embedded:"):
            return f"{source.name}_finetune"
    return path.stem


def fill_run_name(value: str | None, run_name: str) -> str | None:
    """The older ``{run_name}`` placeholder (``${run_name}`` is resolved by ``load_config``)."""
    return None if value is None else value.replace("{run_name}", run_name)
