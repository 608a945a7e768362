"""Stage `axbench diffmean`: one DiffMean steering per concept, the optimisation-free baseline of method.md section 1.

For concept c, d = (mean block-L residual over the response tokens of c's positive training texts) minus (the same
mean over the split's shared negatives), the texts chat-templated as in training and their responses whole. The
steering is a unit-norm steering vector v = d / |d| with its factor frozen at alpha = |d|: at factor 1 the edit is the
mean difference itself. Output, laid out like a train folder so every later stage reads it:

- `runs/c<id>-diffmean/` (steering.json + params.safetensors; info: layer, positions, |d|, token counts);
- `config.json`: model name, steering layer and positions, data.split_dir (for `axbench generate`'s defaults).

DiffMean has no trained factor, so it is evaluated with a factor sweep and factor selection:
`prosv-jax axbench generate --runs OUT --factor-grid` (the 14 multiples of alpha = |d| in `DEFAULT_FACTOR_GRID`).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

RUN_SUFFIX = "diffmean"


def _sums(model, layer: int, examples, batch_size: int) -> tuple[np.ndarray, float]:
    """(sum of the block-`layer` residuals over every response token, number of those tokens), batch by batch."""
    import jax

    from prosv_jax.interventions.diffmean import masked_sum
    from prosv_jax.training.batch import make_batch

    step = jax.jit(masked_sum, static_argnums=1)
    round_up = lambda n: -(-n // 16) * 16  # noqa: E731  one shape for every batch: one compile (two with the last)
    shape = dict(length=round_up(max(len(p) + len(r) for p, r in examples)),
                 response_slots=round_up(max(len(r) for _, r in examples)))
    total, count = np.zeros(model.cfg.hidden_size, np.float64), 0.0
    for start in range(0, len(examples), batch_size):
        batch = make_batch(examples[start:start + batch_size], **shape)
        s, n = step(model, layer, batch.tokens, batch.valid, batch.valid & ~batch.prompt_mask)
        total += np.asarray(s, np.float64)
        count += float(n)
    return total, count


def diffmean_params(positive: tuple[np.ndarray, float], negative: tuple[np.ndarray, float]) -> dict:
    """{"alpha": |d|, "v": d / |d|} from (sum, count) of the positive and negative residuals."""
    d = positive[0] / positive[1] - negative[0] / negative[1]
    norm = float(np.linalg.norm(d))
    if not norm > 0:
        raise ValueError("the positive and negative mean residuals are equal: DiffMean has no direction")
    return {"alpha": np.float32(norm), "v": (d / norm).astype(np.float32)}


def run_diffmean(model: str, split: str, layer: int, out: str, concepts: Sequence[int] | None = None,
                 positions: str = "all", batch_size: int = 16, dtype: str = "float32",
                 log: Callable[[str], None] = print) -> list[str]:
    """Writes a DiffMean steering for each concept of `split` (or `concepts`) into `out`; returns their folders."""
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from prosv_jax.data import axbench
    from prosv_jax.files import write_json
    from prosv_jax.interventions import Steering, SteeringVector, save_steering
    from prosv_jax.interventions.positions import PositionSpec
    from prosv_jax.models.loading import load_model
    from prosv_jax.models.sources import resolve_model_dir

    from .runs import check_concepts, concept_table

    PositionSpec.parse(positions)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    table = concept_table(split)
    ids = sorted({int(c) for c in concepts}) if concepts else sorted(table)
    check_concepts(ids, table, split)
    model_dir = resolve_model_dir(model)
    decoder = load_model(model_dir, jnp.dtype(dtype))
    if not 0 <= layer < decoder.cfg.num_layers:
        raise ValueError(f"--layer {layer} is out of range: {model_dir} has blocks 0..{decoder.cfg.num_layers - 1}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    steering = Steering.single(layer, SteeringVector(unit_norm=True, train_factor=False), positions)
    negative = _sums(decoder, layer, axbench.lang_examples(tokenizer, axbench.shared_negatives(split)), batch_size)
    written = []
    for cid in ids:
        positive = _sums(decoder, layer, axbench.lang_examples(tokenizer, axbench.concept_positives(split, cid)),
                         batch_size)
        params = diffmean_params(positive, negative)
        folder = os.path.join(out, "runs", f"c{cid}-{RUN_SUFFIX}")
        info = {"run": {"name": f"c{cid}-{RUN_SUFFIX}", "dataset": f"c{cid}"}, "method": "diffmean",
                "layer": layer, "positions": positions, "mean_difference_norm": float(params["alpha"]),
                "positive_tokens": positive[1], "negative_tokens": negative[1], "split": split}
        save_steering(folder, steering, {steering.sites[0].name: params}, decoder.cfg, info=info)
        written.append(folder)
        log(f"concept {cid}: |d| = {float(params['alpha']):.4g} -> {folder}")
    write_json(os.path.join(out, "config.json"), {
        "model": {"path": model, "name": os.path.basename(os.path.normpath(model_dir))},
        "steering": {"layer": layer, "positions": positions}, "data": {"split_dir": split}, "method": "diffmean"})
    return written
