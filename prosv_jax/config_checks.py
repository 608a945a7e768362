"""Up-front checks of a training config's values: every bad value is a one-line error before any model or data loads.

Overrides parse to any Python literal (`--config.train.epochs=None` gives None), so each field's type and range are
checked here, by a table, rather than deep inside training where a bad value ends in a traceback or, worse, trains
on silently (a negative `data.max_response` used to cut the end off every response).
"""

from __future__ import annotations

import math
from typing import Any, Callable


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number(test: Callable[[float], bool], what: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_number(v) and test(v)), what


def _choice(*options: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), "one of " + ", ".join(repr(o) for o in options)


def _list_of(check: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    test, what = check
    return (lambda v: isinstance(v, (list, tuple)) and all(test(x) for x in v)), f"a list of {what.split(' ', 1)[1]}"


_BOOL = ((lambda v: isinstance(v, bool)), "true or false")
_POSITIVE = _number(lambda v: v > 0, "a finite number > 0")
_NONNEGATIVE = _number(lambda v: v >= 0, "a finite number >= 0")

# dotted field -> (test, what a good value is). Fields a config does not have are skipped.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.dtype": _choice("float32", "bfloat16"),
    "model.scan_min_blocks": _int_at_least(0),
    "steering.layer": _int_at_least(0),
    "steering.kind": _choice("steering_vector", "loreft"),
    "steering.beta": _number(lambda v: True, "a finite number"),
    "steering.c": _POSITIVE,
    "steering.lam": _POSITIVE,
    "steering.init": _choice("uniform", "normal"),
    "steering.unit_norm": _BOOL,
    "steering.train_factor": _BOOL,
    "steering.rank": _int_at_least(1),
    "data.concept_ids": _list_of(_int_at_least(0)),
    "data.max_response": _int_at_least(0),
    "data.max_examples": _int_at_least(0),
    "data.simpo_max_response": _int_at_least(0),
    "data.chat": _BOOL,
    "objective": _choice("lang", "simpo"),
    "vocab_chunk": _int_at_least(1),
    "optim.factor_lr": _NONNEGATIVE,
    "optim.direction_lr": _NONNEGATIVE,
    "optim.other_lr": _NONNEGATIVE,
    "optim.b1": _number(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.b2": _number(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.eps": _POSITIVE,
    "optim.clip_norm": ((lambda v: v is None or (_is_number(v) and v > 0)), "None (no clipping) or a number > 0"),
    "optim.schedule": _choice("linear", "constant", "cosine"),
    "optim.warmup_steps": _int_at_least(0),
    "optim.grad_accum": _int_at_least(1),
    "optim.decay_over": _choice("micro_steps", "updates"),
    "optim.width_scaling": _BOOL,
    "optim.factor_lr_exponent": _number(lambda v: True, "a finite number"),
    "optim.direction_lr_exponent": _number(lambda v: True, "a finite number"),
    "train.epochs": _int_at_least(1),
    "train.batch_size": _int_at_least(1),
    "train.prefix_cache": _choice("device", "host", "off"),
    "train.runs_per_program": _int_at_least(1),
    "train.runs_per_chunk": _int_at_least(0),
    "train.param_dtype": _choice("float32", "bfloat16"),
    "train.checkpoint_every": _int_at_least(-1),
    "train.blowup_loss": _POSITIVE,
    "train.progress": _BOOL,
    "train.pack_length": _int_at_least(0),
    "grid.seeds": _list_of(_int_at_least(0)),
    "grid.factor_lrs": _list_of(_NONNEGATIVE),
    "grid.direction_lrs": _list_of(_NONNEGATIVE),
    "grid.betas": _list_of(_number(lambda v: True, "finite numbers")),
    "grid.cs": _list_of(_POSITIVE),
    "grid.lams": _list_of(_POSITIVE),
}


def _get(config, dotted: str):
    node = config
    for key in dotted.split("."):
        if key not in node:
            return _MISSING
        node = node[key]
    return node


_MISSING = object()


def check_values(config) -> None:
    """Raises ValueError naming the first field whose value has the wrong type or range, and what it should be."""
    for dotted, (test, what) in FIELDS.items():
        value = _get(config, dotted)
        if value is _MISSING:
            continue
        if not test(value):
            raise ValueError(f"config field {dotted!r} is {value!r}: it must be {what} "
                             f"(set it with --config.{dotted}=VALUE)")


def check_layer(config, num_layers: int, model: str) -> None:
    """steering.layer must name a block of the model (0..num_layers-1)."""
    layer = config.steering.layer
    if not 0 <= layer < num_layers:
        raise ValueError(f"config field 'steering.layer' is {layer}, but {model} has blocks 0..{num_layers - 1}: "
                         f"set --config.steering.layer to one of them")
