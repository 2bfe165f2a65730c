"""Write a planned export into its (temporary) directory: the model files, the tokenizer, the BGE-M3 head files,
the sentence-transformers files, ``pruning_info.json`` and the model card.

The weights are written once, here (``model.safetensors``, HF names, the plan's dtype). The sentence-transformers
files are written by sentence-transformers itself (``SentenceTransformer(modules=[...]).save``), with its
Transformer module told not to save its model again.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..models.families import family_of
from ..models.heads import COLBERT_FILE, SPARSE_FILE
from ..pruning_info import PruningInfo
from ..shapes import count_params, kept_share
from ..trust import MODELING_FILE
from . import modeling_pruned
from .model_card import hub_id, source_dir
from .model_card import render as render_card
from .plan import EXPORT_DTYPES, ExportPlan
from .verify import ExportError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"


def modeling_source() -> str:
    """Text of the modeling file copied into custom-class exports."""
    return Path(modeling_pruned.__file__).read_text()


def write_model_files(tmp: Path, plan: ExportPlan) -> None:
    """``config.json``, ``model.safetensors`` (the only time the weights are written) and, for the custom layout,
    ``modeling_pruned.py``."""
    from safetensors.torch import save_file

    plan.config.save_pretrained(str(tmp))
    save_file({k: v.cpu().contiguous() for k, v in plan.state.items()}, str(tmp / WEIGHTS_FILE),
              metadata={"format": "pt"})
    if plan.layout["custom"]:
        (tmp / MODELING_FILE).write_text(modeling_source())


def write_heads(tmp: Path, sparse_head, colbert_head, dtype: str = "float32") -> dict[str, Any]:
    """The BGE-M3 head files, in the export's dtype (FlagEmbedding's ``load_state_dict`` casts them to the dtype
    it computes in)."""
    out: dict[str, Any] = {"sparse": sparse_head is not None, "colbert": colbert_head is not None}
    to = EXPORT_DTYPES[dtype]
    for head, name in ((sparse_head, SPARSE_FILE), (colbert_head, COLBERT_FILE)):
        if head is not None:
            torch.save({k: v.detach().cpu().to(to).clone() for k, v in head.linear.state_dict().items()}, tmp / name)
    if colbert_head is not None:
        out["colbert_dim"] = colbert_head.linear.out_features
    return out


def export_max_seq_length(config, tokenizer, max_seq_length: int | None = None) -> int:
    """The export's sentence-transformers limit: the source model's ``max_seq_length`` (all-MiniLM-L6-v2's 256)
    when given, else the tokenizer's and the position embeddings' limit, whichever is smallest."""
    max_len = family_of(config).max_sequence_length(config)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_len:
        max_len = tok_max
    if max_seq_length is not None and 0 < int(max_seq_length) < max_len:
        max_len = int(max_seq_length)
    return int(max_len)


def sentence_transformer_modules(model_dir: Path, pooling: str, normalize: bool, max_seq_length: int,
                                 trust_remote_code: bool) -> list[Any]:
    """sentence-transformers' own modules for an export: ``Transformer`` (the directory, truncating at
    ``max_seq_length``), ``Pooling`` (``pooling``) and, when ``normalize``, ``Normalize``."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    trc = {"trust_remote_code": True} if trust_remote_code else {}
    transformer = Transformer(str(model_dir), max_seq_length=max_seq_length, model_kwargs=dict(trc),
                              processor_kwargs=dict(trc), config_kwargs=dict(trc))
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)]
    return modules + ([Normalize()] if normalize else [])


def write_sentence_transformers(tmp: Path, pooling: str, normalize: bool, max_seq_length: int,
                                trust_remote_code: bool) -> None:
    """modules.json, sentence_bert_config.json, config_sentence_transformers.json, 1_Pooling/, 2_Normalize/ and the
    tokenizer's ``model_max_length``, as ``SentenceTransformer(modules=[...]).save`` writes them.

    The Transformer module is built from ``tmp`` (the model files and tokenizer written before) and saves only its
    tokenizer and ``sentence_bert_config.json``: the weights stay the ones ``write_model_files`` wrote, in the
    export's dtype and layout. sentence-transformers 6 keeps ``max_seq_length`` as the tokenizer's
    ``model_max_length`` (``tokenizer_config.json``), not in ``sentence_bert_config.json``. Its model card is not
    written: the export's card is ours (``model_card.render``, from ``pruning_info.json``).
    """
    from sentence_transformers import SentenceTransformer

    modules = sentence_transformer_modules(tmp, pooling, normalize, max_seq_length, trust_remote_code)
    transformer = modules[0]

    def save_without_weights(output_path: str, *args: Any, **kwargs: Any) -> None:
        transformer.processor.save_pretrained(output_path)
        transformer.save_config(output_path)

    transformer.save = save_without_weights  # this instance only; its class (modules.json's type) stays ST's
    SentenceTransformer(modules=modules, device="cpu").save(str(tmp), create_model_card=False)


