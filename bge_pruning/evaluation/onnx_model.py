"""An ONNX encoder graph (``onnx/model.onnx`` of an export) behind the ``AutoModel`` call convention.

``EmbeddingModel.from_dir(path, onnx_file=...)`` puts it where the torch encoder would be, so the same
tokenization, pooling, normalisation and BGE-M3 heads (which stay torch modules on the graph's hidden states) score
the ONNX and int8 models, and ``scripts/evaluate_model.py --onnx`` measures their retention against the torch
export. sentence-transformers' ``backend="onnx"`` would do the dense part, but it loads through optimum, which
requires transformers <4.58 (see :mod:`bge_pruning.export.onnx_export`).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from ..export.onnx_export import OUTPUT_NAME, onnx_session, run_session


class OnnxEncoder(nn.Module):
    """``forward(input_ids, attention_mask, token_type_ids=None)`` -> ``BaseModelOutput(last_hidden_state)``
    computed by onnxruntime's CPU provider. It has no parameters; ``config`` carries ``hidden_size``.

    Args:
        path: the ``.onnx`` file.
        hidden_size: the encoder's width (``config.json``), checked against the graph's output.
        threads: onnxruntime intra-op threads (None: onnxruntime's default, one per core).
    """

    def __init__(self, path: str | Path, hidden_size: int, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = {o.name: o for o in self.session.get_outputs()}
        if OUTPUT_NAME not in outputs:
            raise ValueError(f"{self.path}: the graph has no {OUTPUT_NAME!r} output (has {sorted(outputs)})")
        width = outputs[OUTPUT_NAME].shape[-1]
        if isinstance(width, int) and width != int(hidden_size):
            raise ValueError(f"{self.path}: the graph's hidden size is {width}, config.json says {hidden_size}")
        self.config = SimpleNamespace(hidden_size=int(hidden_size))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_: object) -> BaseModelOutput:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return BaseModelOutput(last_hidden_state=run_session(self.session, self.input_names, batch))
