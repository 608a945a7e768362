"""`axbench diffmean` (M7): DiffMean steerings accumulated over batches equal the one-batch direction (itself checked
against torch in test_interventions.py), saved as unit-norm SVs with the factor frozen at |d|, and swept by
`axbench generate --factor-grid` relative to that factor."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

SPLIT = "bundled:concept10"
LAYER = 1


def cli(*args) -> int:
    from prosv_jax.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def diffmean_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffmean")
    old = os.environ.get("PROSV_JAX_CACHE")
    os.environ["PROSV_JAX_CACHE"] = str(root / "cache")
    assert cli("axbench", "diffmean", "--model", "builtin", "--split", SPLIT, "--layer", LAYER, "--concepts", "0",
               "--batch-size", "40", "--out", root / "dm") == 0
    yield root
    if old is None:
        os.environ.pop("PROSV_JAX_CACHE", None)
    else:
        os.environ["PROSV_JAX_CACHE"] = old


def test_diffmean_steering_is_the_mean_difference(diffmean_out):
    from transformers import AutoTokenizer

    from prosv_jax.data import axbench
    from prosv_jax.evaluation.runs import find_runs
    from prosv_jax.interventions import SteeringVector, load_steering
    from prosv_jax.interventions.diffmean import diffmean_direction
    from prosv_jax.models.loading import load_model
    from prosv_jax.models.sources import resolve_model_dir
    from prosv_jax.training.batch import make_batch

    runs = find_runs(diffmean_out / "dm")
    assert [(r.concept_id, r.name) for r in runs] == [(0, "c0-diffmean")]
    model_dir = resolve_model_dir("builtin")
    model = load_model(model_dir, jnp.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    negatives = axbench.lang_examples(tokenizer, axbench.shared_negatives(SPLIT))
    assert len(negatives) == 216
    for run in runs:
        positives = axbench.lang_examples(tokenizer, axbench.concept_positives(SPLIT, run.concept_id))
        batch = make_batch(positives + negatives)  # all 288 texts in one batch
        expected = np.asarray(diffmean_direction(model, LAYER, batch.tokens, batch.valid,
                                                 batch.valid & ~batch.prompt_mask,
                                                 np.arange(len(positives) + len(negatives)) < len(positives)))
        steering, params, spec = load_steering(run.path, model.cfg)
        site = steering.sites[0]
        assert site.kind == SteeringVector(unit_norm=True, train_factor=False) and str(site.positions) == "all"
        assert site.layer == LAYER and spec["info"]["method"] == "diffmean"
        alpha, v = float(params[site.name]["alpha"]), np.asarray(params[site.name]["v"])
        assert alpha == pytest.approx(np.linalg.norm(expected), rel=1e-5)
        np.testing.assert_allclose(alpha * v, expected, rtol=1e-4, atol=1e-4)  # float32 sums, other order
        assert spec["info"]["negative_tokens"] == float((batch.valid & ~batch.prompt_mask)[len(positives):].sum())
    config = json.load(open(diffmean_out / "dm" / "config.json"))
    assert config["steering"]["layer"] == LAYER and config["data"]["split_dir"] == SPLIT


def test_factor_grid_sweeps_relative_to_the_steerings_factor(diffmean_out):
    from prosv_jax.evaluation.answers import DEFAULT_FACTOR_GRID
    from prosv_jax.interventions import load_steering

    out = diffmean_out / "gen"
    assert cli("axbench", "generate", "--model", "builtin", "--runs", diffmean_out / "dm", "--concepts", "0",
               "--factor-grid", "0.5,2", "--max-new-tokens", "3", "--batch-size", "20", "--out", out) == 0
    records = [json.loads(line) for line in open(out / "c0.jsonl")]
    _, params, _ = load_steering(diffmean_out / "dm" / "runs" / "c0-diffmean")
    alpha = float(params[f"layer{LAYER}"]["alpha"])
    assert len(records) == 20 and {r["mode"] for r in records} == {"sweep"}
    assert sorted({(r["factor_scale"], round(r["factor"], 3)) for r in records}) == [
        (0.5, round(0.5 * alpha, 3)), (2.0, round(2 * alpha, 3))]
    assert records[0]["method"] == "dm (factor selected)"
    assert len(DEFAULT_FACTOR_GRID) == 14 and list(DEFAULT_FACTOR_GRID) == sorted(set(DEFAULT_FACTOR_GRID))
    from prosv_jax.commands.axbench import _grid

    assert _grid("default") == list(DEFAULT_FACTOR_GRID) and _grid(None) is None