def onnx_probes(probe: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The probe batch (padded: traced) and its first text alone at its real length (another shape, no
    padding), so the ONNX check runs both sides of the mask code's branches and both dynamic axes."""
    n = int(probe["attention_mask"][0].sum())
    return [dict(probe), {k: v[:1, :n] for k, v in probe.items()}]


# ====================================================================== pruning_info.json and the card
def check_info_keys(info: Mapping[str, Any], pooling: str, normalize: bool) -> None:
    """``info`` may add fields and set base_model/target_shape, but not contradict what the export computes."""
    agreed = {"pooling": pooling, "normalize": bool(normalize)}
    clash = sorted(k for k in info if k in PruningInfo.computed_fields() and k not in PruningInfo.CALLER_FIELDS
                   and not (k in agreed and info[k] == agreed[k]))
    if clash:
        raise ExportError(f"info keys {clash} clash with fields the export computes "
                          f"(pooling={pooling!r}, normalize={bool(normalize)}, ...); rename them")


def build_pruning_info(plan: ExportPlan, *, base_model: str | None, pooling: str, normalize: bool,
                       heads_info: Mapping[str, Any], verification: Mapping[str, Any], info: Mapping[str, Any],
                       onnx_info: Mapping[str, Any] | None = None) -> PruningInfo:
    """The export's ``PruningInfo``: shapes, kept units, parameter counts (``shapes.count_params``), the
    verification figures, how to load it, then the caller's ``info`` (checked by ``check_info_keys``)."""
    base_shape, pruned_shape, exported_shape = plan.base_shape, plan.pruned_shape, plan.exported_shape
    layout, kept = plan.layout, plan.kept
    before, after, exported = count_params(base_shape), count_params(pruned_shape), count_params(exported_shape)
    custom = layout["custom"]
    trc = ", trust_remote_code=True" if custom else ""
    flag_args = f"pooling_method={pooling!r}, normalize_embeddings={bool(normalize)}{trc}"
    dtype = layout.get("dtype", "float32")
    # transformers 5 loads with dtype="auto" (config.json's dtype), so a half-precision export loads as such;
    # FlagEmbedding instead casts to what use_fp16 / use_bf16 say (its default use_fp16=True).
    flag_args += {"float32": "", "float16": ", use_fp16=True", "bfloat16": ", use_fp16=False, use_bf16=True"}[dtype]
    half = ("" if dtype == "float32" else
            f"  # loads in {dtype} (config.json's dtype); dtype=torch.float32 to compute in float32")
    if heads_info.get("colbert") and heads_info.get("colbert_dim") != pruned_shape.hidden_size:
        flag_args += f", colbert_dim={heads_info['colbert_dim']}"
    result = PruningInfo(
        base_model=base_model,
        family=layout["family"],
        export={"class": layout["model_class"], "config_class": layout["config_class"],
                "model_type": layout["family"],
                "trust_remote_code": custom, "vanilla": layout["vanilla"], "dtype": layout["dtype"],
                "source_dtype": layout.get("source_dtype"),
                "padded_params": exported.total - after.total},
        pooling=pooling,
        normalize=bool(normalize),
        heads=dict(heads_info),
        base_shape=base_shape.to_dict(),
        achieved_shape=pruned_shape.to_dict(),
        exported_shape=exported_shape.to_dict(),
        kept_layers=list(kept["kept_layers"]),
        kept_heads=[list(h) for h in kept["kept_heads"]],
        kept_sublayers=({"attention": list(kept["attention_kept"]), "ffn": list(kept["ffn_kept"])}
                        if "attention_kept" in kept else None),
        params={"before": before.to_dict(), "after": after.to_dict(), "exported": exported.to_dict()},
        kept_encoder_share=kept_share(base_shape, pruned_shape) if before.encoder_layers else None,
        verification=dict(verification),
        usage={
            "transformers": f"AutoModel.from_pretrained(path{trc}){half}",
            "sentence_transformers": f"SentenceTransformer(path{trc})" + (
                f"  # computes in {dtype}; model_kwargs={{'dtype': torch.float32}} for float32" if half else ""),
            "flag_embedding": (f"BGEM3FlagModel(path, {flag_args})"
                               + ("" if heads_info.get("sparse") and heads_info.get("colbert") else
                                  "; dense only: this export has no sparse/colbert head files, and FlagEmbedding "
                                  "would score with randomly initialised heads")),
        },
    )
    result = result.merged(info)
    result.base_model_hub_id = hub_id(result.base_model)
    result.onnx = dict(onnx_info) if onnx_info is not None else None
    return result


def write_info_and_card(tmp: Path, info: PruningInfo) -> None:
    """``pruning_info.json`` and the model card (``README.md``) rendered from it."""
    info.write(tmp)
    (tmp / CARD_FILE).write_text(render_card(info.to_json(), source_dir(info.base_model)), encoding="utf-8")


def check_param_count(info: PruningInfo, n_reloaded: int) -> None:
    """``count_params`` of the exported shape equals the parameters of the reloaded model."""
    counted = info.params["exported"]["total"]
    if counted != n_reloaded:
        raise ExportError(f"parameter count check failed: count_params says {counted}, "
                          f"the reloaded model has {n_reloaded}")

