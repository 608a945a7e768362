"""Width sweeps of the planted-SV task: one random Llama-style family at several widths, crossed with grids over
beta, eta_alpha (factor lr), c, eta_v (direction lr) and seeds, trained through the many-runs `Trainer`.

Layout of a sweep folder:

    spec.json                   the sweep's spec (a rerun that changes an arm's grid in the same folder is refused;
                                widths and new arms may be added)
    n{width}/task.json          the planted task's statistics (loss floor, teacher-to-plain KL, ...)
    n{width}/{arm}/             one Trainer folder per (width, arm): groups/, runs/, summary.json
    n{width}/{arm}/planted_metrics.json   the scored runs (cached)
    n{width}/{arm}/grid.json    a refining arm's learning rates at that width, chosen once from its coarse arm
    results.csv                 ONE tidy table: a row per run, every hyperparameter, width, metrics, curve path
    timing.jsonl                the training wall time of each (width, arm) as it was trained

Resuming: groups with a `done.json` are skipped by the Trainer and scored runs are read from the cache, so a
rerun after a kill trains only the unfinished groups (and a finished sweep trains nothing, and builds no model).

Arms: each arm is one optimiser / steering variant with its own grid (a cartesian product). Learning rates are
absolute, or, with `*_lr_exponent` set, bases scaled as base * (n / lr_ref_width)^exponent, so that one axis can
be swept while the other learning rate follows the predicted scaling. `alpha0s` fixes alpha_0 itself (beta =
alpha0 / sqrt(n)); with `train_factor=False` that is the "fixed alpha, train v only" baseline. An arm may refine an
earlier one (a fine grid around that arm's best value at each width) or carry that best value from the smallest
width to larger ones (scaled or fixed: the transfer test), run at some widths only, use plain SGD,
drop the v-only clipping, tie both learning rates, or select a factor after training. The data may grow with
width (`data_exponent`). The sweeps the project runs are in `prosv_jax.scaling.specs`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from typing import Callable, Sequence

import jax
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


AXES = ("factor", "direction")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One variant (optimiser, clipping, trainable factor) and its grid; every tuple is an axis of a cartesian
    product.

    A refining arm (`refine` = an earlier arm's name) sweeps one learning rate (`refine_axis`) over
    `refine_multipliers` x the best grid value of that earlier arm at the same width (the earlier arm's rows with
    this arm's init, c and other learning rate), so a coarse grid finds the optimum and a fine one locates it.
    A transferring arm (`transfer_from` = a smaller width) takes that best value at `transfer_from` instead, times
    (n / transfer_from)^`transfer_exponent` (0: the learning rate kept fixed): the lr tuned small, carried to n.
    `factor_search`: the learned edit is also scaled by each of these factors after training, and the factor with
    the lowest KL on training prompts is kept (AxBench's post-hoc factor selection, for the fixed-factor SV).
    """

    name: str
    optimizer: str = "adam"
    train_factor: bool = True
    clip_norm: float | None = 1.0  # the recipe's clipping of the direction's gradient norm; None: no clipping
    tied_lrs: bool = False  # one learning rate for both groups (no parameter grouping): factor lr = direction lr
    betas: tuple[float, ...] = (1.0,)
    alpha0s: tuple[float, ...] = ()  # when given: alpha_0 itself, beta = alpha0 / sqrt(n) (replaces betas)
    factor_lrs: tuple[float, ...] = (1.0,)
    factor_lr_exponent: float | None = None  # None: absolute; else base * (n / lr_ref_width)^exponent
    cs: tuple[float, ...] = (1.0,)
    direction_lrs: tuple[float, ...] = (0.04,)
    direction_lr_exponent: float | None = None
    seeds: tuple[int, ...] = (0,)
    refine: str = ""
    refine_axis: str = "direction"
    refine_multipliers: tuple[float, ...] = ()
    factor_search: tuple[float, ...] = ()
    widths: tuple[int, ...] = ()  # the widths this arm runs at (empty: every width of the sweep)
    transfer_from: int = 0  # a refining arm's source width (0: this width)
    transfer_exponent: float = 0.0  # the carried lr x (n / transfer_from)^transfer_exponent

    def __post_init__(self):
        for axis in ("betas", "alpha0s", "factor_lrs", "cs", "direction_lrs", "seeds", "refine_multipliers",
                     "factor_search"):
            object.__setattr__(self, axis, tuple(getattr(self, axis)))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.name or "/" in self.name:
            raise ValueError(f"arm name must be a non-empty folder name, got {self.name!r}")
        if self.refine_axis not in AXES:
            raise ValueError(f"arm {self.name}: refine_axis must be one of {AXES}, got {self.refine_axis!r}")
        if bool(self.refine) != bool(self.refine_multipliers):
            raise ValueError(f"arm {self.name}: a refining arm needs both `refine` (the coarse arm's name) and "
                             "`refine_multipliers` (the fine grid around its best value)")
        if self.tied_lrs and (len(self.factor_lrs) != 1 or self.refine_axis != "direction"):
            raise ValueError(f"arm {self.name}: with tied_lrs the one learning rate is swept as direction_lrs "
                             "(leave factor_lrs and refine_axis at their defaults)")
        if self.refine and (len(self.alpha0s or self.betas) != 1 or len(self.cs) != 1 or len(self.swept(
                "factor" if self.refine_axis == "direction" else "direction")) != 1):
            raise ValueError(f"arm {self.name}: a refining arm sweeps only {self.refine_axis}_lrs; give it one "
                             "init, one c and one value of the other learning rate")
        if self.transfer_from and not self.refine:
            raise ValueError(f"arm {self.name}: transfer_from carries the best value of the arm named by `refine` "
                             "from a smaller width; set refine (and refine_multipliers=(1.0,))")
        if self.factor_search and self.train_factor:
            raise ValueError(f"arm {self.name}: factor_search is the post-hoc factor selection of a frozen factor; "
                             "set train_factor=False")

    def runs_at(self, width: int) -> bool:
        return not self.widths or width in self.widths

    def swept(self, axis: str) -> tuple[float, ...]:
        return self.factor_lrs if axis == "factor" else self.direction_lrs

    @property
    def size(self) -> int:
        inits = len(self.alpha0s) if self.alpha0s else len(self.betas)
        swept = {axis: len(self.refine_multipliers) if self.refine and axis == self.refine_axis
                 else len(self.swept(axis)) for axis in AXES}
        return inits * swept["factor"] * len(self.cs) * swept["direction"] * len(self.seeds)


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
    # Data grows with width: batch and training set x (n / data_ref_width)^data_exponent, steps per epoch fixed.
    # 1 keeps the gradient's signal-to-noise ratio per step the same at every width (the noise of an n-dimensional
    # gradient estimate grows like n / batch); 0 is the fixed-data sweep.
    data_exponent: float = 0.0
    data_ref_width: int = 64

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "arms", tuple(self.arms))
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        for i, arm in enumerate(self.arms):
            if arm.refine and arm.refine not in names[:i]:
                raise ValueError(f"arm {arm.name} refines {arm.refine!r}, which is not an earlier arm of the "
                                 f"sweep (arms in order: {names})")
            coarse = self.arms[names.index(arm.refine)] if arm.refine else None
            # A transferring arm's source width may lie outside this call's widths (checked when it is needed).
            sources = [arm.transfer_from] if arm.transfer_from else [w for w in self.widths if arm.runs_at(w)]
            missing = [w for w in sources if coarse is not None and not coarse.runs_at(w)]
            if missing:
                raise ValueError(f"arm {arm.name} {'transfers from' if arm.transfer_from else 'runs at'} widths "
                                 f"{missing}, where the arm it refines ({arm.refine}) does not run")
            outside = sorted(set(arm.widths) - set(self.widths))
            if outside:
                raise ValueError(f"arm {arm.name} lists widths {outside} that are not the sweep's {self.widths}")

    def batch_at(self, width: int) -> int:
        """The batch size at `width` (see data_exponent)."""
        return max(1, round(self.batch_size * (width / self.data_ref_width) ** self.data_exponent))

    def n_train_at(self, width: int) -> int:
        """The training set size at `width`: the same number of steps per epoch as at data_ref_width."""
        return max(1, round(self.task.n_train * self.batch_at(width) / self.batch_size))

    def restricted(self, widths: Sequence[int]) -> "SweepSpec":
        """The same sweep at a subset of its widths (every arm keeps its grid, so a folder run in parts matches);
        an arm listed only at other widths is left out."""
        widths = tuple(int(w) for w in widths)
        outside = sorted(set(widths) - set(self.widths))
        if outside:
            raise ValueError(f"widths {outside} are not the sweep's {self.widths}: pick a subset, or build the spec "
                             "with those widths (e.g. specs.wide_spec(widths=...))")
        arms = tuple(dataclasses.replace(a, widths=tuple(w for w in a.widths if w in widths)) for a in self.arms
                     if any(a.runs_at(w) for w in widths))
        return dataclasses.replace(self, widths=widths, arms=arms)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def spec_from_dict(data: dict) -> SweepSpec:
    data = dict(data)
    return SweepSpec(widths=tuple(data.pop("widths")), arms=tuple(Arm(**a) for a in data.pop("arms")),
                     family=Family(**data.pop("family")), task=TaskSpec(**data.pop("task")), **data)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def arm_runs(arm: Arm, width: int, lr_ref_width: int = 256, refined: Sequence[float] = ()
             ) -> list[tuple[RunSpec, dict]]:
    """(RunSpec, hyperparameter row) for every point of the arm's grid at `width`, in a fixed order.

    `refined`: a refining arm's absolute learning rates on its `refine_axis` at this width (see `refined_grid`).
    """
    if arm.refine and not refined:
        raise ValueError(f"arm {arm.name} refines {arm.refine}: pass its grid at width {width} (refined_grid)")
    inits = [("alpha0", a) for a in arm.alpha0s] if arm.alpha0s else [("beta", b) for b in arm.betas]
    exponents = {"factor": arm.factor_lr_exponent, "direction": arm.direction_lr_exponent}
    bases = {axis: arm.swept(axis) for axis in AXES}
    if arm.refine:
        bases[arm.refine_axis], exponents[arm.refine_axis] = tuple(refined), None  # absolute at this width
    out = []
    for (init_kind, init), fa, c, dv, seed in itertools.product(inits, bases["factor"], arm.cs, bases["direction"],
                                                                arm.seeds):
        beta = init / math.sqrt(width) if init_kind == "alpha0" else init
        direction_lr = width_scaled(dv, exponents["direction"], width, lr_ref_width)
        factor_lr = direction_lr if arm.tied_lrs else width_scaled(fa, exponents["factor"], width, lr_ref_width)
        name = (f"{arm.name}-n{width}-{'a0' if init_kind == 'alpha0' else 'b'}{_fmt(init)}-fa{_fmt(fa)}-c{_fmt(c)}"
                f"-dv{_fmt(dv)}-s{seed}")
        run = RunSpec(name, seed=seed, init=(("beta", beta), ("c", c)),
                      lrs=(("factor", factor_lr), ("direction", direction_lr)))
        row = {"arm": arm.name, "width": width, "optimizer": arm.optimizer, "train_factor": arm.train_factor,
               "clip_norm": arm.clip_norm, "tied_lrs": arm.tied_lrs, "refines": arm.refine or None,
               "transfer_from": arm.transfer_from or None,
               "beta": beta, "alpha0": beta * math.sqrt(width), "c": c, "factor_lr": factor_lr,
               "direction_lr": direction_lr, "factor_lr_base": fa, "direction_lr_base": dv,
               "factor_lr_exponent": exponents["factor"], "direction_lr_exponent": exponents["direction"],
               "lr_product": factor_lr * direction_lr, "seed": seed, "run": name}
        out.append((run, row))
    return out


