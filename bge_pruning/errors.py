"""The project's error family: every mistake a user can fix is a ``UserError``.

Entry points (``train.py``, ``scripts/*.py``) catch ``UserError`` once, print one line (``error: <place>:
<what>``) and exit 2. The subclasses say which stage refused the input; each also keeps the built-in base it
had before the family existed (``ValueError``, ``RuntimeError``, ...), so code that catches those still does.

This module imports nothing heavy (no torch): ``bge_pruning.config`` raises ``ConfigError`` while parsing YAML,
before any model loads. The classes are re-exported from the modules that raise them (``ConfigError`` from
``models.l0_module``, ``ExportError`` from ``export``, ...), so older imports keep working.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input that the user can fix; ``str(err)`` names the place (file:line, config key, path)."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the config key (and its ``file:line`` when known)."""


class DataError(UserError, ValueError):
    """Bad or missing training/evaluation data; ``str(err)`` starts with the place (file:line, id[split][i], key)."""


class ModelLoadError(UserError, RuntimeError):
    """A base model or its files could not be loaded; the message says which and what to do."""


class ModelDirError(UserError, ValueError):
    """A model directory that cannot be evaluated; the message starts with the path."""


class RemoteCodeError(UserError, ValueError):
    """A model directory asks to run code the user did not trust."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or checkpoint folder cannot be used (missing, refused, not this run's, not local)."""


class MaskError(UserError, ValueError):
    """Pruning masks that do not fit the model (``models.masks.validate_masks``); the message names the mask key."""


class ExportError(UserError, RuntimeError):
    """An export could not be written or failed a check; the message says which check and why.

    When this is raised the target directory is untouched and no temporary directory is left behind.
    ``train.py`` exits 3 on it (the run itself finished), the other entry points as they document.
    """


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN/inf; the message gives the step and what to lower."""


class TrainingOutOfMemoryError(UserError, RuntimeError):
    """The accelerator ran out of memory; the message says which settings to lower (see run.out_of_memory_message)."""


class PlotError(UserError, ValueError):
    """A plot's input file or output path is unusable; the message names it."""


class BenchmarkError(UserError, ValueError):
    """A benchmark argument, model directory or stage is unusable; the message says which (and where its log is)."""


class SpecError(UserError, ValueError):
    """A bad evaluation task spec (``--tasks`` of ``scripts/evaluate_model.py``); the message names the spec."""


class VocabError(UserError, ValueError):
    """Vocabulary pruning refused its input (corpus, limits, tokenizer, output directory)."""


__all__ = ["UserError", "ConfigError", "DataError", "ModelLoadError", "ModelDirError", "RemoteCodeError",
           "CheckpointError", "MaskError", "ExportError", "NonFiniteLossError", "TrainingOutOfMemoryError", "PlotError",
           "BenchmarkError", "SpecError", "VocabError"]
