"""The general pruning recipe (issue 11): label-free distillation on plain text (``type: text`` sources), CoFi's
layer-wise distillation (``loss.distill_layers``) and the fixed SciFact holdout rule (``ids: even|odd``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_data import write_overlap_pairs

from bge_pruning.config import load_config
from bge_pruning.data import (
    DataError,
    MixtureBatches,
    MixtureSource,
    TextCollator,
    load_beir,
    load_text_source,
    load_triplets,
    num_samples_in_batch,
    parse_data_config,
)
from bge_pruning.models.l0_module import ConfigError
from bge_pruning.models.losses import (
    default_teacher_layers,
    layer_alignment,
    layer_distillation_loss,
    off_diagonal,
    similarity_distillation_loss,
)
from bge_pruning.training.batching import split_batch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SCIFACT = SHARED / "scifact"
needs_scifact = pytest.mark.skipif(not (SCIFACT / "qrels" / "train.tsv").is_file(),
                                   reason=f"SciFact not found at {SCIFACT} (../shared/data/scifact)")


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_beir(root: Path) -> Path:
    write_jsonl(root / "corpus.jsonl", [{"_id": "d1", "title": "Cats", "text": "Cats purr."},
                                        {"_id": "d2", "title": "", "text": "Dogs bark."},
                                        {"_id": "d3", "title": "Birds", "text": ""}])
    write_jsonl(root / "queries.jsonl", [{"_id": "1", "text": "what purrs"}, {"_id": "2", "text": "who barks"},
                                         {"_id": "3", "text": "who sings"}, {"_id": "4", "text": "not judged"}])
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t1\n3\td3\t1\n")
    return root


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------- layer distillation

def constant_states(values, mask_len=3, pad_value=1e3):
    """[1, mask_len + 1, 2] states equal to ``v`` on the real tokens and ``pad_value`` on one padding token."""
    out = []
    for v in values:
        s = torch.full((1, mask_len + 1, 2), float(v))
        s[:, -1] = pad_value
        out.append(s)
    return out


def test_layer_matching_is_cofis_order_kept_search_by_hand():
    """3 chosen teacher layers against 4 student layers, states constant per layer so MSE = (s - t)^2.

    Student layers hold 0, 1, 2, 3; teacher layers 1, 2, 4 (of 5) hold 0.9, 1.2, 1.1. CoFi searches from the
    deepest: layer 4 (1.1) takes the closest of all, student 1 (cost 0.01); layer 2 (1.2) the closest strictly
    below 1, student 0 (1.44); layer 1 (0.9) finds nothing below 0 and shares student 0 (0.81). Loss = the sum.
    (An unordered argmin would give 1, 1, 1.) The padding token holds 1000 in the student and is ignored.
    """
    student = constant_states([0, 1, 2, 3])
    teacher = constant_states([5, 0.9, 1.2, 7, 1.1], pad_value=-1e3)
    mask = torch.tensor([[1, 1, 1, 0]])
    student = [s.requires_grad_() for s in student]
    loss, alignment = layer_distillation_loss(student, teacher, mask, [1, 2, 4])
    assert alignment == [0, 0, 1]
    assert loss.item() == pytest.approx(0.81 + 1.44 + 0.01, rel=1e-6)
    loss.backward()  # only matched layers, only real tokens: d/ds of sum (s - t)^2 / (3 tokens x 2 dims)
    assert student[0].grad[0, :3].flatten().tolist() == pytest.approx([2 * (0 - 0.9) / 6 + 2 * (0 - 1.2) / 6] * 6)
    assert student[1].grad[0, :3].flatten().tolist() == pytest.approx([2 * (1 - 1.1) / 6] * 6)
    assert student[0].grad[0, 3].abs().sum() == 0 and student[2].grad is None and student[3].grad is None

    # Enough room: teacher values 0.2, 1.9, 3.4 match 0, 2, 3 (costs 0.04, 0.01, 0.16).
    teacher = constant_states([0.2, 1.9, 3.4])
    loss, alignment = layer_distillation_loss(student, teacher, mask, [0, 1, 2])
    assert alignment == [0, 2, 3]
    assert loss.item() == pytest.approx(0.04 + 0.01 + 0.16, rel=1e-5)
    # A student layer whose mask is exactly 0 (removed) is no candidate: without layer 2, teacher 1.9 takes 1.
    loss, alignment = layer_distillation_loss(student, teacher, mask, [0, 1, 2], torch.tensor([1, 1, 0, 1]) != 0)
    assert alignment == [0, 1, 3]
    assert loss.item() == pytest.approx(0.04 + 0.81 + 0.16, rel=1e-5)


def test_layer_distillation_mse_on_random_states_by_hand():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 3, 4, generator=g) for _ in range(3)]
    teacher = [torch.randn(2, 3, 4, generator=g) for _ in range(2)]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    costs = [[sum(((s[b, t] - tl[b, t]) ** 2).sum().item() for b in range(2) for t in range(3) if mask[b, t])
              / (3 * 4) for s in student] for tl in teacher]
    # The same search written out: teacher 1 takes its argmin over all; teacher 0 its argmin strictly below.
    a1 = min(range(3), key=lambda i: costs[1][i])
    a0 = min(range(a1), key=lambda i: costs[0][i]) if a1 > 0 else a1
    loss, alignment = layer_distillation_loss(student, teacher, mask, [0, 1])
    assert alignment == [a0, a1]
    assert loss.item() == pytest.approx(costs[0][a0] + costs[1][a1], rel=1e-5)


def test_layer_alignment_gradient_flows_through_matched_costs_only():
    costs = torch.tensor([[3.0, 1.0, 2.0], [5.0, 4.0, 0.5]], requires_grad=True)
    assert layer_alignment(costs) == [1, 2]
    rows = torch.arange(2)
    costs[rows, torch.tensor([1, 2])].sum().backward()
    assert costs.grad.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_default_teacher_layers_scale_cofis_spacing():
    assert default_teacher_layers(12) == [2, 5, 8, 11]  # CoFi's choice for BERT-base
    assert default_teacher_layers(6) == [1, 2, 4, 5]  # all-MiniLM-L6-v2
    assert default_teacher_layers(24) == [5, 11, 17, 23]  # BGE-M3
    assert default_teacher_layers(3) == [0, 1, 2]


def test_off_diagonal():
    m = torch.arange(9.0).view(3, 3)
    assert off_diagonal(m).tolist() == [[1.0, 2.0], [3.0, 5.0], [6.0, 7.0]]


# ------------------------------------------------------------------------------------- tiny model configs

def write_triplets(path: Path, n: int = 48) -> Path:
    from tiny_models import corpus

    texts = corpus(2 * n, seed=5)
    return write_jsonl(path, [{"query": texts[2 * i], "pos": texts[2 * i][:20] + " " + texts[2 * i + 1]}
                              for i in range(n)])


def write_texts(path: Path, n: int = 64, seed: int = 9) -> Path:
    from tiny_models import corpus

    path.write_text("\n".join(corpus(n, seed=seed)) + "\n")
    return path


def recipe_config(tmp_path: Path, model_path: str, *, pooling: str = "cls", target=(2, 2, 32), loss=None,
                  **train) -> Path:
    """Text + STS + retrieval mixture, distill_layers on (the general recipe's shape, tiny)."""
    cfg = {
        "seed": 3,
        "model": {"name_or_path": model_path, "pooling": pooling,
                  "l0_module": {"lagrangian_warmup_steps": "2ba",
                                "target_model": dict(zip(("n_layers", "n_heads", "intermediate_size"), target))}},
        "loss": {"cosent": 1.0, "infonce": 1.0, "distill_embedding": 1.0, "distill_similarity": 1.0,
                 "distill_layers": 1.0, **(loss or {})},
        "data": {"max_length": 24,
                 "train": [{"name": "text", "type": "text", "source": str(write_texts(tmp_path / "texts.txt")),
                            "proportion": 2},
                           {"name": "pairs", "type": "sts", "source": str(write_overlap_pairs(tmp_path / "p.tsv", 64))},
                           {"name": "triplets", "type": "retrieval",
                            "source": str(write_triplets(tmp_path / "t.jsonl"))}]},
        "train": {"device": "cpu", "batch_size": 8, "max_duration": "4ba", "lr": 1e-3, "scheduler": "constant",
                  "warmup": "0ba", "eval_interval": "1000ba", "save_folder": str(tmp_path / "ckpt"),
                  "save_interval": "1000ba", "log_file": str(tmp_path / "log.jsonl"), "progress_bar": False,
                  **train},
        "export": {"output_dir": str(tmp_path / "model")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_identity_map_gives_plain_mse_at_step_0(tmp_path, tiny_xlmr_path):
    from bge_pruning.data.collate import TextCollator
    from bge_pruning.models.composer_bge_m3 import build_model

    model = build_model(load_config(recipe_config(tmp_path, str(tiny_xlmr_path)))).eval()
    lt = model.layer_transformation
    assert torch.equal(lt.weight, torch.eye(32)) and torch.equal(lt.bias, torch.zeros(32))
    assert model.teacher_layers == default_teacher_layers(4) == [0, 1, 2, 3]
    with torch.no_grad():
        model.l0_module.masks["head"].z_loga[:, 0] = -5.0  # prune head 0 everywhere: the student now differs
    batch = TextCollator(model.tokenizer, 24)(["the cat sits on a mat.", "a dog runs.", "one red car and a bus."])
    with torch.no_grad():
        parts = model.loss(model.forward(batch), batch)
        enc = batch["texts"]
        _, s_states = model.backbone(enc["input_ids"], enc["attention_mask"], output_hidden_states=True,
                                     **model.current_masks())
        t_states = model.teacher_encode(enc)["layers"]
        plain, alignment = layer_distillation_loss(list(s_states[1:]), t_states, enc["attention_mask"], [0, 1, 2, 3])
        assert plain.item() > 1e-4
        assert parts["distill_layers"].item() == pytest.approx(plain.item(), rel=1e-5)
        # The map is really applied: a map of 2 I doubles the student states.
        lt.weight.mul_(2.0)
        doubled = model.loss(model.forward(batch), batch)["distill_layers"]
        expected, _ = layer_distillation_loss([2 * s for s in s_states[1:]], t_states, enc["attention_mask"],
                                              [0, 1, 2, 3])
    assert doubled.item() == pytest.approx(expected.item(), rel=1e-5)
    # A text batch trains through the teacher only; the in-batch similarity leaves out each text with itself.
    assert set(parts) == {"distill_embedding", "distill_similarity", "distill_layers", "total"}  # eval: no Lagrangian
    with torch.no_grad():
        s = model.forward(batch)["texts"]["dense"]
        t = model.teacher_encode(enc)["dense"]
        sim = similarity_distillation_loss(off_diagonal(s @ s.T), off_diagonal(t @ t.T), 0.05)
    assert parts["distill_similarity"].item() == pytest.approx(sim.item(), rel=1e-5)


def test_text_mixture_trains_tiny_xlmr_layer_map_learns_checkpoint_resumes_export_ignores_it(tmp_path,
                                                                                              tiny_xlmr_path):
    from safetensors.torch import load_file

    from bge_pruning.export import export_composer_model
    from bge_pruning.training.checkpoint import load_composer_model, save_run_files
    from bge_pruning.training.run import build_trainer

    cfg = load_config(recipe_config(tmp_path, str(tiny_xlmr_path), save_interval="4ba", autoresume=True),
                      ["run_name=recipe"])
    trainer, model = build_trainer(cfg)
    save_run_files(tmp_path / "ckpt", cfg, model)  # what train.py writes beside the checkpoints
    lt = model.layer_transformation
    groups = {g["name"]: {id(p) for p in g["params"]} for g in trainer.state.optimizers[0].param_groups}
    assert {id(lt.weight), id(lt.bias)} <= groups["model"]
    grads = []
    lt.weight.register_hook(lambda g: grads.append(g.norm().item()))
    trainer.fit()
    sources = [trainer.state.train_dataloader.dataset.batch_indices(i)[0] for i in range(4)]
    assert set(sources) == {"text", "pairs", "triplets"}
    assert len(grads) == 4 and all(g > 0 for g in grads)  # one backward per step
    assert not torch.equal(lt.weight, torch.eye(32))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum("loss/train/distill_layers" in r for r in rows) == 4
    assert {len(a) for a in model.last_layer_alignment} == {4}
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.close()

    # The checkpoint holds the map and rebuilds offline; the export is the plain encoder without it.
    rebuilt = load_composer_model(tmp_path / "ckpt" / "latest-rank0.pt")
    torch.testing.assert_close(rebuilt.layer_transformation.weight, trained["layer_transformation.weight"])
    out = export_composer_model(rebuilt, tmp_path / "model")
    keys = set(load_file(str(out / "model.safetensors")))
    assert keys and not any("layer_transformation" in k for k in keys)

    # Autoresume continues from step 4 with the trained map (and its Adam state) restored.
    cfg = load_config(recipe_config(tmp_path, str(tiny_xlmr_path), save_interval="4ba", autoresume=True,
                                    max_duration="6ba"), ["run_name=recipe"])
    trainer, model = build_trainer(cfg)
    assert int(trainer.state.timestamp.batch.value) == 4
    torch.testing.assert_close(model.layer_transformation.weight, trained["layer_transformation.weight"], rtol=0,
                               atol=0)
    trainer.fit()
    assert int(trainer.state.timestamp.batch.value) == 6
    trainer.close()


def test_text_mixture_trains_minilm_with_distill_layers(tmp_path, minilm_path):
    from bge_pruning.training.run import build_trainer

    path = recipe_config(tmp_path, "embedded:all-MiniLM-L6-v2", pooling="mean", target=(4, 9, 1152),
                         loss={"distill_hidden": 0.5, "distill_layers_teacher": [1, 3, 5]}, max_duration="3ba")
    trainer, model = build_trainer(load_config(path))
    assert model.teacher_layers == [1, 3, 5]
    lt = model.layer_transformation
    grads = []
    lt.weight.register_hook(lambda g: grads.append(g.norm().item()))
    trainer.fit()
    assert len(grads) >= 3 and all(g > 0 for g in grads)
    assert (lt.weight - torch.eye(384)).abs().max().item() > 1e-4  # lr 1e-3: Adam moves every entry
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    layer_losses = [r["loss/train/distill_layers"] for r in rows if "loss/train/distill_layers" in r]
    assert len(layer_losses) == 3 and all(v > 0 for v in layer_losses)
    trainer.close()


def test_layer_distillation_config_errors(tmp_path, tiny_xlmr_path):
    from bge_pruning.models.composer_bge_m3 import build_model

    path = recipe_config(tmp_path, str(tiny_xlmr_path))
    with pytest.raises(ConfigError, match=r"loss.distill_layers_teacher: 4 is not a layer of the teacher "
                                          r"\(integers 0..3"):
        build_model(load_config(path, ["loss.distill_layers_teacher=[1,4]"]))
    with pytest.raises(ConfigError, match="loss.distill_layers_teacher: must be strictly increasing"):
        build_model(load_config(path, ["loss.distill_layers_teacher=[2,1]"]))
    # A text source needs some teacher loss: it has no labels.
    off = ["loss.distill_layers=0", "loss.distill_embedding=0", "loss.distill_similarity=0"]
    with pytest.raises(ConfigError) as err:
        build_model(load_config(path, off))
    assert one_line_error(err).startswith("data.train[0]: a text source trains only through teacher distillation")
    # Off by default: no map, no extra parameters (the demo's RNG stream and checkpoints are unchanged).
    assert build_model(load_config(path, ["loss.distill_layers=0"])).layer_transformation is None


# ------------------------------------------------------------------------------------- text sources

def test_text_source_txt_jsonl_fields_sts_and_beir(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("first text\n\n  \nsecond text\r\n")
    assert load_text_source(str(txt)) == ["first text", "second text"]
    js = write_jsonl(tmp_path / "t.jsonl", [{"_id": "1", "title": "T1", "text": "body one", "n": 1},
                                            {"_id": "2", "title": "", "text": "body two"},
                                            {"_id": "3", "title": "T3", "text": ""}])
    assert load_text_source(str(js)) == ["body one", "body two"]  # default field "text"; blank texts skipped
    assert load_text_source(str(js), "title") == ["T1", "T3"]
    assert load_text_source(str(js), ("title", "text")) == ["T1 body one", "body two", "T3"]
    assert load_text_source(str(js), ("title", "text"), ids="odd") == ["T1 body one", "T3"]
    assert load_text_source(str(js), ("title", "text"), max_examples=2) == ["T1 body one", "body two"]
    pairs = write_overlap_pairs(tmp_path / "p.tsv", n=5)
    from bge_pruning.data import load_sts

    assert load_text_source(str(pairs)) == [t for p in load_sts(str(pairs)) for t in (p.sentence1, p.sentence2)]
    beir = make_beir(tmp_path / "beir")
    assert load_text_source(str(beir)) == ["Cats Cats purr.", "Dogs bark.", "Birds"]  # title + text
    assert load_text_source(str(beir), "queries") == ["what purrs", "who barks", "who sings"]  # judged in train
    assert load_text_source(str(beir), "queries", ids="even") == ["who barks"]
    assert load_text_source(str(beir), "queries", ids="odd") == ["what purrs", "who sings"]
    # Queries with the same text (whitespace and case aside) follow the smallest id: 5 goes with 4, 8 with 7.
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"_id": "4", "text": "Same  claim."},
                                               {"_id": "5", "text": "same claim."},
                                               {"_id": "6", "text": "other"}, {"_id": "8", "text": "x"},
                                               {"_id": "7", "text": "x"}])
    assert load_text_source(str(dup), ids="even") == ["Same  claim.", "same claim.", "other"]
    assert load_text_source(str(dup), ids="odd") == ["x", "x"]


def test_text_source_errors_name_file_and_line(tmp_path):
    js = write_jsonl(tmp_path / "t.jsonl", [{"text": "ok"}, {"body": "no text field"}])
    with pytest.raises(DataError) as err:
        load_text_source(str(js))
    assert one_line_error(err) == f"{js}:2: no field 'text' (fields: body)"
    with pytest.raises(DataError) as err:
        load_text_source(str(js), "body")
    assert one_line_error(err) == f"{js}:1: no field 'body' (fields: text)"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "broken\n')
    with pytest.raises(DataError) as err:
        load_text_source(str(bad))
    assert one_line_error(err).startswith(f"{bad}:3: invalid JSON")
    typed = write_jsonl(tmp_path / "typed.jsonl", [{"text": ["a", "list"]}])
    with pytest.raises(DataError) as err:
        load_text_source(str(typed))
    assert one_line_error(err) == f"{typed}:1: field 'text' must be a string, got list"
    ids = write_jsonl(tmp_path / "ids.jsonl", [{"_id": "7", "text": "a"}, {"_id": "x9", "text": "b"}])
    with pytest.raises(DataError) as err:
        load_text_source(str(ids), ids="odd")
    assert one_line_error(err) == f"{ids}:2: ids: odd splits queries by the parity of integer ids, but this id is 'x9'"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError) as err:
        load_text_source(str(empty))
    assert one_line_error(err) == f"no examples in {empty}: no non-empty text"
    with pytest.raises(DataError) as err:
        load_text_source(str(tmp_path / "missing.txt"))
    assert one_line_error(err).startswith(f"{tmp_path / 'missing.txt'}: file not found")


