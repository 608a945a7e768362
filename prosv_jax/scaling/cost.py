"""What a width sweep costs before it runs: the training FLOPs of every run from the family's shapes, seconds per
step measured on this machine at each width, and the sweep's total from its grid, so that a grid can be sized to
a budget; with a sustained FLOP rate instead of a measurement, the same count estimates an accelerator's time.

Counted: the blocks after the steered one and the LM head at the response positions, forward and backward (the
weights are frozen, so the backward computes activation gradients only: about the forward's FLOPs again). The
blocks up to the steered one run once over the training set for the cached prefix, and building the task (the
teacher's samples of the training set, then statistics on a fixed subset) runs the whole model over the data
about once more; both are counted per width.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from prosv_jax.scaling.sweep import SweepSpec

__all__ = ["estimate", "forward_flops_per_token", "measure_step_seconds", "run_flops"]


def forward_flops_per_token(spec: SweepSpec, width: int, blocks: int) -> float:
    """Forward FLOPs of `blocks` blocks for one token: the projections (q, k, v, o: 4 d^2; gate, up, down: 3 d F)
    and the attention core over the row (scores and mixing: 2 T d), 2 FLOPs per multiply-add."""
    f, t = spec.family, spec.task
    d, ffn, row = width, f.ffn_mult * width, t.prompt_len + t.response_len
    return blocks * 2.0 * (4 * d * d + 3 * d * ffn + 2 * row * d)


def steps_per_run(spec: SweepSpec, width: int) -> int:
    return spec.epochs * -(-spec.n_train_at(width) // spec.batch_at(width))


def run_flops(spec: SweepSpec, width: int) -> float:
    """Training FLOPs of one run at `width` (every step), forward and backward."""
    f, t = spec.family, spec.task
    after = f.depth - f.layer - 1
    per_example = ((t.prompt_len + t.response_len) * forward_flops_per_token(spec, width, after)
                   + t.response_len * 2.0 * width * f.vocab)  # the LM head at the response positions only
    return 2.0 * per_example * spec.batch_at(width) * steps_per_run(spec, width)


def fixed_flops(spec: SweepSpec, width: int) -> float:
    """Per width, once: the prefix (blocks up to the steered one) over the training set, the teacher's sampling
    of the whole set, and four passes over the statistics' examples and the held-out ones (`make_planted_task`)."""
    f, t = spec.family, spec.task
    row = t.prompt_len + t.response_len
    n_train = spec.n_train_at(width)
    prefix = n_train * row * forward_flops_per_token(spec, width, f.layer + 1)
    whole = row * forward_flops_per_token(spec, width, f.depth)
    return prefix + whole * (n_train + t.n_eval + 4 * (min(n_train, 512) + t.n_eval))


def measure_step_seconds(spec: SweepSpec, width: int, runs: int = 2, repeats: int = 3) -> float:
    """Seconds per step per run at `width`, measured: the Trainer's compiled group step of `runs` runs on random
    tokens of the task's shapes at the width's batch size (best of `repeats` after a warm-up step)."""
    import jax

    from prosv_jax.interventions.kinds import SteeringVector
    from prosv_jax.interventions.transform import Steering
    from prosv_jax.scaling.planted import random_llama
    from prosv_jax.training.data import TrainDataset
    from prosv_jax.training.timing import group_step_fn

    f, t = spec.family, spec.task
    model = random_llama(width, depth=f.depth, head_dim=f.head_dim, vocab=f.vocab, ffn_mult=f.ffn_mult,
                         seed=f.model_seed, logit_scale=f.logit_scale)
    batch = spec.batch_at(width)
    rng = np.random.default_rng(0)
    examples = [(rng.integers(0, f.vocab, t.prompt_len).tolist(), rng.integers(0, f.vocab, t.response_len).tolist())
                for _ in range(batch)]
    dataset = TrainDataset.from_examples(examples, max_response=t.response_len)
    steering = Steering.single(f.layer, SteeringVector(), t.positions)
    step, _ = group_step_fn(model, steering, dataset, [np.arange(batch)], runs=runs)
    step()  # compile
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    jax.clear_caches()
    return best / runs


def estimate(spec: SweepSpec, widths: Sequence[int] | None = None, *, measure: bool = True,
             flops_per_s: float | None = None, log=print) -> dict:
    """The sweep's cost per width and in total: runs (every arm's grid), steps, FLOPs, and seconds, either
    measured here (`measure`: the step timed at each width; the fixed per-width work at the step's FLOP rate)
    or from `flops_per_s` (a sustained rate, e.g. an accelerator's)."""
    if not measure and not flops_per_s:
        raise ValueError("give flops_per_s (a sustained FLOP rate) or measure=True")
    rows = []
    for width in widths or spec.widths:
        runs = sum(arm.size for arm in spec.arms if arm.runs_at(width))
        train = runs * run_flops(spec, width)
        fixed = fixed_flops(spec, width)
        row = {"width": width, "batch": spec.batch_at(width), "n_train": spec.n_train_at(width), "runs": runs,
               "steps_per_run": steps_per_run(spec, width), "train_tflop": train / 1e12, "fixed_tflop": fixed / 1e12}
        if measure:
            per_step = measure_step_seconds(spec, width)
            rate = run_flops(spec, width) / steps_per_run(spec, width) / per_step
            row.update(step_s_per_run=per_step, gflops=rate / 1e9,
                       seconds=runs * steps_per_run(spec, width) * per_step + fixed / rate)
        else:
            row.update(seconds=(train + fixed) / flops_per_s)
        log(f"width {width}: {runs} runs x {row['steps_per_run']} steps at batch {row['batch']}: "
            f"{row['train_tflop']:.1f} + {row['fixed_tflop']:.1f} TFLOP, ~{row['seconds'] / 60:.1f} min")
        rows.append(row)
    return {"widths": rows, "seconds": float(sum(r["seconds"] for r in rows)),
            "tflop": float(sum(r["train_tflop"] + r["fixed_tflop"] for r in rows))}
