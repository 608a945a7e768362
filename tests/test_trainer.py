"""The many-runs trainer: a vmapped run equals the run alone, divergence is contained, one compile per grid."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import hf_models
from prosv_jax.interventions import Steering, SteeringVector, load_steering
from prosv_jax.models.loading import load_model
from prosv_jax.training import trainer as trainer_lib
from prosv_jax.training.data import TrainDataset, batch_indices
from prosv_jax.training.optim import OptimConfig
from prosv_jax.training.step import StepConfig
from prosv_jax.training.trainer import RunSpec, TrainConfig, Trainer

STEERING = Steering.single(1, SteeringVector(beta=1.0, c=2.0), "f2+l2")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    hf_models.build("llama_gqa_untied", directory, with_tokenizer=False)
    return load_model(directory)


def examples(seed: int, n: int = 10):
    rng = np.random.RandomState(seed)
    return [(list(rng.randint(5, 300, rng.randint(3, 8))), list(rng.randint(5, 300, rng.randint(4, 12))))
            for _ in range(n)]


def train(model, out, runs, *, runs_per_program, datasets=None, objective="lang", prefix_cache="device",
          runs_per_chunk=0, **config):
    datasets = datasets or {"default": TrainDataset.from_examples(examples(0))}
    trainer = Trainer(model, STEERING, datasets, str(out), OptimConfig(factor_lr=0.3, direction_lr=0.05),
                      StepConfig(objective=objective),
                      TrainConfig(epochs=2, batch_size=4, runs_per_program=runs_per_program,
                                  runs_per_chunk=runs_per_chunk, prefix_cache=prefix_cache, progress=False, **config))
    return trainer.train(runs)


def final_params(out, name):
    _, params, _ = load_steering(out / "runs" / name)
    return params["layer1"]


RUNS = [RunSpec("a", seed=1), RunSpec("b", seed=2, lrs=(("factor", 1.0),), init=(("beta", 2.0),)),
        RunSpec("c", seed=3, lrs=(("direction", 0.01),))]


@pytest.mark.parametrize("runs_per_chunk", [0, 2, 3])  # auto (1 run at a time on CPU), 2 + a remainder, all vmapped
def test_a_run_in_a_vmapped_grid_equals_the_run_alone(model, tmp_path, runs_per_chunk):
    train(model, tmp_path / "grid", RUNS, runs_per_program=3, runs_per_chunk=runs_per_chunk)
    for run in RUNS:
        train(model, tmp_path / run.name, [run], runs_per_program=1)
        grid, alone = final_params(tmp_path / "grid", run.name), final_params(tmp_path / run.name, run.name)
        for name in ("alpha", "v"):
            np.testing.assert_allclose(np.asarray(grid[name]), np.asarray(alone[name]), rtol=1e-5, atol=1e-6)
    a, b = final_params(tmp_path / "grid", "a"), final_params(tmp_path / "grid", "b")
    assert not np.allclose(np.asarray(a["v"]), np.asarray(b["v"]))


@pytest.mark.parametrize("every, steps", [(-1, [3, 6]), (0, [6]), (2, [4, 6])])
def test_checkpoints_once_per_epoch_by_default(model, tmp_path, every, steps):
    """M11: 10 examples in batches of 4 = 3 steps per epoch, 2 epochs: by default a checkpoint after each epoch (a
    kill loses at most one); 0 = at the end only; N = every N steps (2 kept)."""
    assert TrainConfig().checkpoint_every == -1
    train(model, tmp_path, RUNS[:1], runs_per_program=1, checkpoint_every=every)
    saved = tmp_path / "groups" / "group-0000" / "checkpoints"
    assert sorted(int(p.name) for p in saved.iterdir() if p.name.isdigit()) == steps


def test_a_diverging_run_is_flagged_and_frozen_while_the_others_finish_unchanged(model, tmp_path):
    wild = RunSpec("wild", seed=4, lrs=(("factor", 1e30),))  # |alpha v| blows up past the threshold
    broken = RunSpec("broken", seed=5, lrs=(("direction", float("nan")),))  # NaN parameters
    summaries = train(model, tmp_path / "with", RUNS[:2] + [wild, broken], runs_per_program=4)
    train(model, tmp_path / "without", RUNS[:2], runs_per_program=2)
    assert summaries["wild"]["diverged"] and summaries["broken"]["diverged"] and not summaries["a"]["diverged"]
    for run in RUNS[:2]:
        np.testing.assert_allclose(np.asarray(final_params(tmp_path / "with", run.name)["v"]),
                                   np.asarray(final_params(tmp_path / "without", run.name)["v"]), atol=1e-6)
    for name in ("wild", "broken"):  # frozen before the bad update
        assert all(np.isfinite(np.asarray(x)).all() for x in final_params(tmp_path / "with", name).values())
    records = [json.loads(line) for line in open(tmp_path / "with" / "groups" / "group-0000" / "metrics.jsonl")]
    alive = [r["alive"] for r in records if r["run"] == "wild"]
    assert False in alive  # flagged at some step ...
    assert not any(alive[alive.index(False):])  # ... and never revived


def test_a_grid_compiles_once(model, tmp_path, monkeypatch):
    """Two groups of runs that differ in seeds, inits and learning rates share one compiled step."""
    trainer_lib.group_program.cache_clear()
    programs = []
    original = trainer_lib.group_program

    def recording(*args):
        programs.append(original(*args)[1])
        return programs[-1] and original(*args)

    monkeypatch.setattr(trainer_lib, "group_program", recording)
    runs = [RunSpec(f"r{i}", seed=i, lrs=(("factor", 0.1 * (i + 1)),), init=(("beta", 1.0 + i),)) for i in range(4)]
    train(model, tmp_path, runs, runs_per_program=2)
    assert len(programs) == 2 and programs[0] is programs[1]
    assert programs[0]._cache_size() == 1


def test_prefix_cache_on_device_host_or_off_trains_the_same(model, tmp_path):
    results = {}
    for cache in ("device", "host", "off"):
        train(model, tmp_path / cache, RUNS[:1], runs_per_program=1, prefix_cache=cache)
        results[cache] = np.asarray(final_params(tmp_path / cache, "a")["v"])
    np.testing.assert_allclose(results["host"], results["device"], atol=1e-6)
    np.testing.assert_allclose(results["off"], results["device"], atol=1e-5)


@pytest.mark.parametrize("cache", ["device", "host"])
def test_packed_rows_train_the_same_grid(model, tmp_path, cache):
    """Three vmapped runs on two datasets (ten examples, batches of 4: a partial one per epoch), each step's examples
    packed into rows of 40 tokens: the same loss curves and steerings as one example per row."""
    datasets = {"x": TrainDataset.from_examples(examples(1)), "y": TrainDataset.from_examples(examples(2))}
    runs = [dataclasses.replace(r, dataset=d) for r, d in zip(RUNS, "xyx")]
    for name, pack in (("rows", 0), ("packed", 40)):
        train(model, tmp_path / name, runs, runs_per_program=3, runs_per_chunk=3, datasets=datasets,
              prefix_cache=cache, pack_length=pack)
    losses = {name: [json.loads(line)["loss"] for line in open(tmp_path / name / "groups" / "group-0000" /
                                                                "metrics.jsonl")] for name in ("rows", "packed")}
    np.testing.assert_allclose(losses["packed"], losses["rows"], rtol=1e-5)
    for run in runs:
        for field in ("alpha", "v"):
            np.testing.assert_allclose(np.asarray(final_params(tmp_path / "packed", run.name)[field]),
                                       np.asarray(final_params(tmp_path / "rows", run.name)[field]), rtol=1e-4,
                                       atol=1e-6)


def test_runs_on_different_datasets_train_together(model, tmp_path):
    datasets = {"x": TrainDataset.from_examples(examples(1)), "y": TrainDataset.from_examples(examples(2))}
    runs = [RunSpec("on-x", dataset="x"), RunSpec("on-y", dataset="y")]
    train(model, tmp_path / "both", runs, runs_per_program=2, datasets=datasets)
    train(model, tmp_path / "y", runs[1:], runs_per_program=1, datasets={"y": datasets["y"]})
    np.testing.assert_allclose(np.asarray(final_params(tmp_path / "both", "on-y")["v"]),
                               np.asarray(final_params(tmp_path / "y", "on-y")["v"]), atol=1e-6)


def test_data_order_is_a_function_of_seed_and_step():
    first, mask = batch_indices(7, 0, 10, 4)
    again, _ = batch_indices(7, 0, 10, 4)
    np.testing.assert_array_equal(first, again)
    epoch = np.concatenate([batch_indices(7, s, 10, 4)[0][batch_indices(7, s, 10, 4)[1]] for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(10))  # every example once per epoch
    assert batch_indices(7, 2, 10, 4)[1].tolist() == [True, True, False, False]  # partial last batch masked
    assert not np.array_equal(batch_indices(7, 3, 10, 4)[0], first)  # a new permutation next epoch


def test_a_changed_grid_is_not_served_finished_results_of_other_runs(model, tmp_path):
    train(model, tmp_path, RUNS[:1], runs_per_program=1)
    assert train(model, tmp_path, RUNS[:1], runs_per_program=1)["a"]["steps"] > 0  # a finished group is reused
    with pytest.raises(ValueError, match="new out_dir"):
        train(model, tmp_path, [RunSpec("other", seed=9)], runs_per_program=1)


def test_bad_training_input_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="empty training set"):
        TrainDataset.from_examples([])
    with pytest.raises(ValueError, match="SimPO objective needs"):
        train(model, tmp_path, RUNS[:1], runs_per_program=1, objective="simpo")
    with pytest.raises(ValueError, match="unknown dataset"):
        train(model, tmp_path, [RunSpec("z", dataset="nope")], runs_per_program=1)
    with pytest.raises(ValueError, match="not fields of SteeringVector"):
        train(model, tmp_path, [RunSpec("z", init=(("gamma", 1.0),))], runs_per_program=1)
    with pytest.raises(ValueError, match="learning-rate group"):
        train(model, tmp_path, [RunSpec("z", lrs=(("alpha", 1.0),))], runs_per_program=1)
