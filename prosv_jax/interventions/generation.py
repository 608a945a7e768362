"""Steered generation: the steering edits the prefill; decode steps are edited only by sites that steer them.

For a prompt-only SV (PrOSV) no decode hook exists at all, so every decode step runs the plain model's decode
program: the steering reaches the answer only through the keys and values cached at blocks after the site.
"""

from __future__ import annotations

import jax.numpy as jnp

from prosv_jax.inference.generate import Generation, generate
from prosv_jax.interventions.transform import Steering, SteeringParams, make_hook
from prosv_jax.models.decoder import Decoder


def steering_hooks(steering: Steering, params: SteeringParams, prompt_valid):
    """(prefill hook, decode hook or None) for left-padded prompts with validity prompt_valid [B, T]."""
    prompt_valid = jnp.asarray(prompt_valid, bool)
    prefill = make_hook(steering, params, steering.masks(prompt_valid))
    decode = None
    if steering.steers_decode:
        decode = make_hook(steering, params, steering.decode_masks(prompt_valid.shape[0]))
    return prefill, decode


def steered_generate(model: Decoder, steering: Steering, params: SteeringParams, tokens, valid, **generate_kwargs
                     ) -> Generation:
    """`generate` with the steering applied; the keyword arguments are `generate`'s."""
    steering.validate(model.cfg)
    prefill, decode = steering_hooks(steering, params, valid)
    return generate(model, tokens, valid, prefill_hook=prefill, decode_hook=decode, **generate_kwargs)
