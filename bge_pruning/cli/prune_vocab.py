"""Trim a model's vocabulary to the tokens a corpus uses, with a tokenizer that emits the new ids.

    python scripts/prune_vocab.py MODEL_DIR OUT_DIR --corpus PATH [PATH ...] [--min-count N] [--max-vocab N]
        [--keep-tokens FILE] [--eval-text PATH ...] [--overwrite]

MODEL_DIR: an export of this project, a Hugging Face / sentence-transformers directory, a hub id or
``embedded:all-MiniLM-L6-v2``. Corpus and eval paths: a .txt file (one text per line), a BEIR directory,
or ``text:FILE.jsonl[:FIELD]``, ``sts:SOURCE[:SPLIT]``, ``retrieval:SOURCE[:SPLIT]``, ``beir:SOURCE[:SPLIT]``,
``hf:DATASET_ID[:SPLIT[:FIELD]]``. The result is checked against the untrimmed model on the corpus (same
token strings, hidden states within 1e-6) and written through the verified exporter; pruning_info.json
records the kept vocabulary and the coverage report. Exit status: 0 done, 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import json
import sys


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write the trimmed model to (must not exist)")
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help="texts whose tokens are kept")
    p.add_argument("--min-count", type=_positive, default=1, metavar="N",
                   help="keep tokens seen at least N times in the corpus (default 1)")
    p.add_argument("--max-vocab", type=_positive, metavar="N",
                   help="at most N tokens in all (special tokens included; the most frequent corpus tokens win)")
    p.add_argument("--keep-tokens", metavar="FILE", help="token strings to keep whatever the corpus says, one a line")
    p.add_argument("--eval-text", nargs="+", default=[], metavar="PATH",
                   help="texts to report coverage on (UNK share, share of texts segmented differently)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it already holds a model")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run modeling code shipped in MODEL_DIR even when it is not this project's own export")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bge_pruning.errors import UserError
    from bge_pruning.vocab import prune_vocabulary, read_keep_tokens

    try:
        keep = read_keep_tokens(args.keep_tokens) if args.keep_tokens else ()
        out, record = prune_vocabulary(args.model_dir, args.out_dir, args.corpus, min_count=args.min_count,
                                       max_vocab=args.max_vocab, keep_tokens=keep, eval_corpus=args.eval_text,
                                       overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    except UserError as e:
        print(f"prune_vocab: error: {e}", file=sys.stderr)
        return 2
    print(f"params: {record['params_before']:,} -> {record['params_after']:,} "
          f"({record['params_after'] / record['params_before']:.1%})")
    for name, cov in record["coverage"].items():
        print(f"coverage on {name} ({cov['texts']:,} texts): UNK share {cov['unk_share_base']:.4%} -> "
              f"{cov['unk_share_trimmed']:.4%}, texts segmented differently {cov['changed_text_share']:.2%}")
    print(f"exported: {out}")
    print(json.dumps({k: v for k, v in record.items() if k != "kept_base_ids"}, indent=2))
    return 0

