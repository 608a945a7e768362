"""The trained steerings of a `prosv-jax train` output folder, and the concepts they belong to.

A train folder holds `config.json` (the resolved config) and `runs/<run>/` (steering.json + params.safetensors); each
steering's `info.run.dataset` is "c<concept id>" (the run name starts with it too, e.g. `c0-s42-flr1-dlr0.04-b2-c1`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Sequence

_RUN_CONCEPT = re.compile(r"^c(\d+)(?:-(.*))?$")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    concept_id: int
    name: str  # e.g. c0-s42-flr1-dlr0.04-b2-c1
    variant: str  # the name without its concept prefix, e.g. s42-flr1-dlr0.04-b2-c1
    path: str  # the steering folder
    diverged: bool = False  # the trainer froze it after a blow-up (info.diverged)


def _train_config(runs_dir: str) -> dict:
    path = os.path.join(runs_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def find_runs(runs_dir: str | os.PathLike, include_diverged: bool = False,
              log: Callable[[str], None] = print) -> list[TrainedRun]:
    """Every saved steering of a train output folder, sorted by concept id then name. Runs that diverged in training
    (m9) are left out with a warning naming them, unless `include_diverged`."""
    runs_dir = os.path.abspath(os.fspath(runs_dir))
    folder = os.path.join(runs_dir, "runs")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{runs_dir}: no runs/ folder; give the --out folder of `prosv-jax train` (or "
                                "`prosv-jax axbench train`)")
    found = []
    for name in sorted(os.listdir(folder)):
        spec = os.path.join(folder, name, "steering.json")
        if not os.path.isfile(spec):
            continue  # an unfinished run has no steering yet
        with open(spec) as f:
            info = json.load(f).get("info", {})
        dataset = (info.get("run") or {}).get("dataset") or name.split("-", 1)[0]
        m = _RUN_CONCEPT.match(dataset)
        if not m:
            raise ValueError(f"{spec}: run dataset {dataset!r} does not name a concept (expected c<id>)")
        cid = int(m.group(1))
        variant = name[len(dataset) + 1:] if name.startswith(dataset + "-") else name
        found.append(TrainedRun(cid, name, variant, os.path.join(folder, name), bool(info.get("diverged"))))
    if not found:
        raise ValueError(f"{folder}: no trained steering (no runs/<run>/steering.json); train first")
    diverged = [r.name for r in found if r.diverged]
    if diverged and not include_diverged:
        log(f"warning: leaving out {len(diverged)} run(s) that diverged in training: {diverged} "
            "(--include-diverged to evaluate them)")
        found = [r for r in found if not r.diverged]
        if not found:
            raise ValueError(f"{folder}: every trained steering diverged in training; retrain with other learning "
                             "rates, or pass --include-diverged")
    return sorted(found, key=lambda r: (r.concept_id, r.name))


def split_of_runs(runs_dir: str | os.PathLike) -> str | None:
    """The AxBench split folder a train folder was trained on (its config's data.split_dir), if recorded."""
    return (_train_config(os.fspath(runs_dir)).get("data") or {}).get("split_dir") or None


def setting_of_runs(runs_dir: str | os.PathLike, model_dir: str) -> str:
    """A label for the table's column: '<model name> L<layer>' from the train config."""
    config = _train_config(os.fspath(runs_dir))
    name = (config.get("model") or {}).get("name") or os.path.basename(os.path.normpath(model_dir))
    layer = (config.get("steering") or {}).get("layer")
    return f"{name} L{layer}" if layer is not None else name


def concept_table(split_dir: str | os.PathLike) -> dict[int, str]:
    """{concept id: description} of an AxBench split."""
    from prosv_jax.data.axbench import load_metadata

    return {int(row["concept_id"]): str(row["concept"]) for row in load_metadata(split_dir)}


def check_concepts(ids: Sequence[int], concepts: dict[int, str], where: str) -> None:
    unknown = sorted({int(i) for i in ids} - set(concepts))
    if unknown:
        span = f"{min(concepts)}..{max(concepts)}" if concepts else "none"
        raise ValueError(f"unknown concept id(s) {unknown}: {where} has concept ids {span} ({len(concepts)} "
                         "concepts)")
