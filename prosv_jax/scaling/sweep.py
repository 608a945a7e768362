"""Width sweeps of the planted-SV task: one random Llama-style family at several widths, crossed with grids over
beta, eta_alpha (factor lr), c, eta_v (direction lr) and seeds, trained through the many-runs `Trainer`.

Layout of a sweep folder:

    spec.json                   the sweep's spec (a rerun with another spec in the same folder is refused)
    n{width}/task.json          the planted task's statistics (loss floor, teacher-to-plain KL, ...)
    n{width}/{arm}/             one Trainer folder per (width, arm): groups/, runs/, summary.json
    n{width}/{arm}/planted_metrics.json   the scored runs (cached)
    results.csv                 ONE tidy table: a row per run, every hyperparameter, width, metrics, curve path

Resuming: groups with a `done.json` are skipped by the Trainer and scored runs are read from the cache, so a
rerun after a kill trains only the unfinished groups (and a finished sweep trains nothing, and builds no model).

Arms: each arm is one optimiser / steering variant with its own grid (a cartesian product). Learning rates are
absolute, or, with `*_lr_exponent` set, bases scaled as base * (n / lr_ref_width)^exponent, so that one axis can
be swept while the other learning rate follows the predicted scaling. `alpha0s` fixes alpha_0 itself (beta =
alpha0 / sqrt(n)); with `train_factor=False` that is the "fixed alpha, train v only" baseline.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from typing import Callable, Sequence

import numpy as np

from prosv_jax.files import write_json
from prosv_jax.training.optim import OptimConfig, width_scaled
from prosv_jax.training.step import StepConfig
from prosv_jax.training.trainer import RunSpec, TrainConfig, Trainer

__all__ = ["Arm", "Family", "SweepSpec", "TaskSpec", "arm_runs", "run_sweep", "spec_from_dict"]


@dataclasses.dataclass(frozen=True)
class Family:
    """The model family: fixed depth and head width; heads = n / head_dim; intermediate = ffn_mult * n."""

    depth: int = 3
    head_dim: int = 32
    vocab: int = 512
    ffn_mult: int = 2
    layer: int = 1  # the steered block
    logit_scale: float = 2.0
    model_seed: int = 0


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The planted teacher: |z*| per coordinate = strength, at `positions`; random prompts, sampled responses."""

    positions: str = "all"
    strength: float = 1.0
    prompt_len: int = 6
    response_len: int = 12
    n_train: int = 384
    n_eval: int = 64
    task_seed: int = 0


