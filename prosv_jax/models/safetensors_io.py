"""Zero-copy reading of safetensors files (single or sharded) as numpy memory maps.

A memory map lets the loader cut each device's shard out of a tensor without reading the rest, so a model larger
than one device is never materialised whole. Writing goes through the `safetensors` library.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked (missing file or tensor, wrong shape, ...)."""


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > os.path.getsize(path):
            raise CheckpointError(f"{path} is not a safetensors file (header length {length} exceeds file size)")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def _map_file(path: str) -> dict[str, np.ndarray]:
    header, offset = _read_header(path)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end - start != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise CheckpointError(f"{path}: tensor {name!r} has a byte range that does not match its shape")
        tensors[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset + start, shape=shape)
    return tensors


def open_checkpoint(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Name -> read-only memory-mapped array for every tensor of a HF model directory."""
    model_dir = os.fspath(model_dir)
    single, index = os.path.join(model_dir, SINGLE_FILE), os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(model_dir, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointError(f"{shard_path} is named in {INDEX_FILE} but missing")
            mapped = _map_file(shard_path)
            tensors.update({k: v for k, v in mapped.items() if weight_map.get(k) == shard})
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(f"{INDEX_FILE} names tensors its shards do not hold: {missing[:5]}")
        return tensors
    if os.path.isfile(single):
        return _map_file(single)
    raise CheckpointError(
        f"no weights in {model_dir}: expected {SINGLE_FILE} or a sharded {INDEX_FILE} (PyTorch .bin files are not "
        "read; convert them with transformers' save_pretrained(safe_serialization=True))")


def save_checkpoint(tensors: dict[str, np.ndarray], model_dir: str | os.PathLike) -> None:
    """Writes tensors as one `model.safetensors` (transformers' format metadata included)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(model_dir, SINGLE_FILE),
              metadata={"format": "pt"})
