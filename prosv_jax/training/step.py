"""The jitted train step: gradients w.r.t. the steering params only, per-group Adam, divergence guard.

With frozen-prefix caching the step starts from the cached residuals after block L (the first edited block) and
runs blocks L+1..N only: the steering never changes blocks 0..L, so the result is the same at a fraction of the
cost. The step is written for one run; `vmap` over (state, learning rates, data) trains a grid of runs at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from prosv_jax.interventions.kinds import SteeringVector
from prosv_jax.interventions.transform import Steering, SteeringParams, response_hooks
from prosv_jax.models.decoder import Decoder, token_positions
from prosv_jax.training.losses import example_sums, lang_loss, simpo_loss, simpo_loss_of_sums, token_logprobs
from prosv_jax.training.optim import group_norms, scale_by_group_lr

OBJECTIVES = ("lang", "simpo")


class TrainState(NamedTuple):
    params: SteeringParams
    opt_state: Any
    step: jax.Array  # int32: micro-steps taken
    alive: jax.Array  # bool: False once the run diverged (it is then frozen)


class StepData(NamedTuple):
    """One batch on device. Rows are positives, or P positives then their P negatives for SimPO.

    Packed rows (`prosv_jax.training.packing`) hold several examples each: `segments` tells them apart and
    `target_example` names the example of each response slot; `reference` is then per example [E], E = B unpacked
    (positives, then their negatives for SimPO).
    """

    tokens: jax.Array  # [B, T]
    valid: jax.Array  # [B, T]
    prompt_mask: jax.Array  # [B, T]
    target_index: jax.Array  # [B, R]
    target_ids: jax.Array  # [B, R]
    target_mask: jax.Array  # [B, R]
    reference: jax.Array  # [B] summed response log-probs of the unsteered model (SimPO), else zeros
    prefix: jax.Array | None = None  # [B, T, d] cached residuals after the first edited block, or None
    segments: jax.Array | None = None  # [B, T] int32 packed rows' example ids (0: padding), or None (unpacked)
    target_example: jax.Array | None = None  # [B, R] int32 example index of each response slot (packed rows)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    objective: str = "lang"
    vocab_chunk: int = 8192
    blowup_loss: float = 1e4  # a finite loss above this also marks the run as diverged
    blowup_edit_norm: float = 1e6  # so does a steering vector whose |alpha * v| exceeds this (feature blow-up)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")


def response_logprobs(model: Decoder, steering: Steering, params: SteeringParams, data: StepData,
                      vocab_chunk: int = 8192) -> jax.Array:
    """Steered log-probs [B, R] of the response tokens, from the cached prefix when `data.prefix` is given.

    The last block runs on the rows predicting response tokens only: the loss reads nothing else of it.
    """
    hook, rows_hook = response_hooks(steering, params, data.prompt_mask, data.valid, data.target_index,
                                     data.segments)
    positions = token_positions(data.valid, data.segments)
    if data.prefix is None:
        hidden, start = model.embed(data.tokens), 0
    else:
        first = steering.first_layer
        hidden, start = hook(first, data.prefix.astype(model.dtype)), first + 1
    hidden, _, _ = model.run_blocks(hidden, positions, data.valid, hook=hook, start=start, rows=data.target_index,
                                    rows_hook=rows_hook, segments=data.segments)  # [B, R, d]
    return token_logprobs(model, hidden, data.target_ids, vocab_chunk)


def prefix_residuals(model: Decoder, steering: Steering, tokens, valid, segments=None) -> jax.Array:
    """Residuals [B, T, d] after the first edited block, which no steering of `steering` can change."""
    hidden, _, _ = model.run_blocks(model.embed(tokens), token_positions(valid, segments), valid,
                                    stop=steering.first_layer + 1, segments=segments)
    return hidden


def reference_logprob_sums(model: Decoder, data: StepData, vocab_chunk: int = 8192) -> jax.Array:
    """Summed response log-probs [B] under the unsteered model (SimPO's p_ref); unpacked rows only."""
    hidden, _, _ = model.run_blocks(model.embed(data.tokens), token_positions(data.valid), data.valid,
                                    rows=data.target_index)  # [B, R, d]
    logprobs = token_logprobs(model, hidden, data.target_ids, vocab_chunk)
    return (logprobs * data.target_mask).sum(-1)


def loss_fn(params: SteeringParams, model: Decoder, steering: Steering, data: StepData, config: StepConfig):
    logprobs = response_logprobs(model, steering, params, data, config.vocab_chunk)
    if config.objective == "lang":
        return lang_loss(logprobs, data.target_mask)
    if data.target_example is None:
        return simpo_loss(logprobs, data.target_mask, data.reference)
    sums, lengths = example_sums(logprobs, data.target_mask, data.target_example, data.reference.shape[0])
    return simpo_loss_of_sums(sums, lengths, data.reference)


def _renormalise(steering: Steering, params: SteeringParams) -> SteeringParams:
    """Unit-norm steering vectors get v / |v| after each update."""
    out = dict(params)
    for site in steering.sites:
        if isinstance(site.kind, SteeringVector) and site.kind.unit_norm:
            v = params[site.name]["v"]
            out[site.name] = {**params[site.name], "v": v / jnp.linalg.norm(v.astype(jnp.float32)).astype(v.dtype)}
    return out


def _largest_edit_norm(steering: Steering, params: SteeringParams) -> jax.Array:
    """max over steering-vector sites of |alpha| * |v| (0 when there is none)."""
    norms = [jnp.abs(params[s.name]["alpha"].astype(jnp.float32)) * jnp.linalg.norm(
        s.kind.direction(params[s.name]).astype(jnp.float32)) for s in steering.sites
        if isinstance(s.kind, SteeringVector)]
    return jnp.max(jnp.stack(norms)) if norms else jnp.float32(0)


def make_train_step(steering: Steering, config: StepConfig, tx: optax.GradientTransformation, labels: dict,
                    lr_fraction: Callable, grad_accum: int = 1) -> Callable:
    """step(model, state, lrs, data) -> (state, metrics) for ONE run; lrs: {group: peak learning rate}."""

    def step(model: Decoder, state: TrainState, lrs: dict, data: StepData):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, model, steering, data, config)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = scale_by_group_lr(updates, labels, lrs)
        params = _renormalise(steering, optax.apply_updates(state.params, updates))
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
        alive = state.alive & jnp.isfinite(loss) & (loss < config.blowup_loss) & finite & (
            _largest_edit_norm(steering, params) < config.blowup_edit_norm)
        keep = lambda new, old: jnp.where(alive, new, old)  # noqa: E731  a diverged run stays frozen
        fraction = lr_fraction(state.step // grad_accum)
        metrics = {"loss": loss, "alive": alive,
                   **{f"grad_norm/{g}": n for g, n in group_norms(grads, labels).items()},
                   **{f"lr/{g}": lrs[g] * fraction for g in lrs}}
        for site in steering.sites:
            if isinstance(site.kind, SteeringVector):
                metrics[f"alpha/{site.name}"] = state.params[site.name]["alpha"].astype(jnp.float32)
                metrics[f"v_norm/{site.name}"] = jnp.linalg.norm(state.params[site.name]["v"].astype(jnp.float32))
        new_state = TrainState(jax.tree.map(keep, params, state.params),
                               jax.tree.map(keep, opt_state, state.opt_state), state.step + 1, alive)
        return new_state, metrics

    return step
