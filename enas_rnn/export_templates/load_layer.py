"""Template: ``load()`` of a layer-only export (appended last)."""

import json
from pathlib import Path
from typing import Optional

from torch import nn

# --- exported ---


def load(path: Optional[str | Path] = None, batch_first: bool = False) -> nn.Module:
    """The exported Layer with its trained weights (``<this module>.safetensors`` by default)."""
    path = Path(path) if path is not None else Path(__file__).with_suffix(".safetensors")
    tensors, meta = read_safetensors(path)  # noqa: F821
    info = json.loads(meta["enas_rnn"])
    if info["genotype_hash"] != GENOTYPE_HASH:  # noqa: F821
        raise ValueError(f"{path} holds weights of cell {info['genotype_hash']}, this module is cell {GENOTYPE_HASH}")  # noqa: F821
    if info["kind"] != "layer":
        raise ValueError(f"{path} holds a whole language model; this module exports only the Layer")
    model = Layer(info["input_size"], info["hidden_size"], info["num_layers"], batch_first)  # noqa: F821
    model.load_state_dict(tensors)
    return model
