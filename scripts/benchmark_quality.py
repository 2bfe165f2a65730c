#!/usr/bin/env python
"""Quality-retention benchmark: L0 pruning vs an unpruned reference vs a layer-drop baseline on STS-B dev.

    python scripts/benchmark_quality.py [--steps-prune N] [--steps-finetune M] [--batch-size B]
        [--targets 50 60 75] [--out-dir experiments/quality] [--skip-existing]

Runs, on the offline all-MiniLM-L6-v2 and the STS Benchmark train split (every run with the same losses:
CoSENT + distillation from the frozen unpruned base, and the same number of training steps N + M):

* ``reference``: the unpruned base, ``stage: finetune``, N + M steps;
* ``l0_<t>``: ``stage: prune`` to t% of the encoder-layer parameters (the balanced shape that
  ``scripts/target_shapes.py --step 64 --min-layers 3`` ranks first), N steps, then ``stage: finetune`` on its
  export, M steps;
* ``layer_drop_<t>_<rule>``: the base with only round(L * t / 100) of its layers, built by
  ``bge_pruning.baselines``, then ``stage: finetune``, N + M steps (for ``--layer-drop-targets``, 50 by default),
  once per ``--layer-drop-rules``: ``ends`` (evenly spaced, first and last included: DistilBERT's rule, MiniLM
  6 -> 3 keeps 0, 3, 5), ``bottom`` (every other layer from the first: 0, 2, 4), ``top`` (every other layer
  ending at the last: 1, 3, 5). Which layers are kept moves the result by several points, so L0 is compared
  with the BEST layer-drop variant of its target.

Each stage's config is written to ``OUT_DIR/configs/<run>.yaml`` from the templates in ``configs/quality/`` and
trained by ``python train.py <config>`` in a subprocess, exactly what a user would run. Each final export is
scored on the full STS-B dev split (dense cosine Spearman x100, ``bge_pruning.evaluation``). The test split is
never read: numbers are dev numbers, and anything tuned was tuned on dev.

Writes ``OUT_DIR/results.json`` (the format ``scripts/plot.py pareto`` reads), prints the table (params, dev
Spearman, retention vs the reference, delta vs the layer-drop run of the same target), says whether the
targets are met (L0 at 50% keeps >= 98% of the reference and beats layer-drop by >= 3 points) and, when
``scripts/plot.py`` exists, draws ``OUT_DIR/pareto.png``. When the STS-B directory is absent it says so and
exits 0 without doing anything.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASE = "embedded:all-MiniLM-L6-v2"
DEFAULT_STSB = ROOT.parent / "shared" / "data" / "stsbenchmark"
TEMPLATES = ROOT / "configs" / "quality"
METHODS = ("reference", "l0", "layer_drop")
MIN_RETENTION = 98.0  # % of the reference's dev Spearman the L0 run must keep
MIN_DELTA = 3.0  # Spearman points the L0 run must beat layer-drop by
CHECK_TARGET = 50
LAYER_RULES = ("ends", "bottom", "top")  # bge_pruning.baselines.LAYER_RULES (not imported here: no torch at parse time)


class BenchmarkError(RuntimeError):
    """A stage failed or the inputs are unusable; the message says which and where its log is."""


# ====================================================================== numbers and table (pure functions)
def retention(value: float | None, reference: float | None) -> float | None:
    """``100 * value / reference``; None when either is missing / not finite or the reference is 0."""
    if value is None or reference is None or not (math.isfinite(value) and math.isfinite(reference)) \
            or reference == 0:
        return None
    return 100.0 * value / reference


def annotate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``runs`` with ``retention`` (% of the reference's Spearman), ``delta_vs_layer_drop`` (Spearman
    points above the BEST layer-drop run of the same target; None where there is none) and ``best_layer_drop``
    (that run's name)."""
    ref = next((r.get("spearman") for r in runs if r.get("method") == "reference"), None)
    best: dict[Any, Mapping[str, Any]] = {}
    for r in runs:
        if r.get("method") == "layer_drop" and r.get("spearman") is not None:
            t = r.get("target")
            if t not in best or r["spearman"] > best[t]["spearman"]:
                best[t] = r
    out = []
    for r in runs:
        row = dict(r)
        s = r.get("spearman")
        row["retention"] = retention(s, ref)
        ld = best.get(r.get("target")) if r.get("method") != "layer_drop" else None
        row["delta_vs_layer_drop"] = s - ld["spearman"] if s is not None and ld is not None else None
        row["best_layer_drop"] = ld.get("name") if ld is not None else None
        out.append(row)
    return out


