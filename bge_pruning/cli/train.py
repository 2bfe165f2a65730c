"""Prune (or finetune) a BERT-family sentence encoder toward a target shape.

    python train.py configs/target_60pct.yaml [--dataset sts|msmarco|mteb/<task>] [--print-config] [key=value ...]

Overrides use OmegaConf dotted keys, e.g. ``train.max_duration=2000ba train.lr=5e-5``. ``--print-config``
prints the resolved config, the base -> target shape, parameter counts and checkpoint sizes, and stops
(no weights are loaded).

Exit status: 0 done; 2 bad input or a stopped run (config, data, model, checkpoint folder, non-finite loss,
out of GPU memory), with one ``error:`` line naming the place; 3 the export failed. Multi-GPU:
``composer -n 8 train.py CONFIG`` (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument("--dataset", help="shortcut for data.train: sts | msmarco | mteb/<task>")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, shapes, parameter counts and sizes; load no weights")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after --dataset

    from bge_pruning.config import load_config
    from bge_pruning.data import dataset_shortcut
    from bge_pruning.errors import ExportError, TrainingOutOfMemoryError, UserError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = list(args.overrides)
        if args.dataset:
            overrides.append("data.train=" + json.dumps(dataset_shortcut(args.dataset)))
        cfg = load_config(args.config, overrides)
        if args.print_config:
            from bge_pruning.config_report import print_config

            print(print_config(cfg), end="")
            return 0
        import torch

        from bge_pruning.training.run import out_of_memory_message, run

        try:
            summary = run(cfg)
        except torch.cuda.OutOfMemoryError as e:  # outside the training loop (model to the GPU, say)
            raise TrainingOutOfMemoryError(out_of_memory_message(cfg, None, e)) from None
    except ExportError as e:  # the run finished; only its export failed
        print(f"error: export failed: {e}", file=sys.stderr)
        return 3
    except UserError as e:  # config, data, model, checkpoint folder, non-finite loss, out of memory
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    """A few lines a person reads at the end of a run; the full summary is in summary.json."""
    if "export_dir" not in summary:  # ranks other than 0 export nothing
        return
    resumed = f" (resumed from step {summary['resumed_from_step']})" if summary.get("resumed_from_step") else ""
    print(f"\nrun '{summary['run_name']}': {summary['steps']} steps{resumed} in {summary['train_seconds']:.0f}s")
    if "final_shape" in summary:
        s = summary["final_shape"]
        print(f"final shape: {s['n_layers']} layers, heads per layer {s['heads_per_layer']}, "
              f"intermediate per layer {s['intermediate_per_layer']}")
    print(f"exported model: {summary['export_dir']}")
    if "before_after_table" in summary:
        print("\n" + summary["before_after_table"])
    print(f"\nsummary: {summary['summary_file']}")

