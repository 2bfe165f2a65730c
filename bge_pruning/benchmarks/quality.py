"""Quality benchmark v2: does a pruned encoder stay general? L0 (uniform and global) vs layer-drop vs the base.

    python scripts/benchmark_quality.py [--model minilm|mpnet] [--seeds 17 18 19] [--targets 50]
        [--methods reference l0 l0_global layer_drop] [--steps-prune N] [--steps-finetune M] [--only RUN ...]

Every method gets the same data, losses and number of steps (N + M), from the templates in ``configs/quality/``
(the general recipe: teacher distillation on plain text, STS pairs, retrieval triplets; see their comments):

* ``reference``: the unpruned base, ``stage: finetune``, N + M steps (what the same training does without pruning);
* ``l0_<t>``: ``stage: prune`` to the uniform shape of t% of the encoder-layer parameters that
  ``bge_pruning.shapes.candidate_shapes`` ranks first, N steps, then ``stage: finetune`` on its export, M steps;
* ``l0_global_<t>``: the same with a global target (one Lagrangian on the expected parameter count; widths and
  depth free per layer) and the sublayer gates: ``target_model: {share: t/100}``, ``pruning_modules: [layer, head,
  intermediate, head_layer, mlp]``;
* ``layer_drop_<t>_<rule>``: round(L * t / 100) of the base's layers (``bge_pruning.baselines``, rules ``ends``,
  ``bottom``, ``top``), then ``stage: finetune`` for N + M steps. L0 is compared with the BEST rule per metric.

Every export and the base are scored on two tasks, one the runs train on and one they do not:

* STS-B dev (1,500 pairs): dense cosine Spearman x100. The runs train on STS-B *train*.
* SciFact retrieval: nDCG@10 x100 (and MRR@10, Recall@100) of the **scored half** of the 809 train claims over
  the full 5,183-abstract corpus, dense exact search. Claims are split by a fixed rule (even query ids are scored,
  odd ones may train; ``ids: even|odd`` of ``bge_pruning.data``) and the templates only train on ``ids: odd``.

Targets (``check_targets``), for each L0 method at ``--check-target`` (50): at least 98% of the **base** model's
STS-B dev Spearman and 95% of its SciFact nDCG@10 (a pruned model must not be worse than what the user started
from, on any task), and for all-mpnet-base-v2 at least 1 point above the best layer-drop on both. With several
seeds the means are compared, and each row shows mean and spread.

Writes ``OUT_DIR/results.json`` (``scripts/plot.py pareto`` reads it, with ``--metric spearman|ndcg10``), prints
the table and the verdict, and draws ``pareto_sts.png`` and ``pareto_scifact.png``. Resumable: finished stages
and scores are reused with ``--skip-existing``. The test splits are never read: every number is a dev number.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..baselines import LAYER_RULES
from ..errors import BenchmarkError, UserError
from ..pruning_info import PRUNING_INFO_FILE, PruningInfo

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
TEMPLATES = ROOT / "configs" / "quality"
METHODS = ("reference", "l0", "l0_global", "layer_drop")
MIN_STS_RETENTION = 98.0  # % of the base's STS-B dev Spearman
MIN_RETRIEVAL_RETENTION = 95.0  # % of the base's SciFact nDCG@10
CHECK_TARGET = 50
GLOBAL_MODULES = ("layer", "head", "intermediate", "head_layer", "mlp")


@dataclass(frozen=True)
class BaseModel:
    """A base encoder the benchmark prunes, and its settings."""

    key: str
    name_or_path: str
    pooling: str
    min_delta: float | None  # points above the best layer-drop an L0 run must reach (None: reported, not required)


MODELS = {
    "minilm": BaseModel("minilm", "embedded:all-MiniLM-L6-v2", "mean", None),
    "mpnet": BaseModel("mpnet", "embedded:all-mpnet-base-v2", "mean", 1.0),
}


# ====================================================================== the scored / trained SciFact halves
SCORED_IDS = "even"  # the templates train on ``ids: odd`` (bge_pruning.data.retrieval.query_half)


def scifact_scored(scifact_dir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """``(corpus, queries, qrels)`` of the scored half of SciFact's train claims (full corpus): even query ids,
    where a repeated claim text follows its smallest id, so no scored text is ever a training claim."""
    from ..data.retrieval import load_beir

    return load_beir(str(scifact_dir), "train", ids=SCORED_IDS)


def _export_info(model_dir: Path) -> PruningInfo:
    """The ``pruning_info.json`` of a stage's export; a stage that ended without one is a BenchmarkError."""
    info = PruningInfo.load(model_dir)
    if info is None:
        raise BenchmarkError(f"{model_dir / PRUNING_INFO_FILE}: missing; the stage did not export (see its train.out)")
    return info


