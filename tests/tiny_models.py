"""Tiny random XLM-RoBERTa models with a tokenizer trained here, so the XLM-R path is tested offline."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ("the a an one two cat dog bird fish man woman child people car bus train plane city river house "
         "street park is are was were runs walks sits eats plays reads sings jumps swims drives flies "
         "quickly slowly happily red blue green small big old new on in under near with from to and but "
         "not very music book food water ball game school market photo picture guitar piano beach snow "
         "der die das und ein eine le la les et un une el los y una casa perro gato").split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


def train_xlmr_tokenizer(out_dir: Path, vocab_size: int = 300, texts: list[str] | None = None):
    """A SentencePiece-style Unigram tokenizer with XLM-R's special tokens and ids (<s>=0, <pad>=1, </s>=2, <unk>=3),
    trained on ``texts`` (default: a small synthetic corpus)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    trained = Tokenizer(models.Unigram())
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(texts if texts is not None else corpus(), trainer)
    # The trainer orders pieces with equal scores nondeterministically: sort them so ids are reproducible.
    # Required single characters get scores min - 1e-4 * k in hash-map order (Rust's per-process seed):
    # rounding puts them in one bucket, ordered by the piece itself.
    pieces = [[piece, round(score, 2)] for piece, score in json.loads(trained.to_str())["model"]["vocab"]]
    ordered = [p for p in pieces if p[0] in specials] + sorted(
        (p for p in pieces if p[0] not in specials), key=lambda p: (-p[1], p[0]))
    tok = Tokenizer(models.Unigram([tuple(p) for p in ordered], unk_id=3))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=128)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_xlmr(out_dir: Path, n_layers: int = 4, n_heads: int = 4, hidden: int = 32,
                    intermediate: int = 64, seed: int = 0, bge_m3_heads: bool = False,
                    texts: list[str] | None = None, vocab_size: int = 300) -> Path:
    """Save a random tiny XLMRobertaModel + trained tokenizer (+ BGE-M3 head files) to ``out_dir``."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_xlmr_tokenizer(out_dir, vocab_size, texts)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=n_layers,
                              num_attention_heads=n_heads, intermediate_size=intermediate,
                              max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2)
    model = XLMRobertaModel(config)
    # Random init has tiny LayerNorm-free differences between layers; perturb LayerNorms too so that
    # tests exercise every parameter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    if bge_m3_heads:
        torch.save(torch.nn.Linear(hidden, 1).state_dict(), out_dir / "sparse_linear.pt")
        torch.save(torch.nn.Linear(hidden, hidden).state_dict(), out_dir / "colbert_linear.pt")
    return out_dir


def write_mpnet_tokenizer(out_dir: Path, texts: list[str] | None = None):
    """A WordPiece ``MPNetTokenizerFast`` with MPNet's special tokens and ids (<s>=0, <pad>=1, </s>=2,
    [UNK]=3, <mask> last, as all-mpnet-base-v2), over the words of ``texts`` (default: the synthetic
    corpus) plus every lowercase letter, digit and punctuation mark with its ``##`` continuation, so any
    ASCII text tokenizes without UNK."""
    import string

    from transformers import MPNetTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = sorted({w.strip(".").lower() for t in (texts if texts is not None else corpus()) for w in t.split()} - {""})
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["<s>", "<pad>", "</s>", "[UNK]"] + chars + ["##" + c for c in chars] + words + ["<mask>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab))}
    tok = MPNetTokenizerFast(vocab=vocab, do_lower_case=True, bos_token="<s>",
                             eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="[UNK]",
                             pad_token="<pad>", mask_token="<mask>", model_max_length=128)
    tok.save_pretrained(out_dir)
    return tok


def build_tiny_mpnet(out_dir: Path, n_layers: int = 4, n_heads: int = 4, hidden: int = 32,
                     intermediate: int = 64, seed: int = 0, texts: list[str] | None = None) -> Path:
    """Save a random tiny MPNetModel (32 relative-attention buckets, as all-mpnet-base-v2) + WordPiece tokenizer
    + sentence-transformers files (mean pooling, normalized) to ``out_dir``."""
    from transformers import MPNetConfig, MPNetModel

    out_dir = Path(out_dir)
    tokenizer = write_mpnet_tokenizer(out_dir, texts)
    torch.manual_seed(seed)
    config = MPNetConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=n_layers,
                         num_attention_heads=n_heads, intermediate_size=intermediate, max_position_embeddings=130,
                         relative_attention_num_buckets=32, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = MPNetModel(config)
    with torch.no_grad():  # see build_tiny_xlmr; the bias table too, so each head's column differs
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.encoder.relative_attention_bias.weight.normal_(0, 1.0)
    model.save_pretrained(out_dir)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (out_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
    return out_dir