def test_text_source_config_validation(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("a\n")
    beir = make_beir(tmp_path / "beir")
    js = write_jsonl(tmp_path / "q.jsonl", [{"_id": "1", "text": "a"}])

    def parse(entry):
        return parse_data_config({"train": [entry]})[1][0]

    spec = parse({"type": "text", "source": str(beir), "field": "queries", "ids": "odd"})
    assert (spec.type, spec.field, spec.ids, spec.split) == ("text", "queries", "odd", "train")
    assert parse({"type": "text", "source": str(js), "field": ["title", "text"]}).field == ("title", "text")
    assert parse({"type": "retrieval", "source": str(beir), "ids": "even"}).ids == "even"
    cases = [
        ({"type": "text", "source": str(txt), "field": "text"}, "data.train[0].field: only for a .jsonl file"),
        ({"type": "text", "source": str(txt), "ids": "odd"}, "data.train[0].ids: only for a .jsonl file"),
        ({"type": "text", "source": str(beir), "field": "title"}, "data.train[0].field: a BEIR directory's texts"),
        ({"type": "text", "source": str(beir), "ids": "odd"}, "data.train[0].ids: selects queries by id"),
        ({"type": "text", "source": str(js), "field": []}, "data.train[0].field: must be a field name"),
        ({"type": "sts", "source": str(txt), "field": "x"}, "data.train[0].field: only valid for type text"),
        ({"type": "sts", "source": str(txt), "ids": "odd"}, "data.train[0].ids: only valid for types retrieval"),
        ({"type": "retrieval", "source": str(beir), "ids": "half"}, "data.train[0].ids: must be one of even, odd"),
        ({"type": "text", "source": str(txt), "n_negatives": 1}, "data.train[0].n_negatives: only valid for type "
                                                                  "retrieval (this source is type text)"),
        ({"type": "txt", "source": str(txt)}, "data.train[0].type: unknown type 'txt'; one of sts, retrieval, text"),
    ]
    for entry, message in cases:
        with pytest.raises(DataError) as err:
            parse(entry)
        assert one_line_error(err).startswith(message), (entry, str(err.value))
    with pytest.raises(DataError) as err:
        load_triplets(str(js), ids="odd")
    assert "has no query ids" in one_line_error(err)


def test_text_collation_mixture_and_microbatches(tmp_path):
    from tiny_models import build_tiny_xlmr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_tiny_xlmr(tmp_path / "m"))
    texts = ["the cat.", "a dog runs quickly.", "one two.", "red car"]
    batch = TextCollator(tok, 16)(texts)
    assert batch["task"] == "text" and batch["texts"]["input_ids"].shape[0] == 4
    assert num_samples_in_batch(batch) == 4
    assert batch["texts"]["attention_mask"].sum(1).tolist() == [len(tok(t)["input_ids"]) for t in texts]
    parts = split_batch(batch, 3)
    assert [mb["texts"]["input_ids"].shape[0] for mb in parts] == [3, 1]
    assert torch.equal(torch.cat([mb["texts"]["input_ids"] for mb in parts]), batch["texts"]["input_ids"])
    mix = MixtureBatches([MixtureSource("t", texts * 4, TextCollator(tok, 16), 1.0)], batch_size=4, seed=0)
    assert len(mix) == 4 and all(mix[i]["task"] == "text" for i in range(4))


