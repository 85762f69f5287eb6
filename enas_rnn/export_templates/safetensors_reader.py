"""Template: a .safetensors reader that needs only torch (appended to every exported module)."""

import json
from pathlib import Path

import torch
from torch import Tensor

# --- exported ---

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file, read with torch alone.

    Layout: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
    then the raw little-endian tensor bytes.
    """
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for key, info in header.items():
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        flat = torch.frombuffer(bytearray(data[base + start:base + end]), dtype=dtype) if end > start \
            else torch.empty(0, dtype=dtype)
        tensors[key] = flat.reshape(info["shape"])
    return tensors, meta
