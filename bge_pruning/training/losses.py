"""Moved to ``bge_pruning.models.losses`` (the losses are model math; models do not import training)."""
from ..models.losses import *  # noqa: F401,F403 - the old import path keeps working
