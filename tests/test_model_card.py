"""Every export has a model card as the Hub and sentence-transformers expect it."""
import json

from bge_pruning.export.model_card import hub_id, source_front_matter


def test_hub_ids(tmp_path, minilm_path):
    assert hub_id("embedded:all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("BAAI/bge-m3") == "BAAI/bge-m3"
    assert hub_id(str(minilm_path)) is None  # a local copy whose card names no base model
    assert hub_id(None) is None
    assert source_front_matter(minilm_path)["license"] == "apache-2.0"


def test_export_card(tmp_path, minilm_path):
    from bge_pruning.vocab import prune_vocabulary

    corpus = tmp_path / "c.txt"
    corpus.write_text("a man is playing a guitar.\nthe cat sits on the mat.\n")
    out, record = prune_vocabulary("embedded:all-MiniLM-L6-v2", tmp_path / "out", [str(corpus)],
                                   log=lambda *_: None)
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("library_name: sentence-transformers", "base_model: sentence-transformers/all-MiniLM-L6-v2",
                 "license: apache-2.0", "language: en", "pipeline_tag: sentence-similarity"):
        assert line in front.splitlines(), front
    info = json.loads((out / "pruning_info.json").read_text())
    assert info["base_model_hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert f"| total parameters | 22,713,216 | {info['params']['after']['total']:,} |" in card  # the untrimmed base
    assert record["params_before"] == 22713216
    assert f"Vocabulary trimmed to {record['kept_size']:,} of 30,522 tokens" in card
    assert "trust_remote_code" not in card  # a stock-class export: no remote code to mention


def test_card_of_a_run_that_trimmed_the_vocabulary_first():
    from bge_pruning.export.model_card import render

    info = {"base_model": "embedded:all-MiniLM-L6-v2", "base_model_hub_id": "sentence-transformers/all-MiniLM-L6-v2",
            "achieved_shape": {"n_layers": 4, "heads_per_layer": [9] * 4, "intermediate_per_layer": [1152] * 4},
            "base_shape": {"n_layers": 6},
            "params": {"before": {"encoder_layers": 10646784, "total": 12405888},
                       "after": {"encoder_layers": 5325696, "total": 7084800}},
            "kept_layers": [0, 1, 3, 5], "pooling": "mean", "normalize": True,
            "export": {"trust_remote_code": True}, "usage": {"flag_embedding": "BGEM3FlagModel(path, ...)"},
            "vocabulary": {"kept_size": 3680, "base_size": 30522, "params_before": 22713216, "corpus": ["x.txt"]}}
    card = render(info, None)
    assert "# all-MiniLM-L6-v2 (pruned)" in card
    assert "| total parameters | 22,713,216 | 7,084,800 |" in card  # the base before its vocabulary was cut
    assert "trust_remote_code=True" in card and "executes" in card


def test_card_shows_onnx_files_and_recorded_evaluation(tmp_path, minilm_path):
    """An export with ONNX lists the graphs with their checks; a run's before/after figures, recorded afterwards,
    become an Evaluation table (retention computed) in the card and pruning_info.json, the license kept."""
    from test_export import MINILM_HEADS, MINILM_INTER, MINILM_LAYER_Z, _masks
    from transformers import AutoTokenizer

    from bge_pruning.export import export_pruned_model
    from bge_pruning.export.model_card import record_evaluation
    from bge_pruning.models.masked_encoder import MaskedBGEM3Backbone

    backbone = MaskedBGEM3Backbone.from_pretrained(str(minilm_path)).eval()
    out = export_pruned_model(backbone, tmp_path / "m", AutoTokenizer.from_pretrained(str(minilm_path)),
                              _masks(MINILM_HEADS, MINILM_INTER, 12, 1536, MINILM_LAYER_Z), pooling="mean",
                              onnx=True, quantize="int8", info={"base_model": "embedded:all-MiniLM-L6-v2"})
    card = (out / "README.md").read_text()
    info = json.loads((out / "pruning_info.json").read_text())
    assert "## ONNX" in card and f"max abs diff {info['onnx']['max_abs_diff']:.1e}" in card
    q = info["onnx"]["quantized"]["int8"]
    assert "`onnx/model_qint8_avx512_vnni.onnx`: int8 dynamic quantization" in card
    assert f"{q['min_cosine_mean_pooled']:.3f}" in card
    assert "## Evaluation" not in card

    record_evaluation(out, [{"task": "sts-dev.csv", "metric": "spearman", "base": 86.72, "pruned": 85.5}],
                      source="report.before_after on sts-dev.csv")
    card = (out / "README.md").read_text()
    assert "| sts-dev.csv | spearman | 86.72 | 85.50 | 98.6% |" in card
    assert "license: apache-2.0" in card.split("---")[1].splitlines()  # still carried from the base's card
    assert json.loads((out / "pruning_info.json").read_text())["evaluation"]["rows"][0]["pruned"] == 85.5
    assert not list(out.glob(".*.tmp"))
