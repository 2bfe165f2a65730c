"""Vocabulary pruning: keep the embedding rows of the tokens a corpus uses, and a tokenizer that emits the new ids.

BGE-M3's word embeddings are 45% of its parameters (250,002 x 1024) and layer/head/FFN pruning never touches
them. A user who serves a few languages or one domain can drop the rows no text of theirs ever reaches.
(TextPruner has this; LLM-Shearing and CoFi do not. No library does it on a transformers 5 tokenizer, so the
tokenizer.json rewrite below is written by hand.)

How it stays exact. The kept ids keep their relative order (new id = rank among the kept), every special and
added token is kept, and so is every id up to the pad id (XLM-R and MPNet number positions from the pad id,
so it must not move). Then, on any text whose segmentation uses only kept tokens:

* WordPiece (BERT, MPNet) is greedy longest-match-first: the piece it chose is still there and nothing
  longer appeared, so it chooses the same piece;
* Unigram (XLM-R's SentencePiece) picks the best-scoring segmentation: every segmentation of the trimmed
  vocabulary existed before with the same score. One trap: the score of an unknown character is the
  vocabulary's minimum score minus 10, and dropping rare pieces raises that minimum. The trimmed vocabulary
  therefore gives its unk piece (never matched as text: it is an added special token) the base minimum
  score, so no unknown-character path can start beating the original best one.

``prune_vocabulary`` checks that argument instead of trusting it: on the corpus texts (a sample of at most
``verify_texts``) the token strings must be identical and the encoder's hidden states equal within 1e-6.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import VocabError

SUPPORTED_MODELS = ("WordPiece", "Unigram")
VERIFY_ATOL = 1e-6


# ====================================================================== choosing the kept ids
def _backend_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VocabError(f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: not a fast tokenizer (no "
                         "tokenizer.json): vocabulary pruning rewrites tokenizer.json")
    data = json.loads(backend.to_str())
    kind = data["model"]["type"]
    if kind not in SUPPORTED_MODELS:
        raise VocabError(f"{tokenizer.name_or_path}: a {kind} tokenizer; vocabulary pruning supports "
                         f"{' and '.join(SUPPORTED_MODELS)} (BPE merges would name removed tokens)")
    return data


def plain_backend(tokenizer: Any) -> Any:
    """A copy of the tokenizers backend with no padding and no truncation (tokenizer.json may fix both)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def count_tokens(tokenizer: Any, texts: Iterable[str], batch_size: int = 1024) -> Counter[int]:
    """How often each token id occurs when ``tokenizer`` encodes ``texts`` (no special tokens, no truncation)."""
    backend = plain_backend(tokenizer)
    counts: Counter[int] = Counter()
    batch: list[str] = []

    def flush() -> None:
        for enc in backend.encode_batch(batch, add_special_tokens=False):
            counts.update(enc.ids)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return counts


def always_kept_ids(tokenizer: Any) -> list[int]:
    """Ids every trimmed vocabulary keeps: special and added tokens, and every id up to the pad id."""
    data = _backend_json(tokenizer)
    ids = {a["id"] for a in data.get("added_tokens", [])}
    ids.update(i for i in tokenizer.all_special_ids if i is not None)
    if tokenizer.pad_token_id is not None:
        ids.update(range(int(tokenizer.pad_token_id) + 1))
    return sorted(ids)


@dataclass
class VocabPlan:
    """Which base ids a trimmed vocabulary keeps (sorted), and why."""

    kept_ids: list[int]
    base_size: int
    n_always: int
    n_from_corpus: int
    n_from_keep_tokens: int
    corpus_tokens: int
    corpus_distinct: int
    min_count: int
    max_vocab: int | None
    dropped_by_cap: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"base_size": self.base_size, "kept_size": len(self.kept_ids), "always_kept": self.n_always,
                "from_corpus": self.n_from_corpus, "from_keep_tokens": self.n_from_keep_tokens,
                "corpus_tokens": self.corpus_tokens, "corpus_distinct_tokens": self.corpus_distinct,
                "min_count": self.min_count, "max_vocab": self.max_vocab, "dropped_by_max_vocab": self.dropped_by_cap}


