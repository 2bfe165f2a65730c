"""Evaluate a model directory (optionally against a baseline) on STS, paraphrase / BEIR retrieval and MTEB tasks.

    python scripts/evaluate_model.py MODEL_DIR [--baseline DIR] --tasks SPEC [SPEC ...]
        [--output results.json] [--batch-size N] [--max-examples N] [--device cpu|cuda] [--no-progress]
        [--trust-remote-code]

Task specs (PREFIX:ARGUMENT):
  sts:PATH_OR_HF_ID[:split]         Spearman / Pearson (x100) of cosine vs gold (+ sparse/colbert heads)
  paraphrase:STS_PATH_OR_HF_ID[:split]  retrieve each sentence1 (gold >= 4) among all sentence2s
  retrieval:BEIR_DIR_OR_HF_ID[:split]   BEIR retrieval, exact search: nDCG/MRR/Recall @10, @100
  mteb:TASK_NAME_OR_LOCAL_PATH      an mteb task by name, or a local STS file / BEIR directory run
                                    through mteb (main score in mteb's [0, 1] scale)
The split defaults to "test" (it picks the file of a directory or the split of a hub dataset; a single
local file is read whatever the split).

Prints ``task | metric | value`` or, with --baseline, ``task | metric | base | pruned | retention %``;
--output writes a JSON with every number, the model dirs and the wall time. mteb's own result files go
beside it (``<output>_mteb/``), or to ./mteb_results without --output, filed under each model's name and a
hash of its weights.
"""
from __future__ import annotations

import argparse
import gc
import logging
import math
import sys
import time
from pathlib import Path

from bge_pruning.errors import UserError
from bge_pruning.evaluation.tasks import (  # noqa: F401 - the names scripts/evaluate_model.py had
    DEFAULT_SPLIT,
    PREFIXES,
    TaskData,
    TaskSpec,
    assign_labels,
    parse_task_spec,
)

RETRIEVAL_K = (10, 100)


def evaluate_one_model(model_dir: str, specs: list[TaskSpec], data: TaskData, args, mteb_dir: Path | None,
                       role: str) -> dict[str, dict[str, float]]:
    from bge_pruning.evaluation.encoder import EmbeddingModel
    from bge_pruning.evaluation.mteb_wrapper import model_identity, run_mteb
    from bge_pruning.evaluation.retrieval import evaluate_retrieval
    from bge_pruning.evaluation.sts import evaluate_sts

    onnx_file = args.onnx if role == "model" else None
    model = EmbeddingModel.from_dir(model_dir, device=args.device, trust_remote_code=args.trust_remote_code,
                                    onnx_file=onnx_file)
    progress = not args.no_progress
    results: dict[str, dict[str, float]] = {}
    for t in specs:
        logging.info("[%s] %s", role, t.spec)
        heads = _heads_for(model, args.heads)
        if t.kind == "sts":
            results[t.label] = evaluate_sts(model, data.get(t), batch_size=args.batch_size, show_progress=progress,
                                            heads=heads, hybrid_weights=args.hybrid_weights)
        elif t.kind in ("paraphrase", "retrieval"):
            corpus, queries, qrels = data.get(t)
            results[t.label] = evaluate_retrieval(model, corpus, queries, qrels, k_values=RETRIEVAL_K,
                                                  batch_size=args.batch_size, show_progress=progress,
                                                  heads=heads, hybrid_weights=args.hybrid_weights)
        else:
            out = run_mteb(model, [data.mteb_task(t)], output_dir=mteb_dir, batch_size=args.batch_size,
                           show_progress=progress, max_examples=args.max_examples,
                           identity=model_identity(model_dir, model.path))
            metrics = {}
            for name, r in out.items():
                # x100, the scale of every other score here (mteb's own result files keep its [0, 1]).
                metrics[f"{r['main_score_name']}" if len(out) == 1 else f"{name}/{r['main_score_name']}"] = \
                    100.0 * r["main_score"]
            results[t.label] = metrics
    PARAMS[role] = _param_counts(model)
    del model
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    return results


# Parameter counts of the models evaluated in this process, by role (the report's "params", which
# `plot.py pareto` reads).
PARAMS: dict[str, dict[str, int] | None] = {}


