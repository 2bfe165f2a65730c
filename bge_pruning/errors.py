"""The project's error family: every mistake a user can fix is a ``UserError``.

Entry points catch ``UserError`` once, print one line (``error: <place>: <what>``) and exit 2. Subclasses
say which stage refused the input; older per-module exceptions are being moved under this base.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input that the user can fix; ``str(err)`` names the place (file:line, config key, path)."""


class VocabError(UserError, ValueError):
    """Vocabulary pruning refused its input (corpus, limits, tokenizer, output directory)."""
