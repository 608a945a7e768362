"""Parameter-grouped Adam for steering params (method.md section 2).

Each parameter belongs to a group: "factor" (alpha), "direction" (v), "other" (e.g. LoReFT) or "frozen". Every
group gets Adam (0.9, 0.999, 1e-8, no weight decay; `optimizer="sgd"`: plain gradient descent instead, a baseline
for scaling studies) and a schedule (linear decay by default, over the horizon the reference uses: see
`schedule_steps`); clipping applies to the groups named (the direction only, by default: clipping both breaks the
scaling). The optax chain yields unit-learning-rate updates and the learning rates multiply them afterwards, as
data, so a vmapped grid can give every run its own rates without recompiling. Width scaling turns width-free base rates into eta_alpha = base * n^(+1/2) and
eta_v = base * n^(-1/2) (exponents configurable).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from prosv_jax.interventions.kinds import SteeringVector
from prosv_jax.interventions.transform import Steering, SteeringParams

GROUPS = ("factor", "direction", "other")
SCHEDULES = ("linear", "constant", "cosine")
DECAY_HORIZONS = ("micro_steps", "updates")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    factor_lr: float = 1.0
    direction_lr: float = 4e-2
    other_lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    clip_groups: tuple[str, ...] = ("direction",)
    schedule: str = "linear"  # linear decay (default), constant or cosine
    warmup_steps: int = 0  # in optimizer updates
    grad_accum: int = 1
    # The schedule's horizon (see `schedule_steps`): "micro_steps", as the reference runs it (ends at about
    # 1 - 1/grad_accum of the peak under accumulation), or "updates" (decays to exactly 0 at the last update).
    decay_over: str = "micro_steps"
    width_scaling: bool = False  # treat the learning rates as width-free bases
    factor_lr_exponent: float = 0.5
    direction_lr_exponent: float = -0.5
    optimizer: str = "adam"  # adam (the recipe) | sgd (plain gradient descent: update = -lr * gradient)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        unknown = set(self.clip_groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"clip_groups {sorted(unknown)} are not groups; groups: {GROUPS}")
        if self.decay_over not in DECAY_HORIZONS:
            raise ValueError(f"decay_over must be one of {DECAY_HORIZONS}, got {self.decay_over!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")

    def learning_rates(self, width: int) -> dict[str, float]:
        """Peak learning rate of each group for a model of hidden width `width`."""
        lrs = {"factor": self.factor_lr, "direction": self.direction_lr, "other": self.other_lr}
        if self.width_scaling:
            lrs["factor"] = width_scaled(lrs["factor"], self.factor_lr_exponent, width)
            lrs["direction"] = width_scaled(lrs["direction"], self.direction_lr_exponent, width)
        return lrs


def width_scaled(base: float, exponent: float | None, width: int, ref_width: int = 1) -> float:
    """base * (width / ref_width) ** exponent (base itself when exponent is None): the one width rule (m6). The
    trainer's width-free bases use ref_width 1 (base x n^e); the scaling sweep quotes its bases at width 256."""
    return base if exponent is None else base * (width / ref_width) ** exponent


def param_labels(steering: Steering, params: SteeringParams) -> dict:
    """The group of every steering parameter, in the params' structure."""
    labels = {}
    for site in steering.sites:
        frozen = set(site.kind.frozen())
        names = params[site.name]
        if isinstance(site.kind, SteeringVector):
            group = {"alpha": "factor", "v": "direction"}
        else:
            group = {name: "other" for name in names}
        labels[site.name] = {name: "frozen" if name in frozen else group[name] for name in names}
    return labels


def schedule_steps(config: OptimConfig, micro_steps: int) -> int:
    """The schedule's horizon (its ``num_training_steps``) for a run of ``micro_steps`` micro-batches.

    The reference builds ``get_linear_schedule_with_warmup(opt, 0, epochs * len(dataloader))``, counting
    micro-batches, but calls ``scheduler.step()`` once per optimizer update: with ``grad_accum`` > 1 the rate
    therefore ends at about ``1 - 1/grad_accum`` of the peak, not 0 (method.md section 3). ``decay_over="micro_steps"``
    reproduces that; ``"updates"`` uses the number of updates, so the rate decays to 0. Equal when grad_accum is 1.
    """
    if config.decay_over == "micro_steps":
        return micro_steps
    return -(-micro_steps // config.grad_accum)


def schedule_fraction(config: OptimConfig, total_steps: int):
    """count -> multiplier of the peak rate (count = optimizer updates already applied; total_steps = the horizon,
    see `schedule_steps`)."""
    warmup = config.warmup_steps
    decay_steps = max(total_steps - warmup, 1)

    def fraction(count):
        count = jnp.asarray(count, jnp.float32)
        progress = jnp.clip((count - warmup) / decay_steps, 0.0, 1.0)
        if config.schedule == "linear":
            value = 1.0 - progress
        elif config.schedule == "cosine":
            value = 0.5 * (1.0 + jnp.cos(math.pi * progress))
        else:
            value = jnp.ones_like(progress)
        return value if warmup == 0 else jnp.where(count < warmup, count / warmup, value)

    return fraction


def make_optimizer(config: OptimConfig, labels: dict, total_steps: int) -> optax.GradientTransformation:
    """Unit-rate, per-group optax chain (clip where configured, Adam or SGD, schedule); see `scale_by_group_lr`."""
    fraction = schedule_fraction(config, total_steps)
    transforms = {}
    for group in GROUPS:
        chain = [optax.clip_by_global_norm(config.clip_norm)] if (
            config.clip_norm is not None and group in config.clip_groups) else []
        scale = (optax.scale_by_adam(config.b1, config.b2, config.eps) if config.optimizer == "adam"
                 else optax.identity())
        chain += [scale, optax.scale_by_schedule(fraction)]
        transforms[group] = optax.chain(*chain)
    transforms["frozen"] = optax.set_to_zero()
    tx = optax.multi_transform(transforms, labels)
    return optax.MultiSteps(tx, config.grad_accum) if config.grad_accum > 1 else tx


def scale_by_group_lr(updates: SteeringParams, labels: dict, lrs: dict[str, jax.Array]) -> SteeringParams:
    """Descent step: -lr[group] * update for every parameter (lrs may be traced: one per vmapped run)."""
    return jax.tree.map(lambda u, g: u if g == "frozen" else -lrs[g] * u, updates, labels)


def group_norms(tree: SteeringParams, labels: dict) -> dict[str, jax.Array]:
    """Global L2 norm of each group's entries (for metrics)."""
    leaves, label_leaves = jax.tree.leaves(tree), jax.tree.leaves(labels)
    norms = {}
    for group in GROUPS:
        parts = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x, g in zip(leaves, label_leaves) if g == group]
        if parts:
            norms[group] = jnp.sqrt(sum(parts))
    return norms