def check_targets(runs: Sequence[Mapping[str, Any]], target: int = CHECK_TARGET, min_retention: float = MIN_RETENTION,
                  min_delta: float = MIN_DELTA) -> dict[str, Any]:
    """Whether ``l0_<target>`` keeps >= ``min_retention``% of the reference and beats layer-drop by >= ``min_delta``."""
    rows = {(r.get("method"), r.get("target")): r for r in annotate(runs) if r.get("method") != "layer_drop"}
    l0 = rows.get(("l0", target))
    ret = l0.get("retention") if l0 else None
    delta = l0.get("delta_vs_layer_drop") if l0 else None
    each = {r["name"]: (l0["spearman"] - r["spearman"] if l0 and l0.get("spearman") is not None else None)
            for r in runs if r.get("method") == "layer_drop" and r.get("target") == target
            and r.get("spearman") is not None}
    return {"target": target, "min_retention": min_retention, "min_delta": min_delta,
            "retention": ret, "delta_vs_layer_drop": delta,
            "best_layer_drop": l0.get("best_layer_drop") if l0 else None, "delta_vs_each_layer_drop": each,
            "retention_met": None if ret is None else ret >= min_retention,
            "delta_met": None if delta is None else delta >= min_delta,
            "met": None if ret is None or delta is None else (ret >= min_retention and delta >= min_delta)}


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def format_table(runs: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None = None) -> str:
    """run | method | target | encoder params | total params | dev Spearman | retention % | delta vs layer-drop."""
    header = ["run", "method", "target %", "encoder params", "total params", "dev Spearman", "dev Pearson",
              "retention %", "vs best layer-drop", "train s"]
    rows = []
    if base:
        rows.append([str(base.get("name", "base")), "base (no training)", _fmt(100, "d"),
                     _fmt(base.get("encoder_params"), ","), _fmt(base.get("total_params"), ","),
                     _fmt(base.get("spearman"), ".2f"), _fmt(base.get("pearson"), ".2f"), "-", "-", "-"])
    for r in annotate(runs):
        delta = r["delta_vs_layer_drop"]
        rows.append([str(r.get("name")), str(r.get("method")), _fmt(r.get("target"), "d"),
                     _fmt(r.get("encoder_params"), ","), _fmt(r.get("total_params"), ","),
                     _fmt(r.get("spearman"), ".2f"), _fmt(r.get("pearson"), ".2f"), _fmt(r["retention"], ".2f"),
                     "-" if delta is None else f"{delta:+.2f}", _fmt(r.get("train_seconds"), ".0f")])
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    left = {0, 1}

    def line(cells: Sequence[str]) -> str:
        return " | ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows])


def verdict_lines(check: Mapping[str, Any]) -> list[str]:
    t = check["target"]
    ret, delta = check["retention"], check["delta_vs_layer_drop"]
    lines = [
        f"L0 {t}% retention vs reference: {_fmt(ret, '.2f')}% (target >= {check['min_retention']:.0f}%): "
        + {True: "MET", False: "NOT MET", None: "not measured"}[check["retention_met"]],
        f"L0 {t}% minus the best layer-drop {t}% ({check.get('best_layer_drop') or '-'}): "
        f"{'-' if delta is None else f'{delta:+.2f}'} points (target >= +{check['min_delta']:.0f}): "
        + {True: "MET", False: "NOT MET", None: "not measured"}[check["delta_met"]],
    ]
    each = check.get("delta_vs_each_layer_drop") or {}
    if len(each) > 1:
        lines.append("  vs each layer-drop variant: " + ", ".join(
            f"{name} {'-' if d is None else f'{d:+.2f}'}" for name, d in each.items()))
    return lines