# ------------------------------------------------------------------------------------- SciFact holdout

@needs_scifact
def test_scifact_holdout_halves_are_disjoint_and_cover_all_809_claims():
    all_ids = {json.loads(line)["_id"] for line in (SCIFACT / "queries.jsonl").read_text().splitlines()}
    assert len(all_ids) == 809
    _, even_q, even_qrels = load_beir(str(SCIFACT), "train", ids="even")
    _, odd_q, odd_qrels = load_beir(str(SCIFACT), "train", ids="odd")
    assert set(even_q).isdisjoint(odd_q) and set(even_q) | set(odd_q) == all_ids
    # Related claims go together, the smallest id deciding: claims 86 and 90 repeat the texts of 85 and 89, and most
    # claims share a relevant abstract with a twin (10 and 11 cite the same one). By id parity alone it would be
    # 415 / 394, with 234 even claims whose relevant abstract is an odd claim's positive.
    assert (len(even_q), len(odd_q)) == (406, 403)
    assert {"85", "86", "89", "90", "10", "11"} <= set(odd_q) | set(even_q)
    assert ("86" in odd_q) == ("85" in odd_q) and ("10" in even_q) == ("11" in even_q)
    assert set(even_q.values()).isdisjoint(odd_q.values())
    even_docs = {d for rel in even_qrels.values() for d in rel}
    odd_docs = {d for rel in odd_qrels.values() for d in rel}
    assert even_docs.isdisjoint(odd_docs)
    _, everything, qrels = load_beir(str(SCIFACT), "train")
    assert {**even_qrels, **odd_qrels} == qrels
    # The training triplets and the training texts of claims come from the odd half only.
    train_claims = {t.query for t in load_triplets(str(SCIFACT), "train", ids="odd")}
    assert train_claims == set(odd_q.values())
    assert set(load_text_source(str(SCIFACT), "queries", ids="odd")) == set(odd_q.values())
    assert train_claims.isdisjoint(even_q.values())