def refined_grid(arm: Arm, coarse_rows: Sequence[dict], width: int, lr_ref_width: int = 256) -> list[float]:
    """A refining arm's learning rates at `width`: its multipliers x the best value of its `refine_axis` among
    the coarse arm's rows that share this arm's init, c and other learning rate (mean log10 KL over seeds;
    a diverged run scores as no steering). A transferring arm passes the coarse rows at its `transfer_from`."""
    import pandas as pd

    from prosv_jax.scaling.analysis import score

    axis = f"{arm.refine_axis}_lr"
    source = arm.transfer_from or width
    probe = arm_runs(dataclasses.replace(arm, refine="", refine_multipliers=(), transfer_from=0), source,
                   lr_ref_width)[0][1]
    table = pd.DataFrame(list(coarse_rows))
    match = np.ones(len(table), bool)
    for column in ("beta", "c") + (() if arm.tied_lrs else tuple(f"{a}_lr" for a in AXES if a != arm.refine_axis)):
        match &= np.isclose(table[column].to_numpy(np.float64), probe[column], rtol=1e-9)
    part = table[match]
    if not len(part):
        raise ValueError(f"arm {arm.name} refines {arm.refine} at width {source}, but no run of {arm.refine} has "
                         f"beta={probe['beta']:g}, c={probe['c']:g} and this arm's other learning rate: give the "
                         "refining arm a slice of the coarse arm's grid")
    means = part.assign(_log=np.log10(np.maximum(score(part), 1e-12))).groupby(axis)["_log"].mean()
    best = float(means.idxmin()) * (width / source) ** arm.transfer_exponent
    return [best * m for m in arm.refine_multipliers]


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


