"""One compiled training step of a group of runs as a zero-argument callable: what the speed benchmarks and the
scaling sweep's cost estimate time (the Trainer's own group program and step data, without its files)."""

from __future__ import annotations

import itertools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prosv_jax.interventions.transform import Steering
from prosv_jax.models.decoder import Decoder
from prosv_jax.training.data import TrainDataset
from prosv_jax.training.optim import OptimConfig
from prosv_jax.training.step import StepConfig, TrainState
from prosv_jax.training.trainer import GroupData, TrainConfig, group_program

__all__ = ["group_step_fn"]


def group_step_fn(model: Decoder, steering: Steering, dataset: TrainDataset, batches: Sequence[np.ndarray],
                  prefix_cache: str = "device", *, optim: OptimConfig | None = None,
                  step_config: StepConfig | None = None, runs: int = 1) -> tuple[Callable[[], float], float]:
    """(step, setup_s): `step()` does one training step of `runs` vmapped runs, cycling through `batches` (arrays
    of example indices into `dataset`), and returns run 0's loss; `step.xla_flops()` is XLA's count of one step's
    FLOPs; setup_s is the seconds spent preparing the step data, the prefix cache included."""
    optim = optim or OptimConfig(factor_lr=1.0, direction_lr=0.04)
    step_config = step_config or StepConfig()
    graphdef, model_state = nnx.split(model)
    tx, group_step = group_program(graphdef, model.cfg, steering, step_config, optim, 10_000)
    params = [steering.init_params(jax.random.key(k), model.cfg, model.dtype) for k in range(runs)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *params)  # every leaf [runs, ...]
    state = TrainState(stacked, jax.vmap(tx.init)(stacked), jnp.zeros(runs, jnp.int32), jnp.ones(runs, bool))
    lrs = {g: jnp.full(runs, v, jnp.float32) for g, v in optim.learning_rates(model.cfg.hidden_size).items()}
    state, lrs = jax.device_put((state, lrs), jax.devices()[0])
    t0 = time.perf_counter()
    data = GroupData(model, steering, dataset, TrainConfig(prefix_cache=prefix_cache), step_config)
    step_data = []
    for batch in batches:
        indices = np.tile(np.asarray(batch), (runs, 1))  # [runs, B]: every run steps on the same examples
        step_data.append(data.gather(indices, np.ones_like(indices, bool)))
    jax.block_until_ready(step_data)
    setup = time.perf_counter() - t0
    holder, turn = {"state": state}, itertools.cycle(step_data)

    def step():
        holder["state"], metrics = group_step(model_state, holder["state"], lrs, next(turn))
        return float(metrics["loss"][0])

    def xla_flops() -> float:
        """FLOPs of one step as XLA's cost analysis of the compiled program counts them."""
        analysis = group_step.lower(model_state, holder["state"], lrs, step_data[0]).compile().cost_analysis()
        return float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"])

    step.xla_flops = xla_flops
    return step, setup
