"""Batched, optionally steered generation for the evaluation stages, with few compiled shapes.

Shapes are kept few so that XLA compiles a handful of programs for a whole benchmark: prompts are left-padded to a
power-of-two width (at least 64) and every batch is padded to `batch_size` rows (by repeating its last prompt; the
extra rows are thrown away). A batch is a function of its prompts, steering, factors, PRNG key and `batch_size` only,
so an answer is reproduced by rerunning its batch with the same settings.

Steering vectors get their factor per row (alpha of shape [B, 1, 1]), so one batch may hold several factors of a
sweep and the trained-factor and swept runs share one program.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

MIN_WIDTH = 64


def bucket_width(n: int) -> int:
    """The padded prompt width for a longest prompt of `n` tokens: the next power of two, at least MIN_WIDTH."""
    width = MIN_WIDTH
    while width < n:
        width *= 2
    return width


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    n_tokens: int  # generated tokens, the stop token excluded
    stopped: bool  # ended with a stop token (else cut at max_new_tokens)


def per_row_factors(steering, params, factors: Sequence[float]):
    """Params whose steering-vector factors are one per row (alpha [B, 1, 1]); refuses steerings without one."""
    return steering.with_factor(params, np.asarray(factors, np.float32)[:, None, None])


def trained_factor(steering, params) -> float:
    """The factor alpha of the first steering-vector site (None when there is none)."""
    from prosv_jax.interventions import SteeringVector

    for site in steering.sites:
        if isinstance(site.kind, SteeringVector):
            return float(np.asarray(params[site.name]["alpha"], np.float32))
    return None


class Generator:
    """A loaded model + tokenizer that answers lists of prompts, unsteered or with a steering.

    `model_dir`: any model source `resolve_model_dir` takes (folder, .gguf, known name, "builtin"). Prompts are
    user messages, chat-templated when `chat`.
    """

    def __init__(self, model_dir: str, dtype: str = "float32", batch_size: int = 16):
        import jax.numpy as jnp
        from transformers import AutoTokenizer

        from prosv_jax.inference.prompts import stop_token_ids
        from prosv_jax.models.loading import load_model
        from prosv_jax.models.sources import resolve_model_dir

        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = resolve_model_dir(model_dir)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.model = load_model(self.model_dir, getattr(jnp, dtype))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.stops = stop_token_ids(self.model_dir, self.tokenizer, self.model.cfg.eos_token_ids)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def load_steering(self, path: str):
        """(steering, params) of a saved steering, checked against this model."""
        from prosv_jax.interventions import load_steering

        steering, params, _ = load_steering(path, self.model.cfg)
        return steering, params

    def batches(self, n: int) -> list[range]:
        """Row ranges of the batches `generate` uses for n prompts."""
        return [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]

    def generate(self, prompts: Sequence[str], *, key, max_new_tokens: int, temperature: float = 0.0,
                 chat: bool = True, steering=None, params=None, factors: Sequence[float] | None = None
                 ) -> list[Answer]:
        """Answers to at most `batch_size` prompts, as one batch.

        With `steering`, `params` are applied; `factors` (one per prompt) replace the steering vectors' factor.
        `key` is the batch's PRNG key (unused when greedy).
        """
        import jax

        from prosv_jax.inference.prompts import decode_answers, left_pad, prompt_ids
        from prosv_jax.inference.sampling import SamplingConfig
        from prosv_jax.interventions import steered_generate
        from prosv_jax.inference.generate import generate

        prompts = list(prompts)
        n = len(prompts)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"a batch holds 1..{self.batch_size} prompts, got {n}")
        ids = [prompt_ids(self.tokenizer, p, chat) for p in prompts]
        ids += [ids[-1]] * (self.batch_size - n)
        batch = left_pad(ids, self.pad_id, bucket_width(max(len(x) for x in ids)))
        kwargs = dict(max_new_tokens=int(max_new_tokens), sampling=SamplingConfig(temperature=float(temperature)),
                      key=key, stop_ids=self.stops, pad_id=self.pad_id)
        if steering is None:
            if factors is not None:
                raise ValueError("factors need a steering")
            out = generate(self.model, batch.tokens, batch.valid, **kwargs)
        else:
            if factors is not None:
                factors = list(factors) + [factors[-1]] * (self.batch_size - n)
                params = per_row_factors(steering, params, factors)
            params = jax.tree.map(lambda p: p.astype(self.model.dtype), params)
            out = steered_generate(self.model, steering, params, batch.tokens, batch.valid, **kwargs)
        tokens, lengths = jax.device_get((out.tokens, out.lengths))
        texts = decode_answers(self.tokenizer, tokens[:n], lengths[:n], self.stops)
        answers = []
        for row, length, text in zip(tokens[:n], lengths[:n], texts):
            length = int(length)
            stopped = length > 0 and int(row[length - 1]) in self.stops
            answers.append(Answer(text, length - int(stopped), bool(stopped)))
        return answers

    def __call__(self, prompts: Sequence[str], *, max_new_tokens: int, chat: bool = True, seed: int = 0,
                 temperature: float = 0.0, steering=None, params=None, factors=None) -> list[Answer]:
        """Answers to any number of prompts, in batches; batch b uses key fold_in(key(seed), b)."""
        import jax

        out = []
        for b, rows in enumerate(self.batches(len(prompts))):
            out += self.generate([prompts[i] for i in rows], key=jax.random.fold_in(jax.random.key(seed), b),
                                 max_new_tokens=max_new_tokens, temperature=temperature, chat=chat,
                                 steering=steering, params=params,
                                 factors=None if factors is None else [factors[i] for i in rows])
        return out