def _without_widths(data: dict) -> dict:
    return {**{k: v for k, v in data.items() if k not in ("widths", "arms")},
            "arms": {arm["name"]: {k: v for k, v in arm.items() if k != "widths"} for arm in data["arms"]}}


def _check_spec(out_dir: str, spec: SweepSpec) -> None:
    """The folder's spec.json must describe the same grid where the two overlap: the widths may differ and arms may
    be added or left out (each width's and each arm's runs live in their own n{width}/{arm}/ folder, so a sweep can
    be run a few widths at a time and extended), but an arm kept under its name must keep its grid. spec.json keeps
    every arm and width the folder has held, so an arm left out of one call is still checked in the next."""
    path = os.path.join(out_dir, "spec.json")
    data = json.loads(json.dumps(spec.to_dict()))  # tuples -> lists, as stored
    if os.path.isfile(path):
        with open(path) as f:
            # Read back through the dataclasses: a field added since the folder was made takes its default.
            stored = json.loads(json.dumps(spec_from_dict(json.load(f)).to_dict()))
        old, new = _without_widths(stored), _without_widths(data)
        changed = sorted(name for name in set(old["arms"]) & set(new["arms"]) if old["arms"][name] != new["arms"][name])
        if changed or {**old, "arms": None} != {**new, "arms": None}:
            what = f"arms {changed} changed their grid" if changed else "the model, task or data settings changed"
            raise ValueError(f"{out_dir} holds a sweep with another spec ({what}); finished groups would be matched "
                             "to the wrong runs. Use a new folder (or delete this one), or give a changed arm a new "
                             "name.")
        held = {arm["name"]: arm for arm in stored["arms"]}
        for arm in data["arms"]:  # an arm's widths: every width it has run at in this folder ([]: every width)
            before = held.pop(arm["name"], {"widths": arm["widths"]})["widths"]
            arm["widths"] = sorted(set(arm["widths"]) | set(before)) if arm["widths"] and before else []
        data["arms"] += list(held.values())
        data["widths"] = sorted(set(data["widths"]) | set(stored["widths"]))
    _write_main(path, data)


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
    rows_by_arm = {}  # (width, arm name) -> rows: what refining and transferring arms read
    for width in spec.widths:
        t0 = time.time()
        rows.extend(_sweep_width(spec, width, out_dir, progress, log, info, rows_by_arm))
        info["per_width"][width] = round(time.time() - t0, 1)
        log(f"width {width}: {info['per_width'][width]} s")
    table = pd.DataFrame(rows)
    first = [c for c in COLUMNS_FIRST if c in table.columns]
    table = table[first + [c for c in table.columns if c not in first and c not in COLUMNS_LAST]
                  + [c for c in COLUMNS_LAST if c in table.columns]]
    table.to_csv(os.path.join(out_dir, csv_name), index=False, float_format="%.6g")
    info["wall_s"] = round(time.time() - start, 1)
    return table, info


