"""JSON / JSONL files of the evaluation stages: atomic JSONL writes, line-numbered reads, required fields."""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from prosv_jax.files import write_atomic


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records))


def read_json(path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None


def check_same_settings(out: str, settings_file: str, stored: dict, what: str, free: Sequence[str] = (),
                        defaults: dict | None = None) -> None:
    """Refuses to resume into `out` when its `settings_file` (from an earlier run) differs from `stored` in a field
    outside `free`: cached results made with other settings must never be reused as if they were new. A field the
    earlier file lacks counts as its value in `defaults` (a setting added since, whose default is what ran then)."""
    path = os.path.join(out, settings_file)
    if not os.path.isfile(path):
        return
    old = {**(defaults or {}), **read_json(path)}
    changed = sorted(k for k in set(old) | set(stored) if k not in free and old.get(k) != stored.get(k))
    if changed:
        raise ValueError(f"{out} holds {what} made with other settings ({changed} differ); rerun with the same "
                         "settings to resume, or choose a new --out")


def file_sha256(path: str | os.PathLike | None) -> str | None:
    """The sha256 of a file's bytes (None for no file): a changed file under the same name is another input."""
    import hashlib

    if path is None:
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (), what: str = "record") -> list[dict]:
    """Every non-blank line of a JSONL file as a dict; a clear error names the file, the line and a missing field."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}, line {n}: a {what} must be a JSON object, got {type(rec).__name__}")
            missing = [k for k in required if k not in rec]
            if missing:
                raise ValueError(f"{path}, line {n}: missing field(s) {missing} (a {what} needs {list(required)})")
            out.append(rec)
    return out
