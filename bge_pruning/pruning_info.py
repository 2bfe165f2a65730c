"""``pruning_info.json``: what an export is, what was kept and how it was checked, in one typed record.

The exporter writes it (``export.hf_export``); the model card, the evaluation (mteb names, ONNX parameter
counts), the benchmarks, ``extract_pruned_model.py``, vocabulary trimming and a finetune of a pruned export read it
through ``PruningInfo.load``. Every field is documented here. Loading is tolerant: a field an older export lacks
takes its default, and a key this version does not know is kept in ``extra`` and written back unchanged, so older
and newer exports both load. Pure JSON, no torch: the config checks and the plots import it cheaply.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ModelDirError

PRUNING_INFO_FILE = "pruning_info.json"
FORMAT_VERSION = 1

# Fields written only when set (an export without ONNX has no "onnx" key, a run without training no
# "training_steps"); every other field is always written, None included, as the export always wrote it.
_OPTIONAL = ("kept_sublayers", "onnx", "evaluation", "training_steps", "pruning_modules", "global_target",
             "convergence", "vocabulary", "pruned_by")


@dataclass
class PruningInfo:
    """The contents of an export's ``pruning_info.json``.

    Args:
        format_version: version of this layout (1).
        base_model: the model that was pruned (``embedded:NAME``, a Hub id or a local path), as the run named it.
        base_model_hub_id: its Hub id where one is known (the model card's ``base_model``), else None.
        family: ``bert``, ``xlm-roberta`` or ``mpnet`` (``models.families``).
        export: how the directory was written: ``class`` / ``config_class`` (what ``AutoModel`` builds),
            ``model_type``, ``trust_remote_code`` (it ships ``modeling_pruned.py``), ``vanilla`` (zero-padded to a
            stock shape), ``dtype`` (of the saved weights), ``source_dtype`` (of the model exported) and
            ``padded_params`` (zeros added by ``vanilla``).
        pooling: the sentence embedding's pooling, ``cls`` or ``mean``.
        normalize: whether the sentence embedding is L2-normalised.
        heads: the BGE-M3 head files: ``{"sparse": bool, "colbert": bool, "colbert_dim": int}``.
        base_shape: ``EncoderShape.to_dict()`` of the model before pruning.
        target_shape: ``{n_layers, n_heads, intermediate_size}`` the run aimed at (None: no fixed shape).
        achieved_shape: ``EncoderShape.to_dict()`` after pruning.
        exported_shape: the shape of the saved weights (the achieved one, or its zero-padded ``vanilla`` form).
        kept_layers: base indices of the kept layers.
        kept_heads: per kept layer, the base indices of its kept heads.
        kept_sublayers: ``{"attention": [bool], "ffn": [bool]}`` per kept layer, when sublayer gates were pruned.
        params: ``shapes.count_params`` of ``before`` / ``after`` / ``exported`` (``total``, ``encoder_layers``, ...).
        kept_encoder_share: encoder-layer parameters after / before (None for a model without encoder layers).
        verification: the reload check: ``dtype``, ``max_abs_diff`` (saved model vs the masked float32 one),
            ``pruned_forward_max_abs_diff``, ``atol``, ``probe_texts`` and ``real_tokens``.
        usage: one line each on loading it with ``transformers``, ``sentence_transformers`` and ``flag_embedding``.
        onnx: ``export.onnx_export``'s record of ``onnx/model.onnx`` (and its quantized forms), when written.
        evaluation: ``{"source", "rows": [{task, metric, base, pruned}]}`` added by ``model_card.record_evaluation``.
        training_steps: optimizer steps of the run that produced it.
        pruning_modules: the L0 module's ``pruning_modules`` (``layer``, ``head``, ...).
        global_target: a global target as given, with the expected and achieved size and share.
        convergence: the L0 module's convergence report at the end of the run.
        vocabulary: the record of a vocabulary trim (``vocab.prune_vocabulary`` or ``model.vocab``).
        pruned_by: for an export of an already pruned model, the earlier export's shapes, kept units and counts.
        extra: any other key (an older or newer export's, or the caller's ``info``), kept as it was.
    """

    format_version: int = FORMAT_VERSION
    base_model: str | None = None
    base_model_hub_id: str | None = None
    family: str | None = None
    export: dict[str, Any] = field(default_factory=dict)
    pooling: str | None = None
    normalize: bool | None = None
    heads: dict[str, Any] = field(default_factory=dict)
    base_shape: dict[str, Any] | None = None
    target_shape: dict[str, Any] | None = None
    achieved_shape: dict[str, Any] | None = None
    exported_shape: dict[str, Any] | None = None
    kept_layers: list[int] = field(default_factory=list)
    kept_heads: list[list[int]] = field(default_factory=list)
    kept_sublayers: dict[str, list[bool]] | None = None
    params: dict[str, dict[str, int]] = field(default_factory=dict)
    kept_encoder_share: float | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, str] = field(default_factory=dict)
    onnx: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    training_steps: int | None = None
    pruning_modules: list[str] | None = None
    global_target: dict[str, Any] | None = None
    convergence: dict[str, Any] | None = None
    vocabulary: dict[str, Any] | None = None
    pruned_by: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # Fields the exporter's caller supplies (``export_pruned_model(info=...)``, from the training run): the fields
    # the exporter computes are all the others but ``extra``. The caller may also set these two computed ones.
    RUN_FIELDS = ("training_steps", "pruning_modules", "global_target", "convergence", "vocabulary", "pruned_by")
    CALLER_FIELDS = ("base_model", "target_shape")

    @classmethod
    def computed_fields(cls) -> set[str]:
        """The keys the exporter computes (a caller's ``info`` may not contradict them)."""
        return {f.name for f in fields(cls)} - set(cls.RUN_FIELDS) - {"extra"}

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``pruning_info.json`` (``extra``'s keys at the top level)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL:
                continue
            out[f.name] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: str | Path = PRUNING_INFO_FILE) -> PruningInfo:
        """A ``PruningInfo`` from a loaded JSON object: missing fields take their defaults, unknown keys go to
        ``extra``. ``ModelDirError`` (naming ``source``) when ``obj`` is not a JSON object."""
        if not isinstance(obj, Mapping):
            raise ModelDirError(f"{source} must hold a JSON object, got {type(obj).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in obj.items() if k in known},
                   extra={k: v for k, v in obj.items() if k not in known})

    @classmethod
    def load(cls, directory: str | Path) -> PruningInfo | None:
        """The ``pruning_info.json`` of an export directory, or None when it has none (a plain model).

        Raises:
            ModelDirError: the file is not valid JSON or not a JSON object (the message names the file).
        """
        path = Path(directory) / PRUNING_INFO_FILE
        if not path.is_file():
            return None
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelDirError(f"{path} is not valid JSON ({e}); restore it from the export, or delete it to treat "
                                "the directory as a plain model") from None
        return cls.from_json(obj, path)

    def write(self, directory: str | Path) -> Path:
        """Write ``pruning_info.json`` into ``directory``, replacing it atomically (written beside it, then renamed:
        a reader never sees half a file)."""
        path = Path(directory) / PRUNING_INFO_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def merged(self, info: Mapping[str, Any]) -> PruningInfo:
        """A copy with ``info``'s keys set: a field's key sets the field, any other key goes to ``extra``."""
        data = self.to_json()
        data.update(info)
        return type(self).from_json(data)

    # ------------------------------------------------------------------ reading
    def pick(self, *keys: str) -> dict[str, Any]:
        """The fields (or ``extra`` keys) among ``keys`` that the file has, as JSON (e.g. what a re-export records
        of the export it started from, ``pruned_by``)."""
        data = self.to_json()
        return {k: data[k] for k in keys if k in data}

    @property
    def exported_params(self) -> dict[str, int]:
        """``params["exported"]``: the counts of the saved weights (padding included), {} for an old file."""
        return dict((self.params or {}).get("exported") or {})
