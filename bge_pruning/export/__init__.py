"""Export of pruned encoders as verified HuggingFace / sentence-transformers / FlagEmbedding directories."""
from .hf_export import (
                        DEFAULT_PROBE_TEXTS,
                        MODELING_FILE,
                        PRUNING_INFO_FILE,
                        export_composer_model,
                        export_pruned_model,
                        modeling_source,
)
from .verify import ExportError

__all__ = ["DEFAULT_PROBE_TEXTS", "MODELING_FILE", "PRUNING_INFO_FILE", "ExportError", "export_composer_model",
           "export_pruned_model", "modeling_source"]
