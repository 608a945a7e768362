"""The sweeps the project runs: the committed 4-width CPU sweep, the 32x width sweep that decides the exponents,
and its accelerator-sized version (widths to 8192). Each is a `SweepSpec`; `experiments/scaling/run_sweep.py`
runs them by name, and `prosv_jax.scaling.cost.estimate` says what they cost first."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from prosv_jax.scaling.sweep import Arm, Family, SweepSpec, TaskSpec

__all__ = ["SPECS", "cpu4_spec", "gpu_spec", "wide_spec"]

WIDE_WIDTHS = (64, 128, 256, 512, 1024, 2048)
FACTORS14 = tuple(2.0 ** (k / 2) for k in range(-6, 8))  # AxBench-style post-hoc factors: 1/8 to 11.3, x sqrt 2


def cpu4_spec(widths: Sequence[int] = (64, 128, 256, 512)) -> SweepSpec:
    """The committed 4-width CPU sweep (experiments/results/scaling_cpu.csv): fixed data, x2 grids."""
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


def _grid(center: float, step: float, lo: int, hi: int) -> tuple[float, ...]:
    return tuple(center * step ** k for k in range(lo, hi + 1))


def wide_spec(widths: Sequence[int] = WIDE_WIDTHS, *, data_exponent: float = 0.75, seeds: Sequence[int] = (0, 1, 2),
              side_widths: Sequence[int] | None = None) -> SweepSpec:
    """The 32x sweep. Every learning-rate grid is centred on the predicted scaling (bases quoted at n = 256), so a
    coarse x2 grid over x/8..x8 finds each optimum at every width even if the exponent is off by 0.3; a refining
    arm then steps by sqrt 2 over x/2..x2 around it with `seeds`. Data grows as n^data_exponent (batch and set;
    48 steps at every width). The plateau at beta <= 1 and the baselines run at `side_widths` (default: every
    other width, 64 / 256 / 1024: a 16x span for their transfer), which keeps the sweep within about 3 CPU hours.
    """
    widths = tuple(widths)
    side = tuple(side_widths) if side_widths is not None else tuple(widths[::2])
    fine = _grid(1.0, 2 ** 0.5, -2, 2)
    recipe = dict(betas=(1.0,), factor_lrs=(3.0,), factor_lr_exponent=0.5, direction_lr_exponent=-0.5)
    return SweepSpec(
        widths=widths,
        arms=(
            # eta_v* at beta = 1, eta_alpha on its predicted n^+1/2.
            Arm("v_lr", direction_lrs=_grid(0.02, 2.0, -3, 3), **recipe),
            Arm("v_fine", refine="v_lr", refine_multipliers=fine, seeds=tuple(seeds), **recipe),
            # eta_alpha* at beta = 4 (alpha_0 too large: the factor must move), eta_v on its predicted n^-1/2.
            Arm("alpha_lr", betas=(4.0,), factor_lrs=_grid(5.0, 2.0, -3, 3), factor_lr_exponent=0.5,
                direction_lrs=(0.02,), direction_lr_exponent=-0.5),
            Arm("alpha_fine", betas=(4.0,), refine="alpha_lr", refine_axis="factor", refine_multipliers=fine,
                direction_lrs=(0.02,), direction_lr_exponent=-0.5, seeds=tuple(seeds)),
            # The plateau of eta_alpha at a well-sized alpha_0: x4 steps from far below to past the stability edge.
            Arm("alpha_plateau", betas=(0.25, 1.0), factor_lrs=_grid(5.0, 4.0, -3, 2), factor_lr_exponent=0.5,
                direction_lrs=(0.02,), direction_lr_exponent=-0.5, widths=side),
            # Baselines. alpha frozen at 1, v trained, then AxBench's post-hoc factor selection: at the recipe's
            # eta_v and over its own grid (absolute: with alpha = 1, dz = eta_v per coordinate at any width).
            Arm("fixed_alpha_recipe", train_factor=False, alpha0s=(1.0,), direction_lrs=(0.02,),
                direction_lr_exponent=-0.5, factor_search=FACTORS14, widths=side),
            Arm("fixed_alpha", train_factor=False, alpha0s=(1.0,), direction_lrs=_grid(0.2, 4.0, -2, 2),
                factor_search=FACTORS14, widths=side),
            # Plain SGD with and without the recipe's v-only clipping (eta_alpha as the recipe's).
            Arm("sgd_clip", optimizer="sgd", betas=(1.0,), factor_lrs=(3.0,), factor_lr_exponent=0.5,
                direction_lrs=_grid(0.3, 4.0, -2, 2), widths=side),
            Arm("sgd_noclip", optimizer="sgd", clip_norm=None, betas=(1.0,), factor_lrs=(3.0,),
                factor_lr_exponent=0.5, direction_lrs=_grid(0.3, 4.0, -2, 2), widths=side),
            # Adam with one learning rate for both groups (no parameter grouping).
            Arm("adam_tied", tied_lrs=True, betas=(1.0,), direction_lrs=_grid(0.02, 4.0, -2, 3), widths=side),
            # Transfer: the learning rate tuned at the smallest width (the fine arm's best), carried to every larger
            # width scaled as predicted or kept fixed (one seed; the other rate as in its arm).
            *_transfer_arms(widths, fine_v=dict(recipe), fine_alpha=dict(
                betas=(4.0,), refine_axis="factor", direction_lrs=(0.02,), direction_lr_exponent=-0.5)),
        ),
        family=Family(), task=TaskSpec(), epochs=1, batch_size=8, runs_per_program=15,
        data_exponent=data_exponent, data_ref_width=64,
    )


def _transfer_arms(widths: Sequence[int], fine_v: dict, fine_alpha: dict) -> tuple[Arm, ...]:
    """v_transfer_scaled / _fixed and alpha_transfer_scaled / _fixed: the best v_fine (alpha_fine) learning rate at
    the smallest width times (n / n_min)^(-1/2 or +1/2) or kept, at every larger width."""
    if len(widths) < 2:
        return ()
    arms = []
    for axis, kwargs, exponent in (("v", fine_v, -0.5), ("alpha", fine_alpha, 0.5)):
        for rule, power in (("scaled", exponent), ("fixed", 0.0)):
            arms.append(Arm(f"{axis}_transfer_{rule}", refine=f"{axis}_fine", refine_multipliers=(1.0,),
                            transfer_from=widths[0], transfer_exponent=power, widths=tuple(widths[1:]), **kwargs))
    return tuple(arms)


def gpu_spec(widths: Sequence[int] = (256, 512, 1024, 2048, 4096, 8192), data_exponent: float = 1.0) -> SweepSpec:
    """The same sweep for an accelerator: widths to 8192 (32x from 256), data growing as n from batch 8 at n = 64
    (the gradient's signal-to-noise per step the same at every width), every arm at every width."""
    return wide_spec(widths, data_exponent=data_exponent, side_widths=widths)


def _eta_v_check(widths: Sequence[int], data_exponent: float, **changes) -> SweepSpec:
    """The wide sweep's eta_v arms (coarse x2, then sqrt 2 steps, one seed) at `widths` with data growing as
    n^data_exponent and any other SweepSpec field changed: the checks of what data or steps do to eta_v*."""
    wide = wide_spec(data_exponent=data_exponent, seeds=(0,))
    return dataclasses.replace(wide, **changes, arms=tuple(a for a in wide.arms if a.name in ("v_lr", "v_fine"))
                               ).restricted(widths)


def data_check_spec(widths: Sequence[int] = (1024,), data_exponent: float = 1.0) -> SweepSpec:
    """Does the wide sweep's data limit move eta_v*? Its eta_v arms with more data (batch 128 rather than 64 at
    n = 1024), to set against the wide sweep's optimum at the same width."""
    return _eta_v_check(widths, data_exponent)


def steps_check_spec(widths: Sequence[int] = (64, 128, 256, 512, 1024), epochs: int = 2, data_exponent: float = 0.75
                     ) -> SweepSpec:
    """Does the 48-step budget steepen eta_v*'s slope? Its eta_v arms at its data, trained for `epochs` passes
    (96 steps at 2): a slope to set against the wide sweep's at 48 steps."""
    return _eta_v_check(widths, data_exponent, epochs=epochs)


SPECS = {"cpu4": cpu4_spec, "wide": wide_spec, "gpu": gpu_spec, "data_check": data_check_spec,
         "steps_check": steps_check_spec}