@needs_scifact
def test_general_prune_config_validates_and_reads_its_data(monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the project root
    for name in ("prune.yaml", "finetune.yaml"):
        cfg = load_config(ROOT / "configs" / "quality" / name)
        _, specs = parse_data_config(cfg.data)
        by_name = {s.name: s for s in specs}
        assert {s.type for s in specs} == {"text", "sts", "retrieval"}
        assert by_name["scifact_claims"].ids == "odd"
        assert cfg.loss.distill_layers > 0 and cfg.loss.distill_embedding > 0 and cfg.loss.distill_similarity > 0
        assert cfg.train.grad_clip_norm == 1.0
    prune = load_config(ROOT / "configs" / "quality" / "prune.yaml")
    steps = int(str(prune.train.max_duration).removesuffix("ba"))
    warmup = int(str(prune.model.l0_module.lagrangian_warmup_steps).removesuffix("ba"))
    assert warmup == round(0.2 * steps)  # 80% of the steps at the full target, as LLM-Shearing


@pytest.mark.parametrize("content, field, message", [
    ('{"text": "a"}\n{"body": "b"}\n', None, "{f}:2: no field 'text' (fields: body)"),
    ('{"text": "a"}\n{"text": "b"\n', None, "{f}:2: invalid JSON"),
    ('{"text": "a"}\n', "title", "{f}:1: no field 'title' (fields: text)"),
    ("\n\n", None, "no examples in {f}: no non-empty text"),
])
def test_train_py_stops_on_a_bad_text_source_with_one_line(tmp_path, tiny_xlmr_path, capsys, content, field, message):
    import train as train_script

    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    path = recipe_config(tmp_path, str(tiny_xlmr_path))
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["train"][0].update(source=str(bad), **({"field": field} if field else {}))
    path.write_text(yaml.safe_dump(cfg))
    code = train_script.main([str(path)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: " + message.format(f=bad)), lines[0]
    assert not (tmp_path / "model").exists()


def test_layers_alive_follows_layer_and_sublayer_gates():
    from bge_pruning.models.composer_bge_m3 import layers_alive

    t = torch.tensor
    assert layers_alive({}, 4) is None
    assert layers_alive({"layer_z": t([1.0, 0.0, 0.3, 1.0])}, 4).tolist() == [True, False, True, True]
    # A layer is an identity only when BOTH its sublayers are gated off.
    zs = {"head_layer_z": t([0.0, 0.0, 1.0, 0.5]), "mlp_z": t([0.0, 1.0, 0.0, 0.0])}
    assert layers_alive(zs, 4).tolist() == [False, True, True, True]
    zs["layer_z"] = t([1.0, 1.0, 1.0, 0.0])
    assert layers_alive(zs, 4).tolist() == [False, True, True, False]
    assert layers_alive({"mlp_z": t([0.0, 1.0])}, 2).tolist() == [True, True]  # attention still there


# ------------------------------------------------------------------------------------------ BGE-M3 head distillation
def test_head_distillation_losses_by_hand():
    from bge_pruning.models.losses import colbert_distillation_loss, token_weight_distillation_loss

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    s = torch.tensor([[1.0, 2.0, 3.0, 9.0], [0.5, 0.0, 7.0, 7.0]])
    t = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.5, 1.0, 0.0, 0.0]])
    # real tokens: squared errors 0, 1, 4 and 0, 1 -> 6 / 5
    assert token_weight_distillation_loss(s, t, mask).item() == pytest.approx(6 / 5)
    sv = torch.zeros(2, 3, 2)
    tv = torch.zeros(2, 3, 2)
    sv[0, 0] = torch.tensor([1.0, 0.0])
    tv[0, 0] = torch.tensor([0.0, 1.0])  # distance^2 2, counted
    sv[0, 2] = torch.tensor([5.0, 5.0])  # padding position (mask[0, 3] = 0): not counted
    sv[1, 0] = torch.tensor([0.6, 0.8])
    tv[1, 0] = torch.tensor([0.8, 0.6])  # distance^2 0.08, counted
    # tokens after CLS: row 0 has 2 real ones, row 1 has 1 -> (2 + 0 + 0.08) / 3
    assert colbert_distillation_loss(sv, tv, mask).item() == pytest.approx(2.08 / 3)