# ====================================================================== numbers (pure functions)

def retention(base: float | None, value: float | None) -> float | None:
    """``100 * value / base``, as ``bge_pruning.evaluation.report.retention``; None when either is missing."""
    from ..evaluation.report import retention as _retention

    return _retention(base, value)


METRICS = ("spearman", "ndcg10")


def aggregate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run name across seeds: the mean of each metric, its min and max, and the seeds."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    rows = []
    for name, group in groups.items():
        first = group[0]
        row = {k: first.get(k) for k in ("name", "method", "target", "layer_rule", "encoder_params",
                                          "total_params", "shape")}
        row["seeds"] = [r.get("seed") for r in group]
        row["shapes"] = sorted({str(r.get("shape")) for r in group})
        for m in METRICS:
            values = [float(r[m]) for r in group if r.get(m) is not None and math.isfinite(float(r[m]))]
            row[m] = statistics.fmean(values) if values else None
            row[f"{m}_min"] = min(values) if values else None
            row[f"{m}_max"] = max(values) if values else None
            row[f"{m}_per_seed"] = values
        rows.append(row)
    return rows


def annotate(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Aggregated rows plus retention vs the base and points above the best layer-drop of the same target, per
    metric (``<metric>_retention``, ``<metric>_vs_layer_drop``, ``<metric>_best_layer_drop``)."""
    best: dict[tuple[Any, str], Mapping[str, Any]] = {}
    for r in rows:
        if r.get("method") != "layer_drop":
            continue
        for m in METRICS:
            if r.get(m) is not None and ((r["target"], m) not in best or r[m] > best[r["target"], m][m]):
                best[r["target"], m] = r
    out = []
    for r in rows:
        row = dict(r)
        for m in METRICS:
            row[f"{m}_retention"] = retention(base.get(m) if base else None, r.get(m))
            ld = best.get((r.get("target"), m)) if r.get("method") != "layer_drop" else None
            row[f"{m}_vs_layer_drop"] = r[m] - ld[m] if ld is not None and r.get(m) is not None else None
            row[f"{m}_best_layer_drop"] = ld["name"] if ld is not None else None
        out.append(row)
    return out


def check_targets(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None, target: int = CHECK_TARGET,
                  min_delta: float | None = None) -> list[dict[str, Any]]:
    """For each L0 method at ``target``: is each target met (True / False / None when not measured)?"""
    checks = []
    for r in annotate(rows, base):
        if r.get("method") not in ("l0", "l0_global") or r.get("target") != target:
            continue
        sts, ret = r["spearman_retention"], r["ndcg10_retention"]
        d_sts, d_ret = r["spearman_vs_layer_drop"], r["ndcg10_vs_layer_drop"]
        c = {"name": r["name"], "method": r["method"], "target": target,
             "sts_retention": sts, "retrieval_retention": ret,
             "sts_vs_layer_drop": d_sts, "retrieval_vs_layer_drop": d_ret,
             "sts_retention_met": None if sts is None else sts >= MIN_STS_RETENTION,
             "retrieval_retention_met": None if ret is None else ret >= MIN_RETRIEVAL_RETENTION,
             "min_delta": min_delta}
        if min_delta is not None:
            c["delta_met"] = None if d_sts is None or d_ret is None else (d_sts >= min_delta and d_ret >= min_delta)
        parts = [c["sts_retention_met"], c["retrieval_retention_met"]] + ([c["delta_met"]] if min_delta else [])
        c["met"] = None if None in parts else all(parts)
        checks.append(c)
    return checks


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def _spread(r: Mapping[str, Any], m: str) -> str:
    if len(r.get(f"{m}_per_seed") or []) < 2:
        return _fmt(r.get(m), ".2f")
    return f"{r[m]:.2f} [{r[f'{m}_min']:.2f}, {r[f'{m}_max']:.2f}]"


def format_table(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None) -> str:
    """run | method | shape | encoder params | STS-B dev | % base | SciFact nDCG@10 | % base | vs best layer-drop."""
    from ..tables import format_rows

    header = ["run", "method", "shape", "encoder params", "seeds", "STS-B dev", "% base", "SciFact nDCG@10",
              "% base", "STS vs layer-drop", "nDCG vs layer-drop"]
    body = []
    if base:
        body.append(["base", "no training", str(base.get("shape", "-")), _fmt(base.get("encoder_params"), ","), "-",
                     _fmt(base.get("spearman"), ".2f"), "100.0", _fmt(base.get("ndcg10"), ".2f"), "100.0", "-", "-"])
    for r in annotate(rows, base):
        body.append([str(r["name"]), str(r["method"]), ", ".join(r.get("shapes") or [str(r.get("shape"))]),
                     _fmt(r.get("encoder_params"), ","), ",".join(str(s) for s in r.get("seeds") or []),
                     _spread(r, "spearman"), _fmt(r["spearman_retention"], ".1f"), _spread(r, "ndcg10"),
                     _fmt(r["ndcg10_retention"], ".1f"), _fmt(r["spearman_vs_layer_drop"], "+.2f"),
                     _fmt(r["ndcg10_vs_layer_drop"], "+.2f")])
    return format_rows(header, body, left=(0, 1, 2))


def verdict_lines(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    word = {True: "MET", False: "NOT MET", None: "not measured"}
    lines = []
    for c in checks:
        lines.append(f"{c['name']}: STS-B dev {_fmt(c['sts_retention'], '.1f')}% of base (>= {MIN_STS_RETENTION:.0f}%: "
                     f"{word[c['sts_retention_met']]}); SciFact nDCG@10 {_fmt(c['retrieval_retention'], '.1f')}% of "
                     f"base (>= {MIN_RETRIEVAL_RETENTION:.0f}%: {word[c['retrieval_retention_met']]}); vs best "
                     f"layer-drop {_fmt(c['sts_vs_layer_drop'], '+.2f')} / {_fmt(c['retrieval_vs_layer_drop'], '+.2f')}"
                     + (f" (>= +{c['min_delta']:.0f} on both: {word[c['delta_met']]})" if c.get("min_delta") else ""))
    return lines or ["no L0 run at the check target: nothing to judge"]


# ====================================================================== plan and configs
def layer_drop_count(n_layers: int, target_pct: int) -> int:
    """Layers a layer-drop model keeps for ``target_pct``% of the encoder layers (at least 1)."""
    return max(1, round(n_layers * target_pct / 100))


def plan_runs(methods: Sequence[str], targets: Sequence[int], rules: Sequence[str] = LAYER_RULES
              ) -> list[tuple[str, str, int, str | None]]:
    """(name, method, target, layer rule) in the order they run: reference, then per target L0 and layer-drop."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BenchmarkError(f"--methods {unknown}: unknown; valid: {', '.join(METHODS)}")
    runs: list[tuple[str, str, int, str | None]] = []
    if "reference" in methods:
        runs.append(("reference", "reference", 100, None))
    for t in sorted(set(targets), key=lambda t: (t != CHECK_TARGET, t)):
        if "l0" in methods:
            runs.append((f"l0_{t}", "l0", t, None))
        if "l0_global" in methods:
            runs.append((f"l0_global_{t}", "l0_global", t, None))
        if "layer_drop" in methods:
            runs += [(f"layer_drop_{t}_{rule}", "layer_drop", t, rule) for rule in dict.fromkeys(rules)]
    return runs


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise BenchmarkError(f"override {key}: {p} is not a mapping in the template")
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``train.lr=1e-4`` is the number 0.0001, not a string)."""
    import yaml

    if "=" not in item:
        raise BenchmarkError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-4)")
    key, text = item.split("=", 1)
    value = yaml.safe_load(text) if text else None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


def stage_config(template: str, run: str, run_dir: Path, *, name_or_path: str, teacher: str, pooling: str,
                 steps: int, seed: int, batch_size: int | None = None, target_model: Mapping[str, Any] | None = None,
                 pruning_modules: Sequence[str] | None = None, warmup_frac: float = 0.2,
                 overrides: Sequence[str] = ()) -> dict:
    """A filled copy of ``configs/quality/<template>.yaml``: run name, seed, model, steps, output paths (and the
    target and Lagrangian warmup for a prune stage). The data and losses stay the template's."""
    import yaml

    path = TEMPLATES / f"{template}.yaml"
    if not path.is_file():
        raise BenchmarkError(f"config template not found: {path}")
    cfg = yaml.safe_load(path.read_text())
    cfg["run_name"] = run
    cfg["seed"] = int(seed)
    cfg["model"]["name_or_path"] = name_or_path
    cfg["model"]["pooling"] = pooling
    cfg["model"]["teacher"] = teacher  # every method distils from the same frozen base
    t = cfg["train"]
    if batch_size:
        t["batch_size"] = int(batch_size)
    t["max_duration"] = f"{steps}ba"
    t["save_interval"] = f"{steps}ba"
    t["eval_interval"] = f"{steps}ba"
    t["progress_bar"] = False
    t["save_folder"] = str(run_dir / "checkpoints")
    t["log_file"] = str(run_dir / "train_log.jsonl")
    cfg.setdefault("export", {})["output_dir"] = str(run_dir / "model")
    if template == "prune":
        if target_model is None:
            raise BenchmarkError("a prune stage needs a target")
        cfg["model"]["l0_module"]["target_model"] = dict(target_model)
        if pruning_modules is not None:
            cfg["model"]["l0_module"]["pruning_modules"] = list(pruning_modules)
        cfg["model"]["l0_module"]["lagrangian_warmup_steps"] = f"{max(1, int(round(steps * warmup_frac)))}ba"
        t["warmup"] = f"{min(20, max(1, steps // 10))}ba"
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(cfg, key, value)
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    import yaml

    from ..config import load_config

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by scripts/benchmark_quality.py; train with: python train.py " + str(path) + "\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
    load_config(path)  # fail now, not after the previous stages, on a bad override
    return path


