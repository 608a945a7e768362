"""Position specs: which tokens an intervention edits, turned into per-example masks (data, not shapes).

Grammar: `all` (FSSV: every prompt token, every response or generated token), `all_prompt`, `f{N}` (first N prompt
tokens), `l{N}` (last N), `f{N}+l{M}` (both; PrOSV default `f2+l2`). Counts are taken over the real tokens of the
chat-templated prompt (BOS included), so left or right padding never shifts them; overlapping first/last
positions are edited once.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from prosv_jax.models.segments import within_segment

GRAMMAR = "all | all_prompt | f{N} | l{N} | f{N}+l{M}   (N, M >= 0 integers; e.g. f2+l2)"
_FIRST_LAST = re.compile(r"^(?:f(?P<f>\d+)(?:\+l(?P<l1>\d+))?|l(?P<l2>\d+))$")


@dataclasses.dataclass(frozen=True)
class PositionSpec:
    """`first`/`last` count prompt tokens from each end; both None means the whole scope."""

    scope: str  # "all": prompt and response/generated tokens; "prompt": prompt tokens only
    first: int | None = None
    last: int | None = None

    @classmethod
    def parse(cls, text: "str | PositionSpec") -> "PositionSpec":
        if isinstance(text, PositionSpec):
            return text
        spec = str(text).strip().replace(" ", "")
        if spec == "all":
            return cls("all")
        if spec == "all_prompt":
            return cls("prompt")
        match = _FIRST_LAST.match(spec)
        if re.search(r"-\d", spec):
            raise ValueError(f"position spec {text!r}: counts must be >= 0; grammar: {GRAMMAR}")
        if not match:
            raise ValueError(f"position spec {text!r} does not parse; grammar: {GRAMMAR}")
        return cls("prompt", int(match["f"] or 0), int(match["l1"] or match["l2"] or 0))

    def __str__(self) -> str:
        if self.scope == "all":
            return "all"
        if self.first is None:
            return "all_prompt"
        parts = ([f"f{self.first}"] if self.first else []) + ([f"l{self.last}"] if self.last else [])
        return "+".join(parts) or "f0"

    @property
    def steers_decode(self) -> bool:
        """Whether generated tokens are edited too (FSSV); prompt-only specs leave decode steps untouched."""
        return self.scope == "all"

    def mask(self, prompt_mask: jax.Array, valid: jax.Array | None = None,
             segments: jax.Array | None = None) -> jax.Array:
        """Bool mask [B, T] of edited tokens.

        prompt_mask [B, T] marks the real prompt tokens; valid [B, T] marks every real token (prompt and
        response); it defaults to prompt_mask (a prefill over prompts alone). segments [B, T]: packed rows, whose
        first and last prompt tokens are counted per example (`prosv_jax.models.segments`).
        """
        prompt_mask = jnp.asarray(prompt_mask, bool)
        valid = prompt_mask if valid is None else jnp.asarray(valid, bool)
        if self.scope == "all":
            return valid
        if self.first is None:
            return prompt_mask
        if segments is None:
            rank = jnp.cumsum(prompt_mask.astype(jnp.int32), axis=-1)  # [B, T] 1-based rank of each prompt token
            total = rank[:, -1:]  # [B, 1] prompt length
        else:
            rank, total = within_segment(prompt_mask.astype(jnp.int32), segments)  # [B, T] each, per example
        in_first = rank <= self.first
        in_last = rank > total - self.last
        return prompt_mask & (in_first | in_last)
