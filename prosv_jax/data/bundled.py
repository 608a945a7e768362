"""The data bundled with the package, usable wherever a path is asked for, so nothing needs a `../shared` folder.

- `BUNDLED_SPLIT` ("bundled:concept10") as a split folder (`data.split_dir`, `--split`): AxBench's concept10
  `prod_2b_l10_v1` training split (10 concepts, 72 positives each, 216 shared negatives) and its held-out
  latent_eval texts, written out once in AxBench's layout (`generate/metadata.jsonl`, `generate/train_data.parquet`,
  `inference/latent_eval_data.parquet`) from `assets/axbench_concept10_2b_l10_{train,latent_eval}.json.gz` (see
  `assets/PROVENANCE.md`). The rows are AxBench's, in their
  order; the concept descriptions are the positives' `output_concept`, which equal the split's metadata.
- `bundled_instructions_path()`: the 805 AlpacaEval instructions in file order (`assets/alpaca_eval_instructions.json`),
  the pool the evaluation draws from (`--instructions`, default).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import shutil
import tempfile

BUNDLED_SPLIT = "bundled:concept10"
_SPLIT_ASSET = "axbench_concept10_2b_l10_train.json.gz"
_LATENT_ASSET = "axbench_concept10_2b_l10_latent_eval.json.gz"
_INSTRUCTIONS_ASSET = "alpaca_eval_instructions.json"
_LAYOUT_VERSION = 2  # bump when the written layout changes (the cache folder's name changes with it); 2: inference/


def _asset(name: str):
    return importlib.resources.files("prosv_jax") / "assets" / name


def bundled_instructions_path() -> str:
    """The bundled AlpacaEval instructions file (a JSON list of the 805 instruction strings, in file order)."""
    return str(_asset(_INSTRUCTIONS_ASSET))


def write_concept10_split(dest: str | os.PathLike) -> str:
    """Writes the bundled concept10 split into `dest/generate/` in AxBench's layout; returns `dest`."""
    import datasets

    from prosv_jax.files import write_atomic

    rows, latent = _asset_rows(_SPLIT_ASSET), _asset_rows(_LATENT_ASSET)
    generate = os.path.join(os.fspath(dest), "generate")
    os.makedirs(generate, exist_ok=True)
    concepts = {}
    for row in rows:
        if row["concept_id"] >= 0:
            concepts.setdefault(int(row["concept_id"]), row["output_concept"])
    write_atomic(os.path.join(generate, "metadata.jsonl"),
                 "".join(json.dumps({"concept_id": c, "concept": concepts[c]}) + "\n" for c in sorted(concepts)))
    table = {"input": [r["input"] for r in rows], "output": [r["output"] for r in rows],
             "output_concept": [r["output_concept"] for r in rows],
             "category": ["negative" if r["concept_id"] < 0 else "positive" for r in rows],
             "concept_id": [int(r["concept_id"]) for r in rows]}
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(table).to_parquet(os.path.join(generate, "train_data.parquet"))
    inference = os.path.join(os.fspath(dest), "inference")
    os.makedirs(inference, exist_ok=True)
    columns = ("input", "output", "output_concept", "category", "concept_id")
    datasets.Dataset.from_dict({c: [r[c] for r in latent] for c in columns}).to_parquet(
        os.path.join(inference, "latent_eval_data.parquet"))
    return os.fspath(dest)


def _asset_rows(name: str) -> list[dict]:
    with gzip.open(str(_asset(name)), "rt", encoding="utf-8") as f:
        return json.load(f)


def concept10_split_dir() -> str:
    """The bundled concept10 split as a folder, written once into the prosv-jax cache (named by the asset's hash)."""
    from prosv_jax.models.sources import cache_root

    digest = hashlib.sha256(_asset(_SPLIT_ASSET).read_bytes() + _asset(_LATENT_ASSET).read_bytes()).hexdigest()[:12]
    folder = os.path.join(cache_root(), "splits", f"concept10-v{_LAYOUT_VERSION}-{digest}")
    if os.path.isfile(os.path.join(folder, "generate", "train_data.parquet")):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".concept10-", dir=os.path.dirname(folder))
    try:
        write_concept10_split(staging)
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished first: keep its folder
            if not os.path.isfile(os.path.join(folder, "generate", "train_data.parquet")):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def resolve_split(split_dir: str | os.PathLike) -> str:
    """A split folder path, with `BUNDLED_SPLIT` turned into the bundled split's folder."""
    split_dir = os.fspath(split_dir)
    return concept10_split_dir() if split_dir == BUNDLED_SPLIT else split_dir