def test_sparse_and_colbert_distillation_from_the_teachers_own_heads(tmp_path, tiny_xlmr_path):
    from bge_pruning.data.collate import TextCollator
    from bge_pruning.models.composer_bge_m3 import build_model

    path = recipe_config(tmp_path, str(tiny_xlmr_path), loss={"distill_sparse": 1.0, "distill_colbert": 2.0})
    cfg = yaml.safe_load(path.read_text())
    cfg["stage"] = "finetune"
    cfg["model"]["heads"] = {"sparse": True, "colbert": True}
    path.write_text(yaml.safe_dump(cfg))
    model = build_model(load_config(path)).eval()
    # The teacher's heads are frozen and outside the module tree: not trained, not in checkpoints.
    assert not any("teacher" in k for k in model.state_dict())
    assert all(p.requires_grad is False for h in model._teacher_heads.values() for p in h.module.parameters())
    batch = TextCollator(model.tokenizer, 24)(["the cat sits on a mat.", "a dog runs.", "one red car and a bus."])
    enc = batch["texts"]
    with torch.no_grad():
        parts = model.loss(model.forward(batch), batch)
        # Student = teacher at the start (same weights, same head files): nothing to distil.
        assert parts["distill_sparse"].item() == 0.0 and parts["distill_colbert"].item() == 0.0
        model.sparse_head.linear.bias.add_(0.5)
        model.colbert_head.linear.weight.mul_(-1.0)
        parts = model.loss(model.forward(batch), batch)
        hidden = model.backbone(enc["input_ids"], enc["attention_mask"])
        t = model.teacher_encode(enc)
        real = enc["attention_mask"].bool()
        w_s = torch.relu(model.sparse_head.linear(hidden)).squeeze(-1)
        expected_sparse = (w_s - t["token_weights"])[real].pow(2).mean()
        c_s = model.colbert_head(hidden, enc["attention_mask"])
        after_cls = real[:, 1:]
        expected_colbert = (c_s - t["colbert"]).pow(2).sum(-1)[after_cls].mean()
    assert expected_sparse.item() > 1e-3 and expected_colbert.item() > 1e-3
    assert parts["distill_sparse"].item() == pytest.approx(expected_sparse.item(), rel=1e-5)
    assert parts["distill_colbert"].item() == pytest.approx(2.0 * expected_colbert.item(), rel=1e-5)


