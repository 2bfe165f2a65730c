"""The BERT-family encoders this project prunes, described in one place.

Everything that differs between families (the HF classes, the pruned classes of the export, the names of a
layer's parameters, how positions are numbered, whether there are token types, whether attention has a
relative position bias) is read from a :class:`Family` entry, never from ``"roberta" in model_type``-style
checks. Adding a family is one more entry here plus its attention module in ``masked_encoder.py`` (when
its layout differs) and its pruned class in ``export/modeling_pruned.py``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PRUNED_PREFIX = "pruned-"

# Names of a layer's parameters (relative to ``encoder.layer.N.``) in each attention layout.
_BERT_KEYS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
              "attention_output": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
              "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}
_MPNET_KEYS = {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
               "attention_output": "attention.attn.o", "attention_norm": "attention.LayerNorm",
               "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}


@dataclass(frozen=True)
class Family:
    """One encoder family.

    Attributes:
        model_type: HF ``config.model_type`` of the stock model, also written by the export's per-layer-width
            config class (so AutoConfig / AutoTokenizer need no remote code); exports of earlier versions wrote
            ``"pruned-" + model_type``, which is still read.
        config_class / model_class: the stock ``transformers`` classes.
        pruned_config_class / pruned_model_class: the per-layer-width classes in ``export/modeling_pruned.py``.
        attention: the attention layout, ``"bert"`` (``attention.self.{query,key,value}``,
            ``attention.output.{dense,LayerNorm}``) or ``"mpnet"`` (``attention.attn.{q,k,v,o}``,
            ``attention.LayerNorm``); ``keys`` gives the parameter names of each.
        positions: ``"absolute"`` (0..T-1) or ``"padding"`` (RoBERTa's rule: real tokens count from
            ``padding_idx + 1``, padding gets ``padding_idx``).
        padding_idx: the pad id the position rule uses when the model fixes it (MPNet: always 1); None = the
            config's ``pad_token_id``.
        token_types: whether the model has ``embeddings.token_type_embeddings``.
        relative_attention_bias: whether ``encoder.relative_attention_bias`` (an ``nn.Embedding(buckets,
            heads)`` shared by all layers, T5-style buckets) is added to the attention scores.
    """

    model_type: str
    config_class: str
    model_class: str
    pruned_config_class: str
    pruned_model_class: str
    attention: str
    positions: str
    padding_idx: int | None
    token_types: bool
    relative_attention_bias: bool

    @property
    def pruned_model_type(self) -> str:
        return PRUNED_PREFIX + self.model_type

    @property
    def keys(self) -> Mapping[str, str]:
        return _MPNET_KEYS if self.attention == "mpnet" else _BERT_KEYS

    def position_padding_idx(self, config: Any) -> int:
        return self.padding_idx if self.padding_idx is not None else int(config.pad_token_id)

    def max_sequence_length(self, config: Any) -> int:
        """Longest input the position embeddings allow (the padding rule spends ``padding_idx + 1`` rows)."""
        limit = int(config.max_position_embeddings)
        if self.positions == "padding":
            limit -= self.position_padding_idx(config) + 1
        return limit


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("bert", "BertConfig", "BertModel", "PrunedBertConfig", "PrunedBertModel",
           attention="bert", positions="absolute", padding_idx=None, token_types=True, relative_attention_bias=False),
    Family("xlm-roberta", "XLMRobertaConfig", "XLMRobertaModel", "PrunedXLMRobertaConfig", "PrunedXLMRobertaModel",
           attention="bert", positions="padding", padding_idx=None, token_types=True, relative_attention_bias=False),
    Family("mpnet", "MPNetConfig", "MPNetModel", "PrunedMPNetConfig", "PrunedMPNetModel",
           attention="mpnet", positions="padding", padding_idx=1, token_types=False, relative_attention_bias=True),
)}

# Stock model types first, then what this project's exports of them said before they kept the stock type.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = (tuple(FAMILIES) + tuple(f.pruned_model_type for f in FAMILIES.values()))


def find_family(config_or_type: Any) -> Family | None:
    """The family of a config (or a ``model_type`` string), stock or pruned; None when unsupported."""
    model_type = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
    model_type = str(model_type or "")
    if model_type.startswith(PRUNED_PREFIX):
        model_type = model_type[len(PRUNED_PREFIX):]
    return FAMILIES.get(model_type)


def family_of(config_or_type: Any) -> Family:
    """Like :func:`find_family`, but an unsupported model type is a ``ValueError`` naming it."""
    family = find_family(config_or_type)
    if family is None:
        name = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
        raise ValueError(f"model_type {name!r} is not a supported encoder family "
                         f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    return family


def max_sequence_length(config: Any) -> int:
    """Longest input of a config's position embeddings; unknown families count from 0 (BERT's rule)."""
    family = find_family(config)
    return family.max_sequence_length(config) if family else int(config.max_position_embeddings)
