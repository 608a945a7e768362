"""Atomic file writes: through a temporary file in the target's folder, then a rename, so a kill never leaves half a
file (the previous version, if any, stays whole). Every results, checkpoint-side and cache file goes through here."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable


def replace_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls write(tmp_path) on a temporary file beside `path` (its folder is created), then renames it to `path`."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8, flushed to disk) atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    replace_atomically(path, write)


def write_json(path: str | os.PathLike, data, *, indent: int | None = 2, default=None) -> None:
    """Writes `data` as JSON (sorted keys, UTF-8) atomically."""
    write_atomic(path, json.dumps(data, indent=indent, sort_keys=True, ensure_ascii=False, default=default) + "\n")