def test_head_distillation_needs_the_heads(tmp_path, tiny_xlmr_path):
    from bge_pruning.models.composer_bge_m3 import build_model

    path = recipe_config(tmp_path, str(tiny_xlmr_path), loss={"distill_sparse": 1.0})
    with pytest.raises(ConfigError, match=r"loss.distill_sparse > 0 needs model.heads.sparse: true"):
        build_model(load_config(path))
    from tiny_models import build_tiny_xlmr

    bare = build_tiny_xlmr(tmp_path / "bare")  # no sparse_linear.pt / colbert_linear.pt
    path = recipe_config(tmp_path, str(bare), loss={"distill_colbert": 1.0})
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["heads"] = {"colbert": True}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"loss.distill_colbert > 0 needs the teacher's colbert_linear.pt"):
        build_model(load_config(path))


def test_query_half_groups_queries_that_share_a_text_or_a_relevant_document():
    from bge_pruning.data.retrieval import query_half

    records = [("q:1", "1", "a claim"), ("q:2", "2", "its negation"), ("q:3", "3", "other"), ("q:4", "4", "A  claim"),
               ("q:6", "6", "alone"), ("q:7", "7", "twin of six")]
    links = [("1", "d1"), ("2", "d1"), ("3", "d3"), ("6", "d6"), ("7", "d6")]
    # 1, 2 (doc d1) and 4 (same text as 1) follow 1 (odd); 6 and 7 (doc d6) follow 6 (even); 3 is alone (odd).
    assert query_half("odd", records, links) == {"1", "2", "3", "4"}
    assert query_half("even", records, links) == {"6", "7"}
    assert query_half("even", records) == {"2", "6"}  # without links: parity and shared texts only
    assert query_half(None, records, links) is None


def test_a_one_text_batch_with_only_the_similarity_loss_is_a_zero_not_an_error(tmp_path, tiny_xlmr_path):
    from bge_pruning.models.composer_bge_m3 import build_model

    path = recipe_config(tmp_path, str(tiny_xlmr_path))
    cfg = yaml.safe_load(path.read_text())
    cfg["stage"] = "finetune"  # no Lagrangian term either
    cfg["loss"] = {"distill_similarity": 1.0}
    path.write_text(yaml.safe_dump(cfg))
    model = build_model(load_config(path)).train()
    batch = TextCollator(model.tokenizer, 24)(["a single text."])
    parts = model.loss(model.forward(batch), batch)
    assert parts["total"].item() == 0.0
    parts["total"].backward()  # a graph, so the training step goes on
    two = TextCollator(model.tokenizer, 24)(["a single text.", "and another one"])
    assert set(model.loss(model.forward(two), two)) == {"distill_similarity", "total"}