def _param_counts(model) -> dict[str, int] | None:
    """``{"total", "encoder_layers"}`` from ``bge_pruning.shapes`` (the one source of counts) for a torch model;
    for an ONNX graph, the export's ``pruning_info.json`` counts; None when neither is available."""
    from bge_pruning.pruning_info import PruningInfo
    from bge_pruning.shapes import EncoderShape, count_params

    net = model.model
    try:
        shape = EncoderShape.from_hf_config(net.config, has_pooler=getattr(net, "pooler", None) is not None)
        counts = count_params(shape)
        return {"total": int(counts.total), "encoder_layers": int(counts.encoder_layers)}
    except (AttributeError, TypeError, ValueError):
        info = PruningInfo.load(model.path) if model.path is not None else None
        if info is not None:
            exported = info.exported_params
            if "total" in exported:
                return {"total": int(exported["total"]), "encoder_layers": int(exported["encoder_layers"])}
    return None


def _heads_for(model, heads: list[str] | None) -> list[str] | None:
    """``--heads`` for one model: what it asks, less the heads this model lacks (a dense-only baseline next to a
    BGE-M3 export is scored on dense, with a note); None keeps the default (everything the model has)."""
    if heads is None:
        return None
    has = {"dense": True, "sparse": model.has_sparse, "colbert": model.has_colbert,
           "hybrid": model.has_sparse and model.has_colbert}
    kept = [h for h in heads if has[h]]
    if len(kept) < len(heads):
        logging.warning("%s has no %s: scored on %s", model.name, ", ".join(h for h in heads if not has[h]),
                        ", ".join(kept) or "dense")
    return kept


def _parse_heads(text: str) -> list[str]:
    from bge_pruning.evaluation.sts import HEADS

    heads = [h.strip() for h in text.split(",") if h.strip()]
    unknown = [h for h in heads if h not in HEADS]
    if not heads or unknown:
        raise argparse.ArgumentTypeError(f"--heads takes a comma-separated subset of {','.join(HEADS)}, got {text!r}")
    return heads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])  # the rest, not the description again
    p.add_argument("model_dir", help="model directory to evaluate (HF + sentence-transformers layout)")
    p.add_argument("--baseline", help="baseline model: a directory, a hub id (e.g. BAAI/bge-m3) or "
                                      "embedded:all-MiniLM-L6-v2; adds base and retention %% columns")
    p.add_argument("--tasks", nargs="+", required=True, metavar="SPEC",
                   help=f"task specs PREFIX:ARGUMENT, PREFIX in {', '.join(PREFIXES)}")
    p.add_argument("--output", help="write the JSON report here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-examples", type=int, default=None,
                   help="first N pairs (sts, paraphrase, local mteb STS) / first N queries (retrieval)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--heads", default=None, metavar="LIST",
                   help="outputs to score, comma-separated: dense,sparse,colbert,hybrid (default: all the model "
                        "has; hybrid is BGE-M3's weighted dense + sparse + colbert score, on both heads)")
    p.add_argument("--hybrid-weights", type=float, nargs=3, default=(0.4, 0.2, 0.4), metavar=("DENSE", "SPARSE",
                   "COLBERT"), help="weights of the hybrid score (default 0.4 0.2 0.4, FlagEmbedding's compute_score)")
    p.add_argument("--onnx", nargs="?", const="onnx/model.onnx", default=None, metavar="FILE",
                   help="score MODEL_DIR's ONNX graph on onnxruntime (CPU) instead of its torch weights: "
                        "onnx/model.onnx, or FILE inside MODEL_DIR such as onnx/model_qint8_avx512_vnni.onnx. "
                        "With --baseline MODEL_DIR this measures the ONNX/int8 retention against torch")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run modeling code shipped in MODEL_DIR / --baseline even when they are not exports of this "
                        "project (bge_pruning's own exports need no flag)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done; 2 bad arguments (a ``UserError`` or a bad value, found before any model loads);
    1 data or a model that fails while it is read or evaluated."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def fail(msg: str, code: int) -> int:
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return code

    try:
        return _evaluate(args, fail)
    except UserError as e:  # a bad task spec, refused remote code: before any model is loaded
        return fail(str(e), 2)