# ====================================================================== running stages
def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    # Under CPU contention (shared cores) one intra-op thread per process is several times faster than two.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def export_done(run_dir: Path) -> bool:
    return (run_dir / "model" / PRUNING_INFO_FILE).is_file() and (run_dir / "summary.json").is_file()


def train_stage(config: Path, run_dir: Path, threads: int, keep_checkpoints: bool) -> dict[str, Any]:
    """``python train.py <config>`` with its output in ``run_dir/train.out``; returns summary.json + wall time."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "train.out"
    cmd = [sys.executable, str(ROOT / "train.py"), str(config)]
    print(f"  $ {' '.join(cmd)}   (log: {log})", flush=True)
    started = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=_env(threads))
    wall = time.time() - started
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BenchmarkError(f"{' '.join(cmd)} failed with exit code {proc.returncode} after {wall:.0f}s; "
                             f"last lines of {log}:\n{tail}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_seconds"] = wall
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if not keep_checkpoints:  # the Composer checkpoints (weights + optimizer) are not needed once exported
        for ckpt in (run_dir / "checkpoints").glob("*.pt"):
            ckpt.unlink()
    return summary


# ====================================================================== evaluation
def _weights_stamp(model_dir: Path | str) -> float | None:
    weights = Path(model_dir) / "model.safetensors"
    return weights.stat().st_mtime if weights.is_file() else None


def score_model(model_dir: Path | str, dev_pairs: Sequence[Any], scifact: tuple | None, cache: Path | None,
                batch_size: int = 64) -> dict[str, float]:
    """STS-B dev Spearman / Pearson x100 and SciFact nDCG@10 / MRR@10 / Recall@100 x100 (scored half), cached in
    ``cache`` (keyed by the weights' mtime and the sizes of the evaluation sets)."""
    from ..evaluation import EmbeddingModel, evaluate_retrieval, evaluate_sts

    key = {"weights_mtime": _weights_stamp(model_dir), "n_pairs": len(dev_pairs),
           "n_claims": None if scifact is None else len(scifact[1])}
    if cache is not None and cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("key") == key:
            return old["scores"]
    started = time.time()
    model = EmbeddingModel.from_dir(model_dir, device="cpu")
    sts = evaluate_sts(model, dev_pairs, batch_size=batch_size, show_progress=False)
    scores = {"spearman": float(sts["spearman"]), "pearson": float(sts["pearson"])}
    if scifact is not None:
        corpus, queries, qrels = scifact
        ret = evaluate_retrieval(model, corpus, queries, qrels, k_values=(10, 100), batch_size=batch_size,
                                 show_progress=False)
        scores.update({"ndcg10": ret["ndcg@10"], "mrr10": ret["mrr@10"], "recall100": ret["recall@100"]})
    if cache is not None:
        cache.write_text(json.dumps({"key": key, "scores": scores, "eval_seconds": time.time() - started}, indent=2))
    return scores


def shape_label(shape: Mapping[str, Any]) -> str:
    """``EncoderShape.to_dict()`` -> ``4L/9H/1152I`` (per-layer widths listed when they differ)."""
    heads = sorted(set(shape["heads_per_layer"]))
    inter = sorted(set(shape["intermediate_per_layer"]))
    return (f"{shape['n_layers']}L/{','.join(map(str, heads)) or '0'}H/"
            f"{','.join(map(str, inter)) or '0'}I")


# ====================================================================== the benchmark
def run_benchmark(args: argparse.Namespace) -> int:
    from ..data import load_sts

    model = MODELS[args.model]
    dev_file = args.stsb_dir / "sts-dev.csv"
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dev_pairs = load_sts(str(dev_file), "dev", args.dev_max_examples)
    scifact = scifact_scored(args.scifact_dir) if not args.no_retrieval else None
    if scifact is not None and args.claims_max is not None:
        keep = sorted(scifact[2], key=int)[: args.claims_max]
        scifact = (scifact[0], {q: scifact[1][q] for q in keep}, {q: scifact[2][q] for q in keep})
    smoke = bool(args.dev_max_examples or args.claims_max)
    print(f"base: {model.name_or_path}; STS-B dev {len(dev_pairs)} pairs"
          + ("" if scifact is None else f"; SciFact {len(scifact[1])} scored claims ({SCORED_IDS} ids) over "
             f"{len(scifact[0])} abstracts")
          + f"; {args.steps_prune + args.steps_finetune} steps per method, seeds {args.seeds}"
          + ("  [SMOKE RUN]" if smoke else ""), flush=True)

    from transformers import AutoConfig

    from ..models.loading import resolve_model_path
    from ..shapes import EncoderShape, candidate_shapes, count_params

    base_dir = resolve_model_path(model.name_or_path)
    base_shape = EncoderShape.from_hf_config(AutoConfig.from_pretrained(base_dir))
    base_count = count_params(base_shape)
    base_scores = score_model(base_dir, dev_pairs, scifact, out_dir / f"base_{model.key}_eval.json")
    base = {"name": "base", "model": model.name_or_path, "encoder_params": base_count.encoder_layers,
            "total_params": base_count.total, "shape": shape_label(base_shape.to_dict()), **base_scores}
    print(f"base: STS-B dev {base['spearman']:.2f}" + ("" if scifact is None else f", SciFact nDCG@10 "
                                                      f"{base['ndcg10']:.2f}"), flush=True)

    plan = plan_runs(args.methods, args.targets, args.layer_drop_rules)
    if args.only:
        unknown = sorted(set(args.only) - {p[0] for p in plan})
        if unknown:
            raise BenchmarkError(f"--only {unknown}: not in this plan ({', '.join(p[0] for p in plan)})")
        plan = [p for p in plan if p[0] in args.only]
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    missing: list[str] = []  # --report-only: runs with a stage not finished yet
    shapes = {t: candidate_shapes(base_shape, t / 100, min_layers=max(1, base_shape.n_layers // 2), step=64)[0]
              for t in args.targets}
    for seed in args.seeds:
        for name, method, target, rule in plan:
            print(f"\n== {name} seed {seed} ({method}, target {target}%)", flush=True)
            try:
                r = run_one(args, model, name, method, target, rule, seed, out_dir, base_shape, shapes.get(target))
                if r is None:  # --report-only, and a stage of this run has not finished
                    missing.append(f"{name}_s{seed}")
                    continue
                r.update(score_model(r["export_dir"], dev_pairs, scifact, Path(r["run_dir"]) / "eval.json"))
            except BenchmarkError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                failures.append(f"{name}_s{seed}")
                continue
            runs.append(r)
            print(f"  -> {r['shape']}  encoder {r['encoder_params']:,}  STS-B dev {r['spearman']:.2f}"
                  + ("" if scifact is None else f"  SciFact nDCG@10 {r['ndcg10']:.2f}")
                  + f"  ({r['train_seconds']:.0f}s training)", flush=True)
            write_results(out_dir, runs, base, args, smoke, failures, missing)

    results = write_results(out_dir, runs, base, args, smoke, failures, missing)
    print("\n" + format_table(results["rows"], base))
    print("\n" + "\n".join(verdict_lines(results["targets_check"])))
    if smoke:
        print("\nSMOKE RUN (subsampled dev sets): these numbers are not benchmark results.")
    print(f"\nresults: {out_dir / 'results.json'}")
    if runs:
        from ..plots import plot_pareto

        for metric, png in (("spearman", "pareto_sts.png"), ("ndcg10", "pareto_scifact.png")):
            if scifact is None and metric == "ndcg10":
                continue
            plot_pareto(out_dir / "results.json", out_dir / png, metric=metric)
            print(f"pareto plot: {out_dir / png}")
    if missing:
        print(f"\nnot finished, left out of the table: {', '.join(missing)}")
    if failures:
        print(f"\nfailed runs: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def run_one(args, model: BaseModel, name: str, method: str, target: int, rule: str | None, seed: int, out_dir: Path,
            base_shape, shape) -> dict[str, Any] | None:
    """Train (or reuse with --skip-existing) every stage of one run at one seed; with --report-only, None when a
    stage has not finished (nothing is trained)."""
    total = args.steps_prune + args.steps_finetune
    tag = f"{name}_s{seed}"
    common = dict(teacher=model.name_or_path, pooling=model.pooling, batch_size=args.batch_size)
    stages: list[tuple[str, Path, dict]] = []
    final_dir = out_dir / tag
    kept_layers: list[int] | None = None
    if method == "reference":
        stages.append((tag, final_dir, stage_config("finetune", tag, final_dir, name_or_path=model.name_or_path,
                                                    steps=total, seed=seed, overrides=args.finetune_override,
                                                    **common)))
    elif method in ("l0", "l0_global"):
        target_model = ({"share": target / 100} if method == "l0_global" else
                        {"n_layers": shape.n_layers, "n_heads": shape.n_heads,
                         "intermediate_size": shape.intermediate_size})
        # The global search also gets the sublayer gates: depth, widths and whole attention / FFN blocks are free.
        modules = GLOBAL_MODULES if method == "l0_global" else None
        prune_dir = out_dir / f"{tag}_prune"
        stages.append((f"{tag}_prune", prune_dir, stage_config(
            "prune", f"{tag}_prune", prune_dir, name_or_path=model.name_or_path, steps=args.steps_prune, seed=seed,
            target_model=target_model, pruning_modules=modules, warmup_frac=args.lagrangian_warmup,
            overrides=args.prune_override, **common)))
        # Another seed for the finetune stage: a fresh shuffle of the data, not the prune stage's.
        stages.append((tag, final_dir, stage_config(
            "finetune", tag, final_dir, name_or_path=str(prune_dir / "model"), steps=args.steps_finetune,
            seed=seed + 1000, overrides=args.finetune_override, **common)))
    else:
        from ..baselines import choose_layers

        kept_layers = choose_layers(base_shape.n_layers, layer_drop_count(base_shape.n_layers, target), rule or "ends")
        init_dir = out_dir / f"{name}_init"  # the same for every seed
        stages.append((f"{name}_init", init_dir, {"keep_layers": kept_layers}))
        stages.append((tag, final_dir, stage_config("finetune", tag, final_dir, name_or_path=str(init_dir / "model"),
                                                    steps=total, seed=seed, overrides=args.finetune_override,
                                                    **common)))

    train_seconds = 0.0
    for stage, run_dir, cfg in stages:
        is_builder = "keep_layers" in cfg
        done = (run_dir / "model" / PRUNING_INFO_FILE).is_file() if is_builder else export_done(run_dir)
        if args.report_only and not done:
            print(f"  not finished, left out (--report-only): {run_dir} has no finished export", flush=True)
            return None
        partial = run_dir.exists() and not done and any(run_dir.iterdir())
        if partial or (done and not args.skip_existing and not is_builder):
            if not args.overwrite:
                raise BenchmarkError(f"{run_dir} already exists; pass --skip-existing to reuse finished stages "
                                     f"or --overwrite to delete and retrain")
            shutil.rmtree(run_dir)
            done = False
        if is_builder:
            if not done:
                from ..baselines import build_layer_drop

                try:
                    build_layer_drop(model.name_or_path, run_dir / "model", keep_layers=cfg["keep_layers"],
                                     pooling=model.pooling)
                except (UserError, ValueError) as e:
                    raise BenchmarkError(f"building the layer-drop model {run_dir / 'model'} failed: {e}") from e
            print(f"  {stage}: layers {cfg['keep_layers']} of {model.name_or_path} -> {run_dir / 'model'}", flush=True)
            continue
        config = write_config(cfg, out_dir / "configs" / f"{stage}.yaml")
        if done:
            print(f"  {stage}: reusing {run_dir / 'model'} (--skip-existing)", flush=True)
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            summary = train_stage(config, run_dir, args.threads, args.keep_checkpoints)
        train_seconds += float(summary["train_seconds"])

    model_dir = final_dir / "model"
    info = _export_info(model_dir)
    params = info.exported_params
    shape_note = shape_label(info.achieved_shape)
    if method in ("l0", "l0_global"):
        kept_layers = _export_info(out_dir / f"{tag}_prune" / "model").kept_layers
    if kept_layers is not None and len(kept_layers) < base_shape.n_layers:
        shape_note += f" (layers {','.join(map(str, kept_layers))})"
    return {"name": name, "method": method, "target": target, "layer_rule": rule, "seed": seed,
            "encoder_params": int(params["encoder_layers"]), "total_params": int(params["total"]),
            "shape": shape_note, "kept_layers": kept_layers, "train_seconds": train_seconds, "steps": total,
            "export_dir": str(model_dir), "run_dir": str(final_dir),
            "configs": [str(out_dir / "configs" / f"{s}.yaml") for s, _, c in stages if "keep_layers" not in c]}


def write_results(out_dir: Path, runs, base, args, smoke: bool, failures, missing=()) -> dict[str, Any]:
    model = MODELS[args.model]
    aggregated = aggregate(runs)
    rows = annotate(aggregated, base)
    results = {
        "title": f"{model.name_or_path.split(':')[-1]}: L0 pruning vs layer-drop "
                 f"(seed{'s' if len(args.seeds) > 1 else ''} {', '.join(map(str, args.seeds))})",
        "spearman_label": "STS-B dev Spearman (dense cosine, x100)",
        "ndcg10_label": f"SciFact nDCG@10 x100 ({SCORED_IDS}-id train claims, never trained on)",
        "base": base,
        # scripts/plot.py pareto reads "runs": the base model, then one point per run (seed means)
        "runs": [{"name": "base", "method": "base", **{k: base.get(k) for k in ("encoder_params", "total_params",
                                                                              *METRICS)}}] + rows,
        "per_seed": runs,
        "rows": rows,
        "smoke": smoke,
        "settings": {"model": model.name_or_path, "steps_prune": args.steps_prune,
                     "steps_finetune": args.steps_finetune, "batch_size": args.batch_size, "seeds": list(args.seeds),
                     "threads": args.threads, "lagrangian_warmup_fraction": args.lagrangian_warmup,
                     "scored_claims": SCORED_IDS, "prune_overrides": list(args.prune_override),
                     "finetune_overrides": list(args.finetune_override)},
        "targets_check": check_targets(aggregated, base, args.check_target, model.min_delta),
        "failed": list(failures),
        "not_finished": list(missing),
    }
    (out_dir / "results.json").write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    return results


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> null (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,  # prog: benchmark_quality.py or bge-benchmark-quality
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps-prune", type=int, default=300, help="L0 prune-stage steps (default 300)")
    ap.add_argument("--steps-finetune", type=int, default=450, help="finetune steps after pruning (default 450); "
                    "reference and layer-drop train for prune + finetune steps")
    ap.add_argument("--batch-size", type=int, default=None, help="override the templates' batch size")
    ap.add_argument("--targets", type=int, nargs="+", default=[50],
                    help="targets, %% of encoder-layer parameters kept (default 50)")
    ap.add_argument("--check-target", type=int, default=CHECK_TARGET)
    ap.add_argument("--layer-drop-rules", nargs="+", default=list(LAYER_RULES), choices=LAYER_RULES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[17])
    ap.add_argument("--out-dir", type=Path, default=None, help="default experiments/quality_v2_<model>")
    ap.add_argument("--stsb-dir", type=Path, default=SHARED / "stsbenchmark")
    ap.add_argument("--scifact-dir", type=Path, default=SHARED / "scifact")
    ap.add_argument("--no-retrieval", action="store_true", help="score STS-B dev only (no SciFact)")
    ap.add_argument("--only", nargs="+", default=None, metavar="RUN", help="run only these runs of the plan")
    ap.add_argument("--skip-existing", action="store_true", help="reuse stages whose export and summary exist")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: rebuild results.json, the table and the plots from the finished runs in "
                         "--out-dir (as after runs made by several processes at once) and list the unfinished ones")
    ap.add_argument("--overwrite", action="store_true", help="delete and retrain stages whose directory exists")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep the Composer .pt checkpoints")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--lagrangian-warmup", type=float, default=0.2,
                    help="fraction of the prune steps over which the target sparsity ramps up (default 0.2: "
                         "80%% of the steps at the full target, as LLM-Shearing)")
    ap.add_argument("--prune-override", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--finetune-override", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--dev-max-examples", type=int, default=None, help="smoke tests only: first N dev pairs")
    ap.add_argument("--claims-max", type=int, default=None, help="smoke tests only: first N scored claims")
    args = ap.parse_args(argv)
    for t in list(args.targets) + [args.check_target]:
        if not 0 < t < 100:
            ap.error(f"targets are percentages of encoder-layer parameters in (0, 100), got {t}")
    if args.steps_prune < 1 or args.steps_finetune < 1 or (args.batch_size is not None and args.batch_size < 2):
        ap.error("--steps-prune and --steps-finetune must be >= 1 and --batch-size >= 2")
    if not 0 < args.lagrangian_warmup <= 1:
        ap.error(f"--lagrangian-warmup must be in (0, 1], got {args.lagrangian_warmup}")
    if args.report_only and args.overwrite:
        ap.error("--report-only trains nothing, so it cannot --overwrite")
    args.skip_existing = args.skip_existing or args.report_only
    if args.out_dir is None:
        args.out_dir = ROOT / "experiments" / f"quality_v2_{args.model}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    needed = [args.stsb_dir / "sts-dev.csv", args.stsb_dir / "sts-train.csv"]
    if not args.no_retrieval:
        needed += [args.scifact_dir / "corpus.jsonl", args.scifact_dir / "queries.jsonl",
                   args.scifact_dir / "qrels" / "train.tsv"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        print(f"skipping the quality benchmark: {', '.join(missing)} not found; put the data in ../shared/data "
              f"or pass --stsb-dir / --scifact-dir", file=sys.stderr)
        return 0
    try:
        return run_benchmark(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
