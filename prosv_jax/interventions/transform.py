"""The steering transform: interventions at hook sites, as a pure function of (model, params, batch).

A `Steering` is a static, hashable description (which intervention, at which block, on which positions); its
parameters are a separate small pytree {site name: params}. Everything here composes with `jit`, `grad` (w.r.t.
the steering params only), `vmap` (a leading axis on the params: many SVs over one batch) and sharded meshes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from prosv_jax.interventions.kinds import SteeringVector
from prosv_jax.interventions.positions import PositionSpec
from prosv_jax.models.config import ModelConfig
from prosv_jax.models.decoder import Decoder, ForwardOutput, positions_from_valid, take_rows

SteeringParams = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Site:
    """One intervention: `kind` applied to the residual after block `layer` at `positions`."""

    layer: int
    kind: Any
    positions: PositionSpec
    name: str = ""

    def __post_init__(self):
        object.__setattr__(self, "positions", PositionSpec.parse(self.positions))
        if not self.name:
            object.__setattr__(self, "name", f"layer{self.layer}")


@dataclasses.dataclass(frozen=True)
class Steering:
    """Several interventions, possibly at several layers; applied in order within a layer."""

    sites: tuple[Site, ...]

    def __post_init__(self):
        object.__setattr__(self, "sites", tuple(self.sites))
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")

    @classmethod
    def single(cls, layer: int, kind: Any = SteeringVector(), positions: str = "f2+l2") -> "Steering":
        return cls((Site(layer, kind, positions),))

    def validate(self, cfg: ModelConfig) -> None:
        for site in self.sites:
            if not 0 <= site.layer < cfg.num_layers:
                raise ValueError(f"site {site.name!r}: layer {site.layer} is out of range; the model has blocks "
                                 f"0..{cfg.num_layers - 1}")

    def init_params(self, key: jax.Array, cfg: ModelConfig, dtype=jnp.float32) -> SteeringParams:
        self.validate(cfg)
        keys = jax.random.split(key, len(self.sites))
        return {s.name: s.kind.init_params(k, cfg.hidden_size, dtype) for s, k in zip(self.sites, keys)}

    @property
    def steers_decode(self) -> bool:
        return any(s.positions.steers_decode for s in self.sites)

    @property
    def first_layer(self) -> int:
        """The earliest edited block: blocks up to and including it are untouched by the steering."""
        return min(s.layer for s in self.sites)

    def masks(self, prompt_mask: jax.Array, valid: jax.Array | None = None,
              segments: jax.Array | None = None) -> dict[str, jax.Array]:
        """Site name -> edited-token mask [B, T] (per example of a packed row when `segments` is given)."""
        return {s.name: s.positions.mask(prompt_mask, valid, segments) for s in self.sites}

    def decode_masks(self, batch: int) -> dict[str, jax.Array]:
        """Masks for one decode step [B, 1]: only sites that steer generated tokens edit them."""
        return {s.name: jnp.full((batch, 1), s.positions.steers_decode) for s in self.sites}

    def with_factor(self, params: SteeringParams, factor) -> SteeringParams:
        """Params with every steering vector's alpha replaced by `factor` (fixed-factor use, factor sweeps).

        `factor` is a scalar, or any array that broadcasts against the edit (e.g. [B, 1, 1]: one factor per row).
        """
        out = dict(params)
        changed = False
        for site in self.sites:
            if isinstance(site.kind, SteeringVector):
                out[site.name] = {**params[site.name], "alpha": jnp.asarray(factor, params[site.name]["alpha"].dtype)}
                changed = True
        if not changed:
            raise ValueError("this steering has no steering vector whose factor could be set")
        return out


@functools.lru_cache(maxsize=None)
def _hook_function(steering: Steering) -> Callable:
    """One function object per (equal) steering, so jit's cache recognises the hook across calls."""
    by_layer: dict[int, list[Site]] = {}
    for site in steering.sites:
        by_layer.setdefault(site.layer, []).append(site)

    def hook(params, masks, layer, hidden):
        for site in by_layer.get(layer, ()):
            hidden = site.kind.apply(params[site.name], hidden, masks[site.name])
        return hidden

    hook.layers = frozenset(by_layer)  # the blocks it edits: the decoder may scan over the others
    return hook


def make_hook(steering: Steering, params: SteeringParams, masks: dict[str, jax.Array]) -> jax.tree_util.Partial:
    """A model hook carrying params and masks as traced data."""
    return jax.tree_util.Partial(_hook_function(steering), params, masks)


def response_hooks(steering: Steering, params: SteeringParams, prompt_mask: jax.Array, valid: jax.Array,
                   rows: jax.Array, segments: jax.Array | None = None
                   ) -> tuple[jax.tree_util.Partial, jax.tree_util.Partial]:
    """(hook, rows hook) of a teacher-forced pass over [B, T] tokens (packed rows: `segments`) that keeps the
    positions rows [B, R] only: `Decoder.run_blocks(hook=, rows=, rows_hook=)`; the rows hook makes the same edits
    at those rows."""
    masks = steering.masks(prompt_mask, valid, segments)  # site -> [B, T]
    rows_masks = {name: take_rows(mask, rows) for name, mask in masks.items()}  # site -> [B, R]
    return make_hook(steering, params, masks), make_hook(steering, params, rows_masks)


def steered_forward(steering: Steering) -> Callable[..., ForwardOutput]:
    """The steered forward pass `f(model, params, tokens, valid, prompt_mask, **forward_kwargs) -> ForwardOutput`.

    tokens, valid, prompt_mask: [B, T]; valid marks real tokens, prompt_mask the prompt's real tokens (the rest of
    the valid tokens being the response). Positions follow the real tokens, so padding never shifts them.
    """

    def forward(model: Decoder, params: SteeringParams, tokens, valid, prompt_mask, **forward_kwargs):
        steering.validate(model.cfg)
        hook = make_hook(steering, params, steering.masks(prompt_mask, valid))
        return model(tokens, positions_from_valid(valid), valid, hook=hook, **forward_kwargs)

    return forward
