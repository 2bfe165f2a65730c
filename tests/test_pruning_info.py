"""PruningInfo (pruning_info.json) round trip and tolerance, Masks validation, and the sentence-transformers files
of an export against what sentence-transformers itself writes for the same modules."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from bge_pruning.errors import MaskError, ModelDirError, UserError
from bge_pruning.export import ExportError, export_pruned_model
from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone
from bge_pruning.models.masks import Masks, validate_masks
from bge_pruning.pruning_info import PRUNING_INFO_FILE, PruningInfo

ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
            "2_Normalize/config.json")


def _full_info() -> PruningInfo:
    """Every field set to a value of its documented type (and one unknown key)."""
    shape = {"n_layers": 2, "heads_per_layer": [3, 4], "intermediate_per_layer": [10, 20], "hidden_size": 32}
    return PruningInfo(
        base_model="embedded:all-MiniLM-L6-v2", base_model_hub_id="sentence-transformers/all-MiniLM-L6-v2",
        family="bert", export={"class": "BertModel", "trust_remote_code": False, "dtype": "float32",
                               "padded_params": 0},
        pooling="mean", normalize=True, heads={"sparse": False, "colbert": False},
        base_shape=dict(shape, n_layers=3), target_shape={"n_layers": 2, "n_heads": 3, "intermediate_size": 10},
        achieved_shape=shape, exported_shape=shape, kept_layers=[0, 2], kept_heads=[[0, 1, 2], [0, 1, 2, 3]],
        kept_sublayers={"attention": [True, True], "ffn": [True, False]},
        params={"before": {"total": 100, "encoder_layers": 60}, "after": {"total": 70, "encoder_layers": 30},
                "exported": {"total": 70, "encoder_layers": 30}},
        kept_encoder_share=0.5, verification={"dtype": "float32", "max_abs_diff": 1.5e-6, "atol": 1e-4},
        usage={"transformers": "AutoModel.from_pretrained(path)"}, onnx={"file": "onnx/model.onnx"},
        evaluation={"source": "x", "rows": [{"task": "t", "metric": "m", "base": 80.0, "pruned": 79.0}]},
        training_steps=6, pruning_modules=["layer", "head"], global_target={"given": {"share": 0.5}},
        convergence={"ok": True}, vocabulary={"kept_size": 10}, pruned_by={"kept_layers": [0, 1, 2]},
        extra={"note": "hello"})


def test_pruning_info_round_trip(tmp_path):
    info = _full_info()
    path = info.write(tmp_path)
    assert path == tmp_path / PRUNING_INFO_FILE and not list(tmp_path.glob(".*.tmp"))
    raw = json.loads(path.read_text())
    assert raw["note"] == "hello" and "extra" not in raw  # unknown keys sit at the top level, as before
    loaded = PruningInfo.load(tmp_path)
    assert loaded == info
    assert loaded.to_json() == raw
    assert loaded.exported_params == {"total": 70, "encoder_layers": 30}
    assert loaded.pick("kept_layers", "training_steps", "missing") == {"kept_layers": [0, 2], "training_steps": 6}


def test_pruning_info_of_a_real_export_is_its_file(tmp_path, tiny_xlmr_path):
    """What the exporter wrote loads into fields and writes back to the same JSON object."""
    from transformers import AutoModel, AutoTokenizer

    backbone = MaskedBGEM3Backbone.from_hf_model(AutoModel.from_pretrained(str(tiny_xlmr_path)))
    out = export_pruned_model(backbone, tmp_path / "m", AutoTokenizer.from_pretrained(str(tiny_xlmr_path)),
                              {"layer_z": torch.tensor([1.0, 0.0, 1.0, 1.0])}, info={"note": "n", "training_steps": 3})
    raw = json.loads((out / PRUNING_INFO_FILE).read_text())
    info = PruningInfo.load(out)
    assert info.to_json() == raw
    assert info.kept_layers == [0, 2, 3] and info.training_steps == 3 and info.extra == {"note": "n"}
    assert info.params["exported"]["total"] == raw["params"]["exported"]["total"]
    assert PruningInfo.load(tmp_path) is None  # a directory without the file is a plain model


def test_old_pruning_info_loads_tolerantly(tmp_path):
    """A file from an older (or newer) version: missing fields take their defaults, unknown keys survive a rewrite."""
    old = {"base_model": "BAAI/bge-m3", "kept_layers": [0, 1], "params": {"after": {"total": 5}},
           "some_future_key": {"a": 1}}
    (tmp_path / PRUNING_INFO_FILE).write_text(json.dumps(old))
    info = PruningInfo.load(tmp_path)
    assert info.base_model == "BAAI/bge-m3" and info.kept_layers == [0, 1]
    assert info.format_version == 1 and info.onnx is None and info.export == {} and info.exported_params == {}
    assert info.extra == {"some_future_key": {"a": 1}}
    info.write(tmp_path)
    again = json.loads((tmp_path / PRUNING_INFO_FILE).read_text())
    assert again["some_future_key"] == {"a": 1} and again["kept_layers"] == [0, 1]


@pytest.mark.parametrize("text, expected", [("{not json", "pruning_info.json is not valid JSON"),
                                             ("[1, 2]", "pruning_info.json must hold a JSON object, got list")])
def test_bad_pruning_info_is_one_line_naming_the_file(tmp_path, text, expected):
    (tmp_path / PRUNING_INFO_FILE).write_text(text)
    with pytest.raises(ModelDirError) as err:
        PruningInfo.load(tmp_path)
    assert expected in str(err.value) and "\n" not in str(err.value) and isinstance(err.value, UserError)


# ====================================================================== Masks
@pytest.fixture(scope="module")
def tiny_backbone(tiny_xlmr_path):
    from transformers import AutoModel

    return MaskedBGEM3Backbone.from_hf_model(AutoModel.from_pretrained(str(tiny_xlmr_path))).eval()


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_xlmr_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_xlmr_path))


def test_validate_masks_returns_checked_rows(tiny_backbone):
    n, h, i = 4, tiny_backbone.shape.heads_per_layer[0], tiny_backbone.shape.intermediate_per_layer[0]
    masks = validate_masks({"head_z": torch.ones(n, h, dtype=torch.float64), "layer_z": [1, 0, 1, 1]}, tiny_backbone)
    assert isinstance(masks, Masks) and len(masks.head_z) == n and masks.head_z[0].dtype == torch.float32
    assert masks.layer_z.tolist() == [1.0, 0.0, 1.0, 1.0] and masks.intermediate_z is None
    assert masks.get("mlp_z") is None and set(masks.as_kwargs()) == {"head_z", "intermediate_z", "layer_z",
                                                                      "head_layer_z", "mlp_z"}
    assert validate_masks(masks, tiny_backbone) is masks and validate_masks(None, tiny_backbone) is None
    assert validate_masks({"intermediate_z": [torch.ones(i)] * n}, tiny_backbone).intermediate_z[3].shape == (i,)


@pytest.mark.parametrize("zs, message", [
    ([1, 2], "zs must be a dict of masks"),
    ({"hidden_z": torch.ones(32)}, "zs has unsupported masks ['hidden_z']"),
    ({"head_z": torch.ones(3, 4)}, "zs['head_z'] has 3 rows, the backbone has 4 layers"),
    ({"head_z": [torch.ones(4), torch.ones(3), torch.ones(4), torch.ones(4)]},
     "zs['head_z'][1] has 3 entries, layer 1 has 4 heads"),
    ({"intermediate_z": torch.full((4, 64), float("nan"))}, "zs['intermediate_z'][0] has non-finite values"),
    ({"layer_z": torch.tensor([1.0, 0.5, 1.0, 1.0])}, "zs['layer_z'] must be 0 or 1"),
    ({"mlp_z": torch.ones(5)}, "zs['mlp_z'] has 5 entries, the backbone has 4 layers"),
    ({"layer_z": torch.zeros(4)}, "zs['layer_z'] removes every layer"),
    ({"head_layer_z": torch.zeros(4), "mlp_z": torch.zeros(4)}, "the masks remove every layer"),
], ids=["not-a-dict", "unknown", "rows", "width", "nan", "soft-gate", "gate-length", "no-layer", "no-sublayer"])
def test_bad_masks_are_one_line_naming_the_key(tiny_backbone, tiny_tokenizer, tmp_path, zs, message):
    """The same one-line MaskError from validate_masks and prune_params, and as ExportError from the exporter."""
    assert tiny_backbone.shape.heads_per_layer[0] == 4 and tiny_backbone.shape.intermediate_per_layer[0] == 64
    with pytest.raises(MaskError) as err:
        validate_masks(zs, tiny_backbone)
    text = str(err.value)
    assert message in text and "\n" not in text and isinstance(err.value, (UserError, ValueError))
    if isinstance(zs, dict):
        model = copy.deepcopy(tiny_backbone)
        with pytest.raises(MaskError, match=re.escape(message)):
            model.prune_params(zs)
        assert model.shape == tiny_backbone.shape  # refused before anything changed
    with pytest.raises(ExportError) as exported:
        export_pruned_model(tiny_backbone, tmp_path / "out", tiny_tokenizer, zs)
    assert str(exported.value) == text and not (tmp_path / "out").exists()



# ====================================================================== sentence-transformers files
def test_sentence_transformers_files_are_what_sentence_transformers_writes(tmp_path, minilm_path, monkeypatch):
    """The export's module files equal SentenceTransformer(modules=[Transformer, Pooling, Normalize]).save()'s for
    the same modules; the weights are written once, by the exporter (no save_pretrained of a model during the
    export); the base's max_seq_length (256) is kept and the model card is ours."""
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer

    backbone = MaskedBGEM3Backbone.from_pretrained(str(minilm_path)).eval()

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__}.save_pretrained was called: the weights would be saved twice")

    with monkeypatch.context() as m:
        m.setattr(transformers.PreTrainedModel, "save_pretrained", refuse)
        out = export_pruned_model(backbone, tmp_path / "m", AutoTokenizer.from_pretrained(str(minilm_path)),
                                  {"head_z": torch.ones(6, 12)}, pooling="mean", max_seq_length=256,
                                  info={"base_model": "embedded:all-MiniLM-L6-v2"})
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin")) == ["model.safetensors"]

    transformer = Transformer(str(out), max_seq_length=256)
    reference = tmp_path / "reference"
    SentenceTransformer(modules=[transformer, Pooling(384, pooling_mode="mean"), Normalize()], device="cpu").save(
        str(reference), create_model_card=False)
    for name in ST_FILES:
        ours, theirs = json.loads((out / name).read_text()), json.loads((reference / name).read_text())
        assert ours == theirs, name
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 256
    assert tokenizer_config == json.loads((reference / "tokenizer_config.json").read_text())

    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 256  # the base's limit, not the position embeddings' 512
    # This project's readers of the layout (evaluation, vocabulary trim, finetune of an export) see the same.
    from bge_pruning.evaluation.encoder import read_st_layout
    from bge_pruning.models.loading import st_max_seq_length

    assert read_st_layout(out) == ("mean", True, 256, False) and st_max_seq_length(str(out)) == 256
    card = (out / "README.md").read_text()
    assert "- bge-pruning" in card and "Details (kept heads per layer" in card  # ours, not sentence-transformers'