def _sweep_width(spec: SweepSpec, width: int, out_dir: str, progress: bool, log, info, rows_by_arm: dict
                 ) -> list[dict]:
    width_dir = os.path.join(out_dir, f"n{width}")
    os.makedirs(width_dir, exist_ok=True)
    task_stats = _read_json(os.path.join(width_dir, "task.json"))
    task = None
    rows = []
    for arm in (a for a in spec.arms if a.runs_at(width)):
        arm_dir = os.path.join(width_dir, arm.name)
        refined = _refined(spec, arm, rows_by_arm, width, arm_dir) if arm.refine else ()
        runs = arm_runs(arm, width, spec.lr_ref_width, refined)
        per_program = group_size(len(runs), spec.runs_per_program)
        done = _groups_done(arm_dir, len(runs), per_program)
        cached = _read_json(os.path.join(arm_dir, "planted_metrics.json")) or {}
        info["groups_total"] += len(done)
        if not all(done) or task_stats is None or any(r.name not in cached for r, _ in runs):
            if task is None:
                task = _build_task(spec, width)
                task_stats = {**task.stats, "floor": task.floor}
                _write_main(os.path.join(width_dir, "task.json"), task_stats)
            todo = sum(not d for d in done)
            info["groups_trained"] += todo
            if not all(done):
                log(f"width {width} arm {arm.name}: training {todo} of {len(done)} group(s) "
                    f"of {per_program} run(s)")
            started = time.time()
            cached = _train_and_score(spec, task, arm, runs, per_program, arm_dir, progress)
            if jax.process_index() == 0:  # the sweep's cost, arm by arm (resumed parts add lines)
                with open(os.path.join(out_dir, "timing.jsonl"), "a") as f:
                    f.write(json.dumps({"width": width, "arm": arm.name, "groups_trained": todo,
                                        "runs": len(runs), "seconds": round(time.time() - started, 1)}) + "\n")
        arm_rows = []
        for run, hyper in runs:
            metrics = dict(cached[run.name])
            for key in ("curve", "steering"):
                metrics[key] = os.path.relpath(metrics[key], out_dir) if os.path.isabs(metrics[key]) else metrics[key]
            plain_kl = task_stats["eval_plain_kl"]
            # Diverged (the Trainer's flag): non-finite, or |alpha v| went past blowup_factor * |alpha* v*|.
            metrics["diverged"] = bool(metrics["diverged"]) or not np.isfinite(metrics["eval_kl"])
            metrics["worse_than_plain"] = bool(not metrics["eval_kl"] <= plain_kl)  # no better than no steering
            arm_rows.append({**hyper, **_family_columns(spec, width), "floor": task_stats["floor"],
                             "plain_nll": task_stats["plain_nll"], "eval_plain_kl": plain_kl,
                             "eval_teacher_entropy": task_stats["eval_teacher_entropy"], **metrics})
        rows_by_arm[width, arm.name] = arm_rows
        rows.extend(arm_rows)
    return rows


