"""Initialisation sizes, width-scaling rules, schedules and parameter groups of the recipe (method.md section 2)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prosv_jax.interventions import LoReFT, Site, Steering, SteeringVector
from prosv_jax.training.optim import OptimConfig, make_optimizer, param_labels, schedule_fraction, schedule_steps


@pytest.mark.parametrize("n", [64, 1024, 4096])
def test_steering_vector_init_follows_the_width_rules(n):
    uniform = SteeringVector(beta=3.0, c=8.0).init_params(jax.random.key(0), n)
    assert float(uniform["alpha"]) == pytest.approx(3.0 * math.sqrt(n))
    bound = 8.0 / math.sqrt(n)
    v = np.asarray(uniform["v"])
    assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound  # fills U(-c/sqrt(n), c/sqrt(n))
    assert np.std(v) == pytest.approx(bound / math.sqrt(3), rel=0.15)
    normal = SteeringVector(init="normal", lam=2.0).init_params(jax.random.key(1), n)
    assert np.std(np.asarray(normal["v"])) == pytest.approx(math.sqrt(2.0 / n), rel=0.15)


def test_width_scaling_turns_base_rates_into_the_predicted_exponents():
    config = OptimConfig(factor_lr=0.5, direction_lr=2.0, width_scaling=True)
    for n in (256, 1024):
        lrs = config.learning_rates(n)
        assert lrs["factor"] == pytest.approx(0.5 * n ** 0.5)
        assert lrs["direction"] == pytest.approx(2.0 * n ** -0.5)
        assert lrs["factor"] * lrs["direction"] == pytest.approx(1.0)  # eta_v * eta_alpha = Theta(1)
    custom = OptimConfig(factor_lr=1.0, width_scaling=True, factor_lr_exponent=1.0).learning_rates(100)
    assert custom["factor"] == pytest.approx(100.0)
    assert OptimConfig(factor_lr=0.5).learning_rates(1024)["factor"] == 0.5  # off by default


def test_schedules():
    linear = schedule_fraction(OptimConfig(), 10)
    assert [float(linear(c)) for c in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])  # no warm-up, decay to 0
    cosine = schedule_fraction(OptimConfig(schedule="cosine"), 10)
    assert float(cosine(5)) == pytest.approx(0.5)
    warm = schedule_fraction(OptimConfig(warmup_steps=4), 12)
    assert [float(warm(c)) for c in (0, 2, 4, 8, 12)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert float(schedule_fraction(OptimConfig(schedule="constant"), 10)(7)) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="exp")
    # the horizon: the reference counts micro-steps (rate ends near 1 - 1/accum), "updates" decays to 0
    assert schedule_steps(OptimConfig(grad_accum=2), 72) == 72
    assert schedule_steps(OptimConfig(grad_accum=2, decay_over="updates"), 72) == 36
    assert schedule_steps(OptimConfig(grad_accum=3, decay_over="updates"), 10) == 4
    assert schedule_steps(OptimConfig(decay_over="updates"), 10) == 10
    with pytest.raises(ValueError, match="decay_over"):
        OptimConfig(decay_over="epochs")
    with pytest.raises(ValueError, match="clip_groups"):
        OptimConfig(clip_groups=("alpha",))


def test_parameter_groups_and_v_only_clipping():
    steering = Steering((Site(0, SteeringVector(), "all", "sv"), Site(1, SteeringVector(train_factor=False),
                                                                       "f2", "fixed"), Site(2, LoReFT(2), "all", "r")))
    params = steering.init_params(jax.random.key(0), _Cfg())
    labels = param_labels(steering, params)
    assert labels["sv"] == {"alpha": "factor", "v": "direction"}
    assert labels["fixed"] == {"alpha": "frozen", "v": "direction"}
    assert set(labels["r"].values()) == {"other"}
    # With plain gradient steps the update is the (clipped) gradient: the direction group is clipped
    # to global norm 1, alpha is not.
    tx = make_optimizer(OptimConfig(schedule="constant", optimizer="sgd"), labels, 10)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    direction = jnp.concatenate([updates["sv"]["v"], updates["fixed"]["v"]])  # one group, one global norm
    assert float(jnp.linalg.norm(direction)) == pytest.approx(1.0, rel=1e-5)
    assert float(updates["sv"]["alpha"]) == pytest.approx(100.0)
    assert float(updates["fixed"]["alpha"]) == 0.0  # a frozen factor never moves
    assert np.allclose(np.asarray(updates["r"]["W"]), 100.0)  # other groups are not clipped by default


class _Cfg:
    """The few ModelConfig fields init_params reads."""

    hidden_size = 16
    num_layers = 4