def _evaluate(args: argparse.Namespace, fail) -> int:
    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}", 2)
    if args.max_examples is not None and args.max_examples < 1:
        return fail(f"--max-examples must be >= 1, got {args.max_examples}", 2)
    if args.heads is not None:
        try:
            args.heads = _parse_heads(args.heads)
        except argparse.ArgumentTypeError as e:
            return fail(str(e), 2)
    w = args.hybrid_weights
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        return fail(f"--hybrid-weights must be 3 non-negative numbers with a positive sum, got {list(w)}", 2)
    specs = [parse_task_spec(s) for s in args.tasks]
    assign_labels(specs)
    from bge_pruning.models.loading import is_hub_id, resolve_model_path
    from bge_pruning.trust import resolve_trust

    for role, d in (("model", args.model_dir), ("baseline", args.baseline)):
        if d is None or is_hub_id(resolve_model_path(d)):  # hub ids are downloaded when evaluated
            continue
        if not Path(resolve_model_path(d)).expanduser().is_dir():
            return fail(f"{role} directory not found: {Path(d).expanduser().resolve()}", 2)
        # refused remote code (RemoteCodeError) stops here, before any data or model loads
        resolve_trust(str(Path(resolve_model_path(d)).expanduser()), args.trust_remote_code,
                      "--baseline" if role == "baseline" else "MODEL_DIR", "pass --trust-remote-code")
    if args.output:
        from bge_pruning.paths import unwritable

        problem = "is a directory" if Path(args.output).is_dir() else unwritable(Path(args.output))
        if problem:
            return fail(f"--output {args.output}: {problem} (checked before evaluating, so no result is lost)", 2)
    if args.onnx is not None:
        onnx_path = Path(resolve_model_path(args.model_dir)).expanduser() / args.onnx
        if not onnx_path.is_file():
            return fail(f"--onnx {args.onnx}: {onnx_path} not found (export with --onnx; int8: --quantize int8)", 2)
        if args.device not in (None, "cpu"):
            return fail(f"--onnx runs on onnxruntime's CPU provider; --device {args.device} is not supported", 2)
        args.device = "cpu"
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    from bge_pruning.evaluation.report import build_report, format_table, write_json

    mteb_dir = None
    if any(t.kind == "mteb" for t in specs):  # mteb's own result files: beside --output, else ./mteb_results
        out = Path(args.output) if args.output else None
        mteb_dir = out.with_name(out.stem + "_mteb") if out else Path("mteb_results")
    data = TaskData(args.max_examples)
    for t in specs:  # mteb task names are checked (SpecError) before any model is loaded
        if t.kind == "mteb":
            data.mteb_task(t)
    start = time.perf_counter()
    try:  # data errors show up before any model is loaded
        for t in specs:
            data.get(t)
    except (ValueError, FileNotFoundError) as e:
        return fail(str(e), 1)
    times: dict[str, float] = {}
    try:
        baseline_results = None
        if args.baseline:
            t0 = time.perf_counter()
            baseline_results = evaluate_one_model(args.baseline, specs, data, args, mteb_dir, "baseline")
            times["baseline_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = evaluate_one_model(args.model_dir, specs, data, args, mteb_dir, "model")
        times["model_s"] = time.perf_counter() - t0
    except (ValueError, FileNotFoundError) as e:  # DataError, ModelDirError, SpecError: UserErrors, and ValueErrors
        return fail(str(e), 1)
    wall = time.perf_counter() - start

    print(format_table(results, baseline_results))
    print(f"wall time: {wall:.1f}s")
    if args.output:
        report = build_report(args.model_dir, results, baseline_dir=args.baseline,
                              baseline_results=baseline_results, tasks=[t.spec for t in specs],
                              wall_time_s=wall,
                              extra={"task_labels": {t.label: t.spec for t in specs},
                                     "wall_time_per_model_s": times,
                                     "params": dict(PARAMS),
                                     "settings": {"batch_size": args.batch_size, "max_examples": args.max_examples,
                                                  "device": args.device, "retrieval_k": list(RETRIEVAL_K),
                                                  "onnx_file": args.onnx, "heads": args.heads,
                                                  "hybrid_weights": list(args.hybrid_weights)}})
        if mteb_dir is not None:
            report["mteb_output_dir"] = str(mteb_dir)
        path = write_json(args.output, report)
        print(f"wrote {path}")
    return 0