def _refined(spec: SweepSpec, arm: Arm, rows_by_arm: dict, width: int, arm_dir: str) -> list[float]:
    """A refining arm's grid at `width`: read from its grid.json once chosen (so a resumed sweep trains the same
    runs), else chosen from the coarse arm's results and written there."""
    path = os.path.join(arm_dir, "grid.json")
    stored = _read_json(path)
    if stored is not None:
        return stored["lrs"]
    source = arm.transfer_from or width
    if (source, arm.refine) not in rows_by_arm:
        raise ValueError(f"arm {arm.name} transfers the best {arm.refine} run from width {source}, which this call "
                         f"does not sweep: include width {source} (a finished width is read back in seconds)")
    lrs = refined_grid(arm, rows_by_arm[source, arm.refine], width, spec.lr_ref_width)
    _write_main(path, {"refines": arm.refine, "axis": arm.refine_axis, "best": lrs[arm.refine_multipliers.index(1.0)]
                       if 1.0 in arm.refine_multipliers else None, "lrs": lrs})
    return lrs


def _family_columns(spec: SweepSpec, width: int) -> dict:
    f, t = spec.family, spec.task
    return {"depth": f.depth, "head_dim": f.head_dim, "vocab": f.vocab, "ffn_mult": f.ffn_mult, "layer": f.layer,
            "positions": t.positions, "strength": t.strength, "epochs": spec.epochs,
            "batch_size": spec.batch_at(width), "n_train": spec.n_train_at(width)}