# ====================================================================== shapes and layer choice
def balanced_shape(target_pct: int, base: str = BASE) -> tuple[int, int, int]:
    """The first shape ``scripts/target_shapes.py --share t/100 --step 64 --min-layers 3`` prints."""
    cmd = [sys.executable, str(ROOT / "scripts" / "target_shapes.py"), "--share", str(target_pct / 100),
           "--base", base, "--step", "64", "--min-layers", "3", "--top", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env(1))
    m = re.search(r"^(\d+)L/(\d+)H/(\d+)I share=", proc.stdout, re.M)
    if proc.returncode != 0 or not m:
        raise BenchmarkError(f"could not get the {target_pct}% shape from {' '.join(cmd)}: "
                             f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def parse_shape_option(item: str) -> tuple[int, tuple[int, int, int]]:
    """``50=6L/6H/768I`` -> (50, (6, 6, 768)): the L0 target shape to use for one target percentage."""
    m = re.fullmatch(r"\s*(\d+)\s*=\s*(\d+)L/(\d+)H/(\d+)I\s*", item)
    if not m:
        raise BenchmarkError(f"--l0-shape {item!r}: expected TARGET=<layers>L/<heads>H/<intermediate>I, "
                             f"e.g. 50=6L/6H/768I")
    return int(m.group(1)), (int(m.group(2)), int(m.group(3)), int(m.group(4)))


def shape_label(shape: Mapping[str, Any]) -> str:
    """``EncoderShape.to_dict()`` -> ``4L/9H/1152I`` (per-layer widths joined by commas when they differ)."""
    heads = sorted(set(shape["heads_per_layer"]))
    inter = sorted(set(shape["intermediate_per_layer"]))
    return (f"{shape['n_layers']}L/{','.join(map(str, heads)) or '0'}H/"
            f"{','.join(map(str, inter)) or '0'}I")


def layer_drop_count(n_layers: int, target_pct: int) -> int:
    """Layers a layer-drop model keeps for ``target_pct``% of the encoder layers (at least 1)."""
    return max(1, round(n_layers * target_pct / 100))


# ====================================================================== configs
def set_dotted(cfg: dict, key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise BenchmarkError(f"override {key}: {p} is not a mapping in the template")
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
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


def stage_config(template: str, run: str, run_dir: Path, *, name_or_path: str, steps: int, batch_size: int,
                 train_source: Path, seed: int, train_max_examples: int | None = None,
                 target_shape: tuple[int, int, int] | None = None, warmup_frac: float = 0.5,
                 overrides: Sequence[str] = ()) -> dict:
    """A filled copy of ``configs/quality/<template>.yaml``."""
    import yaml

    path = TEMPLATES / f"{template}.yaml"
    if not path.is_file():
        raise BenchmarkError(f"config template not found: {path}")
    cfg = yaml.safe_load(path.read_text())
    cfg["run_name"] = run
    cfg["seed"] = int(seed)
    cfg["model"]["name_or_path"] = name_or_path
    source = {"name": "stsb", "type": "sts", "source": str(train_source)}
    if train_max_examples:
        source["max_examples"] = int(train_max_examples)
    cfg["data"]["train"] = [source]
    t = cfg["train"]
    t["batch_size"] = int(batch_size)
    t["max_duration"] = f"{steps}ba"
    t["save_interval"] = f"{steps}ba"
    t["eval_interval"] = f"{steps}ba"
    t["progress_bar"] = False
    t["save_folder"] = str(run_dir / "checkpoints")
    t["log_file"] = str(run_dir / "train_log.jsonl")
    cfg.setdefault("export", {})["output_dir"] = str(run_dir / "model")
    if template == "prune":
        if target_shape is None:
            raise BenchmarkError("a prune stage needs a target shape")
        n_layers, n_heads, inter = target_shape
        cfg["model"]["l0_module"]["target_model"] = {"n_layers": n_layers, "n_heads": n_heads,
                                                     "intermediate_size": inter}
        cfg["model"]["l0_module"]["lagrangian_warmup_steps"] = f"{max(1, int(round(steps * warmup_frac)))}ba"
        t["warmup"] = f"{min(20, max(1, steps // 10))}ba"
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(cfg, key, value)
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    import yaml

    from bge_pruning.config import load_config

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
    return (run_dir / "model" / "pruning_info.json").is_file() and (run_dir / "summary.json").is_file()


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


def stage_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


# ====================================================================== evaluation
def pruning_info(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "pruning_info.json").read_text())


def evaluate_dev(model_dir: Path | str, pairs: Sequence[Any], dev: Path, cache: Path | None) -> dict[str, float]:
    """Dense cosine Spearman / Pearson (x100) on ``pairs``; cached in ``cache`` next to the export."""
    from bge_pruning.evaluation import EmbeddingModel, evaluate_sts

    stamp = None
    if cache is not None:
        weights = Path(model_dir) / "model.safetensors"
        stamp = weights.stat().st_mtime if weights.is_file() else None
        if cache.is_file():
            old = json.loads(cache.read_text())
            if old.get("dev") == str(dev) and old.get("n_pairs") == len(pairs) and old.get("weights_mtime") == stamp:
                return {"spearman": old["spearman"], "pearson": old["pearson"]}
    started = time.time()
    model = EmbeddingModel.from_dir(model_dir, device="cpu")
    res = evaluate_sts(model, pairs, batch_size=64, show_progress=False)
    out = {"spearman": float(res["spearman"]), "pearson": float(res["pearson"])}
    if cache is not None:
        cache.write_text(json.dumps({**out, "dev": str(dev), "n_pairs": len(pairs), "weights_mtime": stamp,
                                     "eval_seconds": time.time() - started}, indent=2))
    return out


# ====================================================================== the benchmark
def plan_runs(targets: Sequence[int], layer_drop_targets: Sequence[int],
              layer_drop_rules: Sequence[str] = ("ends",)) -> list[tuple[str, str, int, str | None]]:
    """(name, method, target, layer rule) in the order they run: the 50% comparison first, then the others."""
    order = sorted(set(targets), key=lambda t: (t != CHECK_TARGET, t))
    rules = list(dict.fromkeys(layer_drop_rules))
    runs: list[tuple[str, str, int, str | None]] = [("reference", "reference", 100, None)]
    for t in order:
        runs.append((f"l0_{t}", "l0", t, None))
        if t in layer_drop_targets:
            runs += [(f"layer_drop_{t}_{rule}", "layer_drop", t, rule) for rule in rules]
    for t in sorted(set(layer_drop_targets) - set(targets)):
        runs += [(f"layer_drop_{t}_{rule}", "layer_drop", t, rule) for rule in rules]
    return runs


def run_benchmark(args: argparse.Namespace) -> int:
    from bge_pruning.data import load_sts

    train_file, dev_file = args.stsb_dir / "sts-train.csv", args.stsb_dir / "sts-dev.csv"
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dev_pairs = load_sts(str(dev_file), "dev", args.dev_max_examples)
    total_steps = args.steps_prune + args.steps_finetune
    smoke = bool(args.dev_max_examples or args.train_max_examples)
    print(f"STS-B train: {train_file}\nSTS-B dev:   {dev_file} ({len(dev_pairs)} pairs; test split not used)")
    print(f"budget per method: {total_steps} steps of batch {args.batch_size} "
          f"(L0: {args.steps_prune} prune + {args.steps_finetune} finetune){'  [SMOKE RUN]' if smoke else ''}\n",
          flush=True)

    from transformers import AutoConfig

    from bge_pruning.models.loading import resolve_model_path
    from bge_pruning.shapes import EncoderShape, count_params

    base_dir = resolve_model_path(BASE)
    base_shape = EncoderShape.from_hf_config(AutoConfig.from_pretrained(base_dir))
    base_count = count_params(base_shape)
    base_eval = evaluate_dev(base_dir, dev_pairs, dev_file, out_dir / "base_dev_eval.json")
    base = {"name": "base", "model": BASE, "encoder_params": base_count.encoder_layers,
            "total_params": base_count.total, **base_eval}
    print(f"base {BASE}: dev Spearman {base_eval['spearman']:.2f}", flush=True)

    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    plan = plan_runs(args.targets, args.layer_drop_targets, args.layer_drop_rules)
    if args.only:
        unknown = sorted(set(args.only) - {p[0] for p in plan})
        if unknown:
            raise BenchmarkError(f"--only {unknown}: not in this plan ({', '.join(p[0] for p in plan)})")
        plan = [p for p in plan if p[0] in args.only]
    for name, method, target, rule in plan:
        print(f"\n== {name} ({method}, target {target}%)", flush=True)
        try:
            runs.append(run_one(args, name, method, target, out_dir, train_file, dev_pairs, dev_file, base_shape,
                                rule))
        except BenchmarkError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            failures.append(name)
            continue
        r = runs[-1]
        print(f"  -> {r['shape']}  encoder {r['encoder_params']:,}  dev Spearman {r['spearman']:.2f}  "
              f"({r['train_seconds']:.0f}s training)", flush=True)
        write_results(out_dir, runs, base, dev_file, args, smoke, failures)

    results = write_results(out_dir, runs, base, dev_file, args, smoke, failures)
    print("\n" + format_table(runs, base))
    print("\n" + "\n".join(verdict_lines(results["targets_check"])))
    if smoke:
        print("\nSMOKE RUN (subsampled train/dev): these numbers are not benchmark results.")
    print(f"\nresults: {out_dir / 'results.json'}")
    plot = ROOT / "scripts" / "plot.py"
    if plot.is_file() and runs:
        proc = subprocess.run([sys.executable, str(plot), "pareto", str(out_dir / "results.json"), "--out",
                               str(out_dir / "pareto.png")], cwd=ROOT, capture_output=True, text=True,
                              env=_env(args.threads))
        print(f"pareto plot: {out_dir / 'pareto.png'}" if proc.returncode == 0 else
              f"warning: scripts/plot.py pareto failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    if failures:
        print(f"\nfailed runs: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def run_one(args, name: str, method: str, target: int, out_dir: Path, train_file: Path, dev_pairs, dev_file: Path,
            base_shape, rule: str | None = None) -> dict[str, Any]:
    """Train (or reuse with --skip-existing) every stage of one run, evaluate its final export."""
    total_steps = args.steps_prune + args.steps_finetune
    common = dict(batch_size=args.batch_size, train_source=train_file, train_max_examples=args.train_max_examples)
    stages: list[tuple[str, Path, dict | None]] = []  # (stage name, run dir, config or None for the builder)
    final_dir = out_dir / name
    kept_layers: list[int] | None = None
    if method == "reference":
        stages.append((name, final_dir, stage_config("finetune", name, final_dir, name_or_path=BASE,
                                                     steps=total_steps, seed=args.seed,
                                                     overrides=args.finetune_override, **common)))
    elif method == "l0":
        shape = args.l0_shape.get(target) or balanced_shape(target)
        prune_dir = out_dir / f"{name}_prune"
        stages.append((f"{name}_prune", prune_dir, stage_config(
            "prune", f"{name}_prune", prune_dir, name_or_path=BASE, steps=args.steps_prune, seed=args.seed,
            target_shape=shape, warmup_frac=args.lagrangian_warmup, overrides=args.prune_override, **common)))
        # A different seed: the finetune stage reads a fresh shuffle of the train set, not the prune stage's.
        stages.append((name, final_dir, stage_config(
            "finetune", name, final_dir, name_or_path=str(prune_dir / "model"), steps=args.steps_finetune,
            seed=args.seed + 1, overrides=args.finetune_override, **common)))
    else:
        from bge_pruning.baselines import choose_layers

        layers = choose_layers(base_shape.n_layers, layer_drop_count(base_shape.n_layers, target), rule or "ends")
        kept_layers = layers
        init_dir = out_dir / f"{name}_init"
        stages.append((f"{name}_init", init_dir, {"keep_layers": layers}))
        stages.append((name, final_dir, stage_config("finetune", name, final_dir, name_or_path=str(init_dir / "model"),
                                                     steps=total_steps, seed=args.seed,
                                                     overrides=args.finetune_override, **common)))

    train_seconds = wall_seconds = 0.0
    for stage, run_dir, cfg in stages:
        is_builder = cfg is not None and "keep_layers" in cfg
        done = (run_dir / "model" / "pruning_info.json").is_file() if is_builder else export_done(run_dir)
        partial = run_dir.exists() and not done and any(run_dir.iterdir())
        if partial or (done and not args.skip_existing):
            if not args.overwrite:
                raise BenchmarkError(f"{run_dir} already exists; pass --skip-existing to reuse finished stages "
                                     f"or --overwrite to delete and retrain")
            shutil.rmtree(run_dir)
            done = False
        if is_builder:
            if done:
                print(f"  {stage}: reusing {run_dir / 'model'}", flush=True)
                continue
            from bge_pruning.baselines import build_layer_drop
            from bge_pruning.export.verify import ExportError

            started = time.time()
            try:
                build_layer_drop(BASE, run_dir / "model", keep_layers=cfg["keep_layers"], pooling="mean")
            except (ExportError, ValueError) as e:
                raise BenchmarkError(f"building the layer-drop model {run_dir / 'model'} failed: {e}") from e
            wall_seconds += time.time() - started
            print(f"  {stage}: kept layers {cfg['keep_layers']} of {BASE} -> {run_dir / 'model'}", flush=True)
            continue
        config = write_config(cfg, out_dir / "configs" / f"{stage}.yaml")
        if done:
            print(f"  {stage}: reusing {run_dir / 'model'} (--skip-existing)", flush=True)
            summary = stage_summary(run_dir)
        else:
            summary = train_stage(config, run_dir, args.threads, args.keep_checkpoints)
        train_seconds += float(summary["train_seconds"])
        wall_seconds += float(summary.get("wall_seconds", summary["train_seconds"]))

    model_dir = final_dir / "model"
    info = pruning_info(model_dir)
    params = info["params"]["exported"]
    # The shape as exported (not as requested), and which of the base's layers survive: for L0 the prune stage's
    # export says (the finetune stage's counts layers of its pruned input).
    shape_note = shape_label(info["achieved_shape"])
    if method == "l0":
        kept_layers = pruning_info(out_dir / f"{name}_prune" / "model")["kept_layers"]
    if kept_layers is not None and len(kept_layers) < base_shape.n_layers:
        shape_note += f" (layers {kept_layers})"
    scores = evaluate_dev(model_dir, dev_pairs, dev_file, final_dir / "dev_eval.json")
    return {"name": name, "method": method, "target": target, "encoder_params": int(params["encoder_layers"]),
            "total_params": int(params["total"]), "spearman": scores["spearman"], "pearson": scores["pearson"],
            "train_seconds": train_seconds, "wall_seconds": wall_seconds, "shape": shape_note,
            "kept_layers": kept_layers, "layer_rule": rule,
            "steps": total_steps, "export_dir": str(model_dir),
            "configs": [str(out_dir / "configs" / f"{s}.yaml") for s, _, c in stages if not (c and "keep_layers" in c)]}


def write_results(out_dir: Path, runs, base, dev_file: Path, args, smoke: bool, failures) -> dict[str, Any]:
    annotated = annotate(runs)
    results = {
        "title": "all-MiniLM-L6-v2 on STS-B dev: L0 pruning vs layer-drop",
        "spearman_label": "STS-B dev Spearman (dense cosine, x100)",
        "runs": annotated,
        "base": base,
        "dev": str(dev_file),
        "dev_pairs": None if args.dev_max_examples is None else args.dev_max_examples,
        "smoke": smoke,
        "settings": {"steps_prune": args.steps_prune, "steps_finetune": args.steps_finetune,
                     "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
                     "lagrangian_warmup_fraction": args.lagrangian_warmup,
                     "l0_shapes": {str(t): "%dL/%dH/%dI" % shape for t, shape in sorted(args.l0_shape.items())},
                     "prune_overrides": list(args.prune_override), "finetune_overrides": list(args.finetune_override),
                     "train_max_examples": args.train_max_examples},
        "targets_check": check_targets(runs),
        "failed": list(failures),
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-prune", type=int, default=200, help="L0 prune-stage steps (default 200)")
    ap.add_argument("--steps-finetune", type=int, default=100, help="finetune steps after pruning (default 100); "
                    "reference and layer-drop train for prune + finetune steps")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--targets", type=int, nargs="+", default=[50, 60, 75],
                    help="L0 targets, %% of encoder-layer parameters kept")
    ap.add_argument("--layer-drop-targets", type=int, nargs="*", default=[50])
    ap.add_argument("--layer-drop-rules", nargs="+", default=["ends", "bottom", "top"], choices=LAYER_RULES,
                    help="which layers each layer-drop variant keeps (bge_pruning.baselines.choose_layers): ends = "
                         "DistilBERT's (first and last included), bottom = every other from the first, top = every "
                         "other ending at the last (default: all three)")
    ap.add_argument("--l0-shape", nargs="+", default=[], metavar="T=NL/NH/NI",
                    help="L0 target shape for target T, e.g. 50=6L/6H/768I (default: the balanced shape that "
                         "scripts/target_shapes.py ranks first)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "experiments" / "quality")
    ap.add_argument("--stsb-dir", type=Path, default=DEFAULT_STSB, help="directory with sts-train.csv, sts-dev.csv")
    ap.add_argument("--only", nargs="+", default=None, metavar="RUN",
                    help="run only these runs of the plan (e.g. l0_50 reference), for tuning or resuming")
    ap.add_argument("--skip-existing", action="store_true", help="reuse stages whose export and summary exist")
    ap.add_argument("--overwrite", action="store_true", help="delete and retrain stages whose directory exists")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep Composer .pt checkpoints (~270 MB each)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--lagrangian-warmup", type=float, default=0.5,
                    help="fraction of the prune steps over which the target sparsity ramps up (default 0.5)")
    ap.add_argument("--prune-override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for the prune stages, e.g. train.l0_lr=0.5")
    ap.add_argument("--finetune-override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every finetune run, e.g. train.lr=3e-5")
    ap.add_argument("--train-max-examples", type=int, default=None, help="smoke tests only: subsample STS-B train")
    ap.add_argument("--dev-max-examples", type=int, default=None, help="smoke tests only: first N dev pairs")
    args = ap.parse_args(argv)
    for t in list(args.targets) + list(args.layer_drop_targets):
        if not 0 < t < 100:
            ap.error(f"targets are percentages of encoder-layer parameters in (0, 100), got {t}")
    try:
        args.l0_shape = dict(parse_shape_option(item) for item in args.l0_shape)
    except BenchmarkError as e:
        ap.error(str(e))
    if args.steps_prune < 1 or args.steps_finetune < 1 or args.batch_size < 2:
        ap.error("--steps-prune and --steps-finetune must be >= 1 and --batch-size >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    missing = [f for f in ("sts-train.csv", "sts-dev.csv") if not (args.stsb_dir / f).is_file()]
    if missing:
        print(f"skipping the quality benchmark: STS-B not found ({', '.join(missing)} missing in {args.stsb_dir}); "
              f"put the STS Benchmark there or pass --stsb-dir", file=sys.stderr)
        return 0
    try:
        return run_benchmark(args)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