def plan_vocabulary(tokenizer: Any, texts: Sequence[str], *, vocab_size: int | None = None, min_count: int = 1,
                    max_vocab: int | None = None, keep_tokens: Sequence[str] = ()) -> VocabPlan:
    """The ids to keep: the always-kept ones, the corpus tokens seen ``min_count`` times or more (the most
    frequent first when ``max_vocab`` caps the total), and ``keep_tokens`` (token strings) on top."""
    base_size = int(vocab_size if vocab_size is not None else len(tokenizer))
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise VocabError(f"--min-count must be a whole number >= 1, got {min_count!r}")
    always = [i for i in always_kept_ids(tokenizer) if i < base_size]
    if max_vocab is not None:
        if isinstance(max_vocab, bool) or not isinstance(max_vocab, int):
            raise VocabError(f"--max-vocab must be a whole number, got {max_vocab!r}")
        if max_vocab < len(always):
            raise VocabError(f"--max-vocab {max_vocab} is below the {len(always)} tokens every trimmed vocabulary "
                             "keeps (special and added tokens, and the ids up to the pad id)")
        if max_vocab > base_size:
            raise VocabError(f"--max-vocab {max_vocab} is above the base vocabulary size {base_size}")
    if not texts:
        raise VocabError("the corpus is empty: give texts that the trimmed model should keep serving")
    counts = count_tokens(tokenizer, texts)
    unk = tokenizer.unk_token_id
    always_set = set(always)
    seen = [(c, i) for i, c in counts.items() if c >= min_count and i not in always_set and i != unk and i < base_size]
    if not seen:
        raise VocabError(f"the corpus ({len(texts)} texts) has no token the tokenizer knows, seen at least "
                         f"{min_count} time(s): every text is unknown tokens or empty")
    vocab = tokenizer.get_vocab()
    extra: set[int] = set()
    for tok in keep_tokens:
        if tok not in vocab:
            raise VocabError(f"--keep-tokens: {tok!r} is not a token of the base vocabulary")
        extra.add(vocab[tok])
    extra -= always_set
    seen.sort(key=lambda ci: (-ci[0], ci[1]))  # most frequent first, then by id: deterministic
    corpus_ids = [i for _, i in seen if i not in extra]
    dropped = 0
    if max_vocab is not None:
        room = max_vocab - len(always) - len(extra)
        if room < 0:
            raise VocabError(f"--max-vocab {max_vocab} leaves no room for the {len(extra)} --keep-tokens beside the "
                             f"{len(always)} always-kept tokens")
        dropped = max(0, len(corpus_ids) - room)
        corpus_ids = corpus_ids[:room]
    kept = sorted(always_set | extra | set(corpus_ids))
    return VocabPlan(kept_ids=kept, base_size=base_size, n_always=len(always), n_from_corpus=len(corpus_ids),
                     n_from_keep_tokens=len(extra), corpus_tokens=sum(counts.values()), corpus_distinct=len(counts),
                     min_count=min_count, max_vocab=max_vocab, dropped_by_cap=dropped)