def _build_task(spec: SweepSpec, width: int):
    from prosv_jax.scaling.planted import make_planted_task, random_llama

    f, t = spec.family, spec.task
    model = random_llama(width, depth=f.depth, head_dim=f.head_dim, vocab=f.vocab, ffn_mult=f.ffn_mult,
                         seed=f.model_seed, logit_scale=f.logit_scale)
    return make_planted_task(model, layer=f.layer, positions=t.positions, strength=t.strength,
                             n_train=spec.n_train_at(width), n_eval=t.n_eval, prompt_len=t.prompt_len,
                             response_len=t.response_len, seed=t.task_seed)


def _train_and_score(spec: SweepSpec, task, arm: Arm, runs, per_program: int, arm_dir: str, progress: bool) -> dict:
    from prosv_jax.scaling.planted import run_metrics

    steering = task.student_steering(train_factor=arm.train_factor)
    optim = OptimConfig(optimizer=arm.optimizer, clip_norm=arm.clip_norm)  # the learning rates come per run
    step_config = StepConfig(objective="lang", blowup_edit_norm=spec.blowup_factor * task.alpha_star)
    batch = spec.batch_at(task.width)
    train = TrainConfig(epochs=spec.epochs, batch_size=batch, runs_per_program=per_program, progress=progress)
    trainer = Trainer(task.model, steering, {"default": task.train}, arm_dir, optim, step_config, train,
                      metadata={"arm": arm.name, "width": task.width})
    summaries = trainer.train([r for r, _ in runs])
    steps_per_epoch = -(-len(task.train) // batch)
    path = os.path.join(arm_dir, "planted_metrics.json")
    if jax.process_index() == 0:  # one process scores and writes; the others read what it wrote
        scored = run_metrics(task, arm_dir, summaries, [r.name for r, _ in runs], runs_per_program=per_program,
                             window=min(steps_per_epoch, 16), threshold_fraction=spec.threshold_fraction,
                             factor_search=arm.factor_search)
        write_json(path, scored, indent=1, default=_json_default)
    _wait_for_main(f"scored-n{task.width}-{arm.name}")
    return _read_json(path)  # exactly what a resumed sweep reads


def _write_main(path: str, data) -> None:
    """Written by process 0 only (the output folder is shared); every process goes on with the same `data`."""
    if jax.process_index() == 0:
        write_json(path, data)


def _wait_for_main(name: str) -> None:
    if jax.process_count() > 1:
        from prosv_jax import distributed

        distributed.barrier(f"prosv-jax-sweep-{name}")


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