@dataclasses.dataclass(frozen=True)
class Arm:
    """One variant (optimiser, trainable factor) and its grid; every tuple is an axis of a cartesian product."""

    name: str
    optimizer: str = "adam"
    train_factor: bool = True
    betas: tuple[float, ...] = (1.0,)
    alpha0s: tuple[float, ...] = ()  # when given: alpha_0 itself, beta = alpha0 / sqrt(n) (replaces betas)
    factor_lrs: tuple[float, ...] = (1.0,)
    factor_lr_exponent: float | None = None  # None: absolute; else base * (n / lr_ref_width)^exponent
    cs: tuple[float, ...] = (1.0,)
    direction_lrs: tuple[float, ...] = (0.04,)
    direction_lr_exponent: float | None = None
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        for axis in ("betas", "alpha0s", "factor_lrs", "cs", "direction_lrs", "seeds"):
            object.__setattr__(self, axis, tuple(getattr(self, axis)))
        if not self.name or "/" in self.name:
            raise ValueError(f"arm name must be a non-empty folder name, got {self.name!r}")

    @property
    def size(self) -> int:
        inits = len(self.alpha0s) if self.alpha0s else len(self.betas)
        return inits * len(self.factor_lrs) * len(self.cs) * len(self.direction_lrs) * len(self.seeds)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    widths: tuple[int, ...]
    arms: tuple[Arm, ...]
    family: Family = Family()
    task: TaskSpec = TaskSpec()
    epochs: int = 1
    batch_size: int = 8
    runs_per_program: int = 12
    lr_ref_width: int = 256
    blowup_factor: float = 10.0  # a run whose |alpha v| passes blowup_factor * |alpha* v*| is flagged diverged
    threshold_fraction: float = 0.25  # loss threshold = floor + fraction * (plain loss - floor)

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "arms", tuple(self.arms))
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def spec_from_dict(data: dict) -> SweepSpec:
    data = dict(data)
    return SweepSpec(widths=tuple(data.pop("widths")), arms=tuple(Arm(**a) for a in data.pop("arms")),
                     family=Family(**data.pop("family")), task=TaskSpec(**data.pop("task")), **data)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def arm_runs(arm: Arm, width: int, lr_ref_width: int = 256) -> list[tuple[RunSpec, dict]]:
    """(RunSpec, hyperparameter row) for every point of the arm's grid at `width`, in a fixed order."""
    inits = [("alpha0", a) for a in arm.alpha0s] if arm.alpha0s else [("beta", b) for b in arm.betas]
    out = []
    for (init_kind, init), fa, c, dv, seed in itertools.product(inits, arm.factor_lrs, arm.cs, arm.direction_lrs,
                                                                arm.seeds):
        beta = init / math.sqrt(width) if init_kind == "alpha0" else init
        factor_lr = width_scaled(fa, arm.factor_lr_exponent, width, lr_ref_width)
        direction_lr = width_scaled(dv, arm.direction_lr_exponent, width, lr_ref_width)
        name = (f"{arm.name}-n{width}-{'a0' if init_kind == 'alpha0' else 'b'}{_fmt(init)}-fa{_fmt(fa)}-c{_fmt(c)}"
                f"-dv{_fmt(dv)}-s{seed}")
        run = RunSpec(name, seed=seed, init=(("beta", beta), ("c", c)),
                      lrs=(("factor", factor_lr), ("direction", direction_lr)))
        row = {"arm": arm.name, "width": width, "optimizer": arm.optimizer, "train_factor": arm.train_factor,
               "beta": beta, "alpha0": beta * math.sqrt(width), "c": c, "factor_lr": factor_lr,
               "direction_lr": direction_lr, "factor_lr_base": fa, "direction_lr_base": dv,
               "factor_lr_exponent": arm.factor_lr_exponent, "direction_lr_exponent": arm.direction_lr_exponent,
               "lr_product": factor_lr * direction_lr, "seed": seed, "run": name}
        out.append((run, row))
    return out