# ====================================================================== rewriting the tokenizer
def _remap_post_processor(node: Any, old2new: dict[int, int]) -> Any:
    """Special-token ids inside a post-processor (TemplateProcessing ``ids``, Roberta/Bert ``cls``/``sep``)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [old2new[i] for i in value]
            elif key in ("cls", "sep") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                out[key] = [value[0], old2new[value[1]]]
            else:
                out[key] = _remap_post_processor(value, old2new)
        return out
    if isinstance(node, list):
        return [_remap_post_processor(v, old2new) for v in node]
    return node


def trimmed_tokenizer_json(data: dict[str, Any], kept_ids: Sequence[int]) -> dict[str, Any]:
    """A tokenizer.json (as a dict) that emits the new ids (rank of the old id among ``kept_ids``)."""
    old2new = {old: new for new, old in enumerate(kept_ids)}
    data = json.loads(json.dumps(data))
    model = data["model"]
    # Added tokens may lie past the model's own vocabulary (ids >= its size); sorted, they stay at the end.
    if model["type"] == "WordPiece":
        by_id = {i: tok for tok, i in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for new, old in enumerate(kept_ids) if old in by_id}
    elif model["type"] == "Unigram":
        pieces = model["vocab"]
        base_min = min(score for _, score in pieces)
        model["vocab"] = [[pieces[old][0], pieces[old][1]] for old in kept_ids if old < len(pieces)]
        unk = model.get("unk_id")
        if unk is not None:
            model["unk_id"] = old2new[unk]
            # Keep the unknown-character score (min score - 10) where the base had it; see the module docstring.
            model["vocab"][model["unk_id"]][1] = min(model["vocab"][model["unk_id"]][1], base_min)
    else:  # pragma: no cover - refused in _backend_json
        raise VocabError(f"unsupported tokenizer model {model['type']}")
    for added in data.get("added_tokens", []):
        added["id"] = old2new[added["id"]]
    if data.get("post_processor") is not None:
        data["post_processor"] = _remap_post_processor(data["post_processor"], old2new)
    if data.get("padding") and "pad_id" in data["padding"]:
        data["padding"]["pad_id"] = old2new[data["padding"]["pad_id"]]
    return data


def trim_tokenizer(tokenizer: Any, kept_ids: Sequence[int]) -> Any:
    """A new tokenizer of the same class whose vocabulary is ``kept_ids`` (in that order)."""
    from transformers import AutoTokenizer

    data = trimmed_tokenizer_json(_backend_json(tokenizer), kept_ids)
    old2new = {old: new for new, old in enumerate(kept_ids)}
    with tempfile.TemporaryDirectory(prefix="bge_pruning_vocab_") as tmp:
        tokenizer.save_pretrained(tmp)
        for stale in ("vocab.txt", "sentencepiece.bpe.model", "spiece.model", "vocab.json", "merges.txt"):
            (Path(tmp) / stale).unlink(missing_ok=True)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
        cfg_file = Path(tmp) / "tokenizer_config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            if isinstance(cfg.get("added_tokens_decoder"), dict):
                cfg["added_tokens_decoder"] = {str(old2new[int(k)]): v for k, v in cfg["added_tokens_decoder"].items()}
            cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        new = AutoTokenizer.from_pretrained(tmp)
        new.name_or_path = getattr(tokenizer, "name_or_path", "")
    if len(new) != len(kept_ids):
        raise VocabError(f"the rewritten tokenizer has {len(new)} tokens, expected {len(kept_ids)}")
    return new


def write_wordpiece_vocab_txt(directory: str | Path) -> bool:
    """``vocab.txt`` (one token per line, in id order) beside a WordPiece tokenizer.json, for tools that read
    the slow-tokenizer file; returns whether one was written. transformers 5 writes tokenizer.json only."""
    directory = Path(directory)
    tj = directory / "tokenizer.json"
    if not tj.is_file():
        return False
    model = json.loads(tj.read_text())["model"]
    if model.get("type") != "WordPiece":
        return False
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise VocabError(f"{tj}: WordPiece ids are not 0..{len(by_id) - 1}")
    (directory / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in by_id), encoding="utf-8")
    return True


# ====================================================================== trimming the model
def trim_embeddings(backbone: nn.Module, kept_ids: Sequence[int]) -> None:
    """Keep the ``kept_ids`` rows of ``backbone``'s word embeddings (in place) and remap the config's token ids."""
    emb = backbone.embeddings.word_embeddings
    index = torch.as_tensor(list(kept_ids), dtype=torch.long, device=emb.weight.device)
    if int(index.max()) >= emb.num_embeddings:
        raise VocabError(f"kept id {int(index.max())} is beyond the model's {emb.num_embeddings} embeddings")
    old2new = {old: new for new, old in enumerate(kept_ids)}
    config = backbone.config
    pad = config.pad_token_id
    new_pad = old2new[pad] if pad is not None else None
    if pad is not None and new_pad != pad:
        raise VocabError(f"the pad id would move from {pad} to {new_pad}; every id up to the pad id must be kept")
    new = nn.Embedding(len(kept_ids), emb.embedding_dim, padding_idx=new_pad, device=emb.weight.device,
                       dtype=emb.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(emb.weight.index_select(0, index))
    new.weight.requires_grad_(emb.weight.requires_grad)
    backbone.embeddings.word_embeddings = new
    config.vocab_size = len(kept_ids)
    for key in ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            if value not in old2new:
                raise VocabError(f"config.{key} = {value} is not among the kept ids")
            setattr(config, key, old2new[value])


def trim_backbone(backbone: nn.Module, tokenizer: Any, kept_ids: Sequence[int]) -> Any:
    """Trim ``backbone`` in place to ``kept_ids`` and return the tokenizer that emits the new ids."""
    new_tokenizer = trim_tokenizer(tokenizer, kept_ids)
    trim_embeddings(backbone, kept_ids)
    return new_tokenizer


# ====================================================================== checks and reports
def coverage(old_tokenizer: Any, new_tokenizer: Any, texts: Sequence[str], kept_ids: Sequence[int]) -> dict[str, Any]:
    """What the trimmed tokenizer does to ``texts``: the share of tokens that are UNK (before and after) and
    the share of texts whose segmentation changes (new ids, mapped back to base ids, differ)."""
    old_b, new_b = plain_backend(old_tokenizer), plain_backend(new_tokenizer)
    old_unk, new_unk = old_tokenizer.unk_token_id, new_tokenizer.unk_token_id
    n_old = n_new = unk_old = unk_new = changed = 0
    for start in range(0, len(texts), 1024):
        chunk = list(texts[start:start + 1024])
        for a, b in zip(old_b.encode_batch(chunk, add_special_tokens=False),
                        new_b.encode_batch(chunk, add_special_tokens=False)):
            n_old += len(a.ids)
            n_new += len(b.ids)
            unk_old += sum(i == old_unk for i in a.ids)
            unk_new += sum(i == new_unk for i in b.ids)
            changed += a.ids != [kept_ids[i] for i in b.ids]
    return {"texts": len(texts), "tokens_base": n_old, "tokens_trimmed": n_new,
            "unk_share_base": unk_old / n_old if n_old else 0.0,
            "unk_share_trimmed": unk_new / n_new if n_new else 0.0,
            "changed_text_share": changed / len(texts) if texts else 0.0}


def _sample(texts: Sequence[str], n: int) -> list[str]:
    if len(texts) <= n:
        return list(texts)
    step = len(texts) / n
    return [texts[int(k * step)] for k in range(n)]


@torch.no_grad()
def verify_trim(old_backbone: nn.Module, old_tokenizer: Any, new_backbone: nn.Module, new_tokenizer: Any,
                kept_ids: Sequence[int], texts: Sequence[str], max_length: int = 128,
                atol: float = VERIFY_ATOL) -> dict[str, Any]:
    """The same tokens (new ids map back to the base ids; strings equal) and hidden states within ``atol`` on
    ``texts``; raises VocabError otherwise."""
    old_b, new_b = plain_backend(old_tokenizer), plain_backend(new_tokenizer)
    for text, a, b in zip(texts, old_b.encode_batch(list(texts)), new_b.encode_batch(list(texts))):
        if a.ids != [kept_ids[i] for i in b.ids] or a.tokens != b.tokens:
            raise VocabError(f"the trimmed tokenizer segments a corpus text differently: {text[:80]!r} gives "
                             f"{b.tokens[:12]} instead of {a.tokens[:12]}")
    worst = 0.0
    old_backbone.eval()
    new_backbone.eval()
    for start in range(0, len(texts), 16):
        chunk = list(texts[start:start + 16])
        enc_old = old_tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc_new = new_tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        h_old = old_backbone(enc_old["input_ids"], enc_old["attention_mask"],
                             token_type_ids=enc_old.get("token_type_ids"))
        h_new = new_backbone(enc_new["input_ids"], enc_new["attention_mask"],
                             token_type_ids=enc_new.get("token_type_ids"))
        mask = enc_old["attention_mask"].bool()
        worst = max(worst, float((h_old - h_new).abs()[mask].max()))
    if worst > atol:
        raise VocabError(f"the trimmed model's hidden states differ from the base's by {worst:.2e} (> {atol:g}) "
                         "on the corpus texts")
    return {"texts": len(texts), "max_abs_diff": worst, "atol": atol}


def trim_verified(backbone: nn.Module, tokenizer: Any, plan: VocabPlan, texts: Sequence[str],
                  corpus: Sequence[str], verify_texts: int) -> tuple[Any, dict[str, Any]]:
    """Trim ``backbone`` in place to ``plan``, check it against a copy of the untrimmed model on a sample of
    ``texts`` (``verify_trim``), and return the new tokenizer and the ``vocabulary`` record."""
    import copy

    from .shapes import count_params

    untrimmed = copy.deepcopy(backbone)
    params_before = count_params(untrimmed.shape).total
    new_tokenizer = trim_backbone(backbone, tokenizer, plan.kept_ids)
    verification = verify_trim(untrimmed, tokenizer, backbone, new_tokenizer, plan.kept_ids,
                               _sample(texts, verify_texts))
    del untrimmed
    record: dict[str, Any] = plan.to_dict()
    record.update(corpus=list(corpus), params_before=params_before, params_after=count_params(backbone.shape).total,
                  verification=verification,
                  coverage={"corpus": coverage(tokenizer, new_tokenizer, texts, plan.kept_ids)},
                  kept_base_ids=plan.kept_ids)
    return new_tokenizer, record


# ====================================================================== a model directory, end to end
def load_tokenizer(model_dir: str | Path) -> Any:
    """The directory's tokenizer (no remote code: a tokenizer never needs it), refused unless it is fast."""
    from transformers import AutoTokenizer

    from .evaluation.encoder import TOKENIZER_FILES

    # transformers 5 builds an empty tokenizer from config.json alone: require the files themselves.
    if Path(model_dir).is_dir() and not any((Path(model_dir) / f).is_file() for f in TOKENIZER_FILES):
        raise VocabError(f"{model_dir}: no loadable tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError) as e:
        raise VocabError(f"{model_dir}: no loadable tokenizer ({(str(e).splitlines() or [''])[0]})") from None
    _backend_json(tokenizer)
    return tokenizer


def read_keep_tokens(path: str | Path) -> list[str]:
    """``--keep-tokens FILE``: one token string per line (as the tokenizer writes it, e.g. ``##ing`` or ``▁the``)."""
    p = Path(path)
    if not p.is_file():
        raise VocabError(f"--keep-tokens: file not found: {p}")
    return [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def gather_texts(specs: Sequence[str], what: str) -> list[str]:
    """Texts of every corpus spec (``bge_pruning.data.text``); DataError keeps its place, prefixed by ``what``."""
    from .data.errors import DataError
    from .data.text import corpus_texts

    texts: list[str] = []
    for spec in specs:
        try:
            texts += corpus_texts(spec)
        except DataError as e:
            raise VocabError(f"{what}: {e}") from None
    return texts


def prune_vocabulary(model: str, out_dir: str | Path, corpus: Sequence[str], *, min_count: int = 1,
                     max_vocab: int | None = None, keep_tokens: Sequence[str] = (),
                     eval_corpus: Sequence[str] = (), overwrite: bool = False, verify_texts: int = 256,
                     trust_remote_code: bool = False, log: Any = print) -> tuple[Path, dict[str, Any]]:
    """Trim ``model`` (an export of this project, an HF / sentence-transformers directory, a hub id or an
    ``embedded:`` name) to the tokens of ``corpus`` and write it to ``out_dir`` through the verified exporter.

    Returns the directory and the ``vocabulary`` record also stored in its ``pruning_info.json``.
    """
    from .evaluation.encoder import read_st_layout, resolve_model_dir
    from .export.hf_export import check_export_target, export_pruned_model
    from .models.heads import COLBERT_FILE, SPARSE_FILE, ColbertHead, SparseHead
    from .models.loading import load_hf_model, load_linear_state
    from .models.masked_encoder import MaskedBGEM3Backbone
    from .pruning_info import PruningInfo

    if not corpus:
        raise VocabError("--corpus: give at least one corpus")
    out_dir = check_export_target(out_dir, overwrite)
    texts = gather_texts(corpus, "--corpus")
    eval_texts = gather_texts(eval_corpus, "--eval-text") if eval_corpus else []

    model_dir = Path(resolve_model_dir(model))
    tokenizer = load_tokenizer(model_dir)
    # Plan before the weights load: a corpus the tokenizer cannot read or a bad --max-vocab stops here.
    plan = plan_vocabulary(tokenizer, texts, min_count=min_count, max_vocab=max_vocab, keep_tokens=keep_tokens)
    hf_model, _ = load_hf_model(str(model_dir), "MODEL_DIR", trust_remote_code=trust_remote_code,
                                opt_in="pass --trust-remote-code")
    base = MaskedBGEM3Backbone.from_hf_model(hf_model)  # load_hf_model checked the tokenizer against it
    del hf_model
    prior = PruningInfo.load(model_dir)
    pooling, normalize, max_seq_length, _ = read_st_layout(model_dir)
    pooling = pooling or (prior and prior.pooling) or "cls"
    if normalize is None:
        normalize = True if prior is None or prior.normalize is None else prior.normalize
    normalize = bool(normalize)
    heads: dict[str, nn.Module | None] = {"sparse": None, "colbert": None}
    for name, filename in (("sparse", SPARSE_FILE), ("colbert", COLBERT_FILE)):
        file = model_dir / filename
        if file.is_file():
            state = torch.load(file, map_location="cpu", weights_only=True)
            d = base.config.hidden_size
            head = SparseHead(d) if name == "sparse" else ColbertHead(d, int(state["weight"].shape[0]))
            load_linear_state(head.linear, file)
            heads[name] = head.eval()

    log(f"vocabulary: keeping {len(plan.kept_ids):,} of {plan.base_size:,} tokens ({plan.n_from_corpus:,} from "
        f"{len(texts):,} corpus texts, {plan.n_always} special/added, {plan.n_from_keep_tokens} from --keep-tokens)")
    new_tokenizer, record = trim_verified(base, tokenizer, plan, texts, corpus, verify_texts)  # base: now trimmed
    if eval_texts:
        record["coverage"]["eval"] = {"sources": list(eval_corpus),
                                      **coverage(tokenizer, new_tokenizer, eval_texts, plan.kept_ids)}
    info: dict[str, Any] = {"base_model": (prior and prior.base_model) or model, "vocabulary": record}
    if prior is not None:
        info["pruned_by"] = prior.pick("base_shape", "target_shape", "kept_layers", "kept_heads", "params",
                                       "training_steps", "vocabulary")
        if isinstance(prior.vocabulary, dict):
            # Trimming a trimmed model: its kept ids are ids of the earlier vocabulary; record base ids.
            earlier = prior.vocabulary.get("kept_base_ids")
            if earlier:
                record["kept_base_ids"] = [earlier[i] for i in plan.kept_ids]
                record["base_size"] = prior.vocabulary.get("base_size", record["base_size"])
    out = export_pruned_model(base, out_dir, new_tokenizer, None, pooling=pooling, normalize=normalize,
                              sparse_head=heads["sparse"], colbert_head=heads["colbert"], overwrite=overwrite,
                              info=info, max_seq_length=max_seq_length)
    return out, record


def trim_for_run(backbone: nn.Module, tokenizer: Any, vcfg: Any,
                 key: str = "model.vocab") -> tuple[Any, dict[str, Any]]:
    """``model.vocab`` of a run config: trim ``backbone`` in place before training, verified like the CLI.

    Returns the trimmed tokenizer and the record that the run's export stores in ``pruning_info.json``.
    """
    corpus = vcfg.get("corpus")
    if isinstance(corpus, str):
        corpus = [corpus]
    if not corpus:
        raise VocabError(f"{key}.corpus: give at least one corpus (see bge_pruning.data.text)")
    try:
        texts = gather_texts(list(corpus), f"{key}.corpus")
        keep = read_keep_tokens(vcfg["keep_tokens"]) if vcfg.get("keep_tokens") else ()
        plan = plan_vocabulary(tokenizer, texts, vocab_size=len(tokenizer), min_count=int(vcfg.get("min_count") or 1),
                               max_vocab=vcfg.get("max_vocab"), keep_tokens=keep)
        return trim_verified(backbone, tokenizer, plan, texts, corpus, 64)
    except VocabError as e:
        message = str(e)
        raise VocabError(message if message.startswith(key) else f"{key}: {message}") from None
