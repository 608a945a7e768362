"""Steering as a functional transform: position specs, intervention types, hooks, steered generation, I/O."""

from prosv_jax.interventions.diffmean import diffmean_direction
from prosv_jax.interventions.generation import steered_generate, steering_hooks
from prosv_jax.interventions.io import load_steering, save_steering
from prosv_jax.interventions.kinds import LoReFT, SteeringVector
from prosv_jax.interventions.positions import PositionSpec
from prosv_jax.interventions.transform import Site, Steering, make_hook, steered_forward

__all__ = ["LoReFT", "PositionSpec", "Site", "Steering", "SteeringVector", "diffmean_direction", "load_steering",
           "make_hook", "save_steering", "steered_forward", "steered_generate", "steering_hooks"]
