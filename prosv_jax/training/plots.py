"""Loss curves of a training output folder: one line per run, from every `groups/*/metrics.jsonl`."""

from __future__ import annotations

import glob
import json
import math
import os

LOSS_PLOT = "loss_curves.png"


def read_metrics(out_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """{run name: its metric records in step order} from every group of `out_dir` (a torn last line is skipped)."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(os.fspath(out_dir), "groups", "*", "metrics.jsonl"))):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                runs.setdefault(record["run"], []).append(record)
    for records in runs.values():
        records.sort(key=lambda r: r["step"])
    return runs


def plot_loss_curves(out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> str:
    """Writes the training loss of every run against its step (log y when the losses span a wide range);
    a diverged run is drawn dashed up to its last finite step and marked with an x. Returns the image path."""
    from prosv_jax.figures import save_figure, subplots

    runs = read_metrics(out_dir)
    path = os.fspath(path) if path is not None else os.path.join(os.fspath(out_dir), LOSS_PLOT)
    fig, ax = subplots(figsize=(8, 5))
    finite_all = []
    for curve in loss_curves(runs):
        finite_all += curve["losses"]
        line, = ax.plot(curve["steps"], curve["losses"], curve["style"], label=curve["label"])
        if curve["end_marker"]:
            ax.plot(curve["steps"][-1], curve["losses"][-1], "x", color=line.get_color(), markersize=10, mew=2)
    if finite_all and min(finite_all) > 0 and max(finite_all) / min(finite_all) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("micro-step")
    ax.set_ylabel("training loss")
    ax.set_title(os.path.basename(os.path.abspath(os.fspath(out_dir))))
    if runs:
        ax.legend(fontsize="small", loc="best", ncol=1 if len(runs) <= 12 else 2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def loss_curves(runs: dict[str, list[dict]]) -> list[dict]:
    """What the loss plot draws for each run, sorted by name: label, steps, losses (finite ones), line style, and
    whether an x marks the end. A diverged run is labelled "(diverged)", dashed, cut before its first dead step and
    marked with an x at its last live one."""
    curves = []
    for name, records in sorted(runs.items()):
        steps = [r["step"] for r in records if _finite(r.get("loss"))]
        losses = [r["loss"] for r in records if _finite(r.get("loss"))]
        diverged = any(not r.get("alive", True) for r in records)
        if diverged:  # the run stops counting at its first dead step
            dead = next(r["step"] for r in records if not r.get("alive", True))
            keep = [i for i, s in enumerate(steps) if s < dead]
            steps, losses = [steps[i] for i in keep], [losses[i] for i in keep]
        curves.append({"label": name + (" (diverged)" if diverged else ""), "steps": steps, "losses": losses,
                       "style": "--" if diverged else "-", "end_marker": diverged and bool(steps)})
    return curves


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