def group_size(count: int, most: int) -> int:
    """Runs per program: a divisor of `count` in [most/2, most] when there is one (no odd-sized last group, so
    no second compile), else `most`."""
    if count <= most:
        return count
    for k in range(most, max(most // 2, 1) - 1, -1):
        if count % k == 0:
            return k
    return most


def _groups_done(out_dir: str, count: int, per_program: int) -> list[bool]:
    return [os.path.isfile(os.path.join(out_dir, "groups", f"group-{g:04d}", "done.json"))
            for g in range(-(-count // per_program))]


def _check_spec(out_dir: str, spec: SweepSpec) -> None:
    path = os.path.join(out_dir, "spec.json")
    data = json.loads(json.dumps(spec.to_dict()))  # tuples -> lists, as stored
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        if stored != data:
            raise ValueError(f"{out_dir} holds a sweep with another spec; finished groups would be matched to the "
                             "wrong runs. Use a new folder (or delete this one) for a changed grid.")
    else:
        write_json(path, data)


COLUMNS_FIRST = ("arm", "width", "optimizer", "train_factor", "beta", "alpha0", "c", "factor_lr", "direction_lr",
                 "lr_product", "seed", "eval_kl", "eval_excess", "cos_edit", "cos_v", "edit_norm", "edit_norm_star",
                 "alpha", "v_norm", "final_loss", "final_loss_smooth", "best_loss", "steps_to_threshold", "diverged",
                 "worse_than_plain")
COLUMNS_LAST = ("run", "curve", "steering")


def run_sweep(spec: SweepSpec, out_dir: str, *, progress: bool = False, log: Callable[[str], None] = print,
              csv_name: str = "results.csv"):
    """Trains (or resumes) every run of the sweep and writes the tidy table; returns (DataFrame, info).

    info: {"groups_total", "groups_trained", "wall_s", "per_width": {width: seconds}}.
    """
    import pandas as pd

    _check_spec(out_dir, spec)
    start = time.time()
    rows, info = [], {"groups_total": 0, "groups_trained": 0, "per_width": {}}
    for width in spec.widths:
        t0 = time.time()
        rows.extend(_sweep_width(spec, width, out_dir, progress, log, info))
        info["per_width"][width] = round(time.time() - t0, 1)
        log(f"width {width}: {info['per_width'][width]} s")
    table = pd.DataFrame(rows)
    first = [c for c in COLUMNS_FIRST if c in table.columns]
    table = table[first + [c for c in table.columns if c not in first and c not in COLUMNS_LAST]
                  + [c for c in COLUMNS_LAST if c in table.columns]]
    table.to_csv(os.path.join(out_dir, csv_name), index=False, float_format="%.6g")
    info["wall_s"] = round(time.time() - start, 1)
    return table, info


def _sweep_width(spec: SweepSpec, width: int, out_dir: str, progress: bool, log, info) -> list[dict]:
    width_dir = os.path.join(out_dir, f"n{width}")
    os.makedirs(width_dir, exist_ok=True)
    plans = []
    for arm in spec.arms:
        runs = arm_runs(arm, width, spec.lr_ref_width)
        per_program = group_size(len(runs), spec.runs_per_program)
        arm_dir = os.path.join(width_dir, arm.name)
        done = _groups_done(arm_dir, len(runs), per_program)
        cached = _read_json(os.path.join(arm_dir, "planted_metrics.json")) or {}
        plans.append((arm, runs, per_program, arm_dir, done, cached))
        info["groups_total"] += len(done)
    task_stats = _read_json(os.path.join(width_dir, "task.json"))
    need_model = task_stats is None or any(
        not all(done) or any(r.name not in cached for r, _ in runs) for _, runs, _, _, done, cached in plans)
    task = None
    if need_model:
        task = _build_task(spec, width)
        task_stats = {**task.stats, "floor": task.floor}
        write_json(os.path.join(width_dir, "task.json"), task_stats)
    rows = []
    for arm, runs, per_program, arm_dir, done, cached in plans:
        if not all(done) or any(r.name not in cached for r, _ in runs):
            info["groups_trained"] += sum(not d for d in done)
            if not all(done):
                log(f"width {width} arm {arm.name}: training {sum(not d for d in done)} of {len(done)} group(s) "
                    f"of {per_program} run(s)")
            cached = _train_and_score(spec, task, arm, runs, per_program, arm_dir, progress)
        for run, hyper in runs:
            metrics = dict(cached[run.name])
            for key in ("curve", "steering"):
                metrics[key] = os.path.relpath(metrics[key], out_dir) if os.path.isabs(metrics[key]) else metrics[key]
            plain_kl = task_stats["eval_plain_kl"]
            # Diverged (the Trainer's flag): non-finite, or |alpha v| went past blowup_factor * |alpha* v*|.
            metrics["diverged"] = bool(metrics["diverged"]) or not np.isfinite(metrics["eval_kl"])
            metrics["worse_than_plain"] = bool(not metrics["eval_kl"] <= plain_kl)  # no better than no steering
            rows.append({**hyper, **_family_columns(spec), "floor": task_stats["floor"],
                         "plain_nll": task_stats["plain_nll"], "eval_plain_kl": plain_kl,
                         "eval_teacher_entropy": task_stats["eval_teacher_entropy"], **metrics})
    return rows


def _family_columns(spec: SweepSpec) -> dict:
    f, t = spec.family, spec.task
    return {"depth": f.depth, "head_dim": f.head_dim, "vocab": f.vocab, "ffn_mult": f.ffn_mult, "layer": f.layer,
            "positions": t.positions, "strength": t.strength, "epochs": spec.epochs, "batch_size": spec.batch_size,
            "n_train": t.n_train}


def _build_task(spec: SweepSpec, width: int):
    from prosv_jax.scaling.planted import make_planted_task, random_llama

    f, t = spec.family, spec.task
    model = random_llama(width, depth=f.depth, head_dim=f.head_dim, vocab=f.vocab, ffn_mult=f.ffn_mult,
                         seed=f.model_seed, logit_scale=f.logit_scale)
    return make_planted_task(model, layer=f.layer, positions=t.positions, strength=t.strength, n_train=t.n_train,
                             n_eval=t.n_eval, prompt_len=t.prompt_len, response_len=t.response_len,
                             seed=t.task_seed)


def _train_and_score(spec: SweepSpec, task, arm: Arm, runs, per_program: int, arm_dir: str, progress: bool) -> dict:
    from prosv_jax.scaling.planted import run_metrics

    steering = task.student_steering(train_factor=arm.train_factor)
    optim = OptimConfig(optimizer=arm.optimizer)  # the learning rates come per run
    step_config = StepConfig(objective="lang", blowup_edit_norm=spec.blowup_factor * task.alpha_star)
    train = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, runs_per_program=per_program,
                        progress=progress)
    trainer = Trainer(task.model, steering, {"default": task.train}, arm_dir, optim, step_config, train,
                      metadata={"arm": arm.name, "width": task.width})
    summaries = trainer.train([r for r, _ in runs])
    steps_per_epoch = -(-len(task.train) // spec.batch_size)
    scored = run_metrics(task, arm_dir, summaries, [r.name for r, _ in runs], runs_per_program=per_program,
                         window=min(steps_per_epoch, 16), threshold_fraction=spec.threshold_fraction)
    path = os.path.join(arm_dir, "planted_metrics.json")
    write_json(path, scored, indent=1, default=_json_default)
    return _read_json(path)  # exactly what a resumed sweep reads


def _json_default(x):
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError:
        return None


def default_spec(widths: Sequence[int] = (64, 128, 256, 512)) -> SweepSpec:
    """The committed CPU sweep (experiments/results/): see experiments/scaling/run_sweep.py."""
    alpha_lrs = (0.1, 0.3, 1.0, 3.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)  # denser where it diverges
    v_lrs = (0.001, 0.0022, 0.0046, 0.01, 0.022, 0.046, 0.1, 0.22)
    return SweepSpec(
        widths=tuple(widths),
        arms=(
            # beta x eta_alpha heatmap; eta_v follows the predicted n^-1/2 (0.01 at n = 256).
            Arm("alpha_lr", betas=(0.25, 1.0, 4.0), factor_lrs=alpha_lrs, direction_lrs=(0.01,),
                direction_lr_exponent=-0.5, seeds=(0, 1)),
            # eta_v sweep (x c); eta_alpha follows the predicted n^+1/2 (3 at n = 256).
            Arm("v_lr", betas=(1.0,), factor_lrs=(3.0,), factor_lr_exponent=0.5, cs=(1.0, 4.0), direction_lrs=v_lrs,
                seeds=(0, 1, 2)),
            # Baselines: alpha fixed to 1 (train v only; alpha = 1 needs eta_v = Theta(1) at every width), and
            # plain SGD instead of Adam.
            Arm("fixed_alpha", train_factor=False, alpha0s=(1.0,), direction_lrs=(0.001, 0.0046, 0.022, 0.1, 0.22,
                                                                                  0.46, 1.0, 2.2, 4.6)),
            Arm("sgd", optimizer="sgd", betas=(1.0,), factor_lrs=(1.0, 100.0),
                direction_lrs=(0.1, 0.3, 1.0, 3.0, 10.0)),
        ),
    )
