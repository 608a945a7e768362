"""The benchmark suite's FLOP accounting against XLA's own count, and a smoke run of the suite."""

import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)
import suite  # noqa: E402


@pytest.fixture(scope="module")
def bench_model():
    from prosv_jax.models.loading import load_model

    args = suite.parse_args(["--quick"])
    args.hidden, args.head_dim, args.intermediate, args.vocab = 256, 64, 512, 2048  # dots dominate, as at full size
    with tempfile.TemporaryDirectory() as directory:
        suite.build_checkpoint(args, directory)
        yield args, load_model(directory, jnp.float32)


@pytest.mark.parametrize("layer,prefix_cache", [(1, "device"), (1, "off"), (2, "device")])
def test_train_flops_match_xla_cost_analysis(bench_model, layer, prefix_cache):
    """The analytic count of the suite (blocks forward/backward, two head matmuls) vs the compiled step's FLOPs."""
    from prosv_jax.interventions import Steering, SteeringVector
    from prosv_jax.training.data import TrainDataset
    from prosv_jax.training.optim import OptimConfig
    from prosv_jax.training.step import StepConfig, TrainState
    from prosv_jax.training.trainer import GroupData, TrainConfig, group_program

    args, model = bench_model
    steering = Steering.single(layer, SteeringVector(), "f2+l2")
    dataset = TrainDataset.from_examples(suite.axbench_like_examples(args.batch, args.vocab))
    graphdef, model_state = nnx.split(model)
    tx, step = group_program(graphdef, model.cfg, steering, StepConfig(), OptimConfig(), 100)
    params = jax.tree.map(lambda x: x[None], steering.init_params(jax.random.key(0), model.cfg))
    state = TrainState(params, jax.vmap(tx.init)(params), jnp.zeros(1, jnp.int32), jnp.ones(1, bool))
    lrs = {g: jnp.ones(1) for g in ("factor", "direction", "other")}
    data = GroupData(model, steering, dataset, TrainConfig(prefix_cache=prefix_cache), StepConfig())
    indices = np.arange(args.batch)[None]
    cost = step.lower(model_state, state, lrs, data.gather(indices, np.ones_like(indices, bool))).compile()
    cost = cost.cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    length, slots = dataset.positives.tokens.shape[1], dataset.positives.target_ids.shape[1]
    first = layer + 1 if prefix_cache == "device" else 0
    counted = suite.train_flops(args, args.batch, length, slots, first, layer + 1)
    assert counted == pytest.approx(xla_flops, rel=0.05)  # the rest is elementwise work


def test_suite_quick_prints_every_row():
    result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "suite.py"), "--quick", "--no-write"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("PyTorch reference", "prosv-jax full forward", "prosv-jax cached prefix", "runs vmapped",
                "prefill f32", "decode f32", "PrOSV f2+l2 vs unsteered", "ceilings (XLA"):
        assert row in result.stdout, row


def test_compile_benchmark_compares_scanned_and_unrolled(capsys):
    """benchmarks/compile_time.py on a small shape: the scanned blocks give the unrolled loss and a row per mode."""
    import compile_time

    compile_time.main(["--blocks", "22", "--hidden", "64", "--batch", "2", "--repeats", "1", "--no-write"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 22 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["unrolled", "scanned"]
    losses = [float(row.split("|")[6]) for row in rows]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_real_shape_benchmark_times_both_sides_on_real_data(real_models_cache, monkeypatch, capsys):
    """benchmarks/real_shape.py --quick on SmolLM2-135M-Instruct and concept10: a reference row and a prosv-jax row
    for the steered block, each with its padding (token slots per real token, at least 1) and a speed-up."""
    import real_shape

    real_models_cache("smollm2-135m-instruct")  # converted once per test session
    monkeypatch.setenv("PROSV_JAX_CACHE", real_models_cache.root)
    real_shape.main(["--quick", "--no-write"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| smollm2-135m-instruct | float32 | 12 of 30 |")]
    assert [row[3].strip() for row in rows] == ["reference", "prosv-jax"]
    assert all(float(row[8]) >= 1.0 for row in rows)  # token slots per real token
    assert float(rows[1][11].split("x")[0]) > 0  # the speed-up column parses
    assert rows[0][6].strip() == "" and float(rows[1][6]) > 0  # the prefix set-up is prosv-jax's alone


def test_steered_block_stays_inside_the_model():
    import real_shape

    assert [real_shape.steered_block(f, 30) for f in (0.4, 0.75)] == [12, 22]
    assert [real_shape.steered_block(f, 18) for f in (0.4, 0.75)] == [7, 14]
    assert real_shape.steered_block(0.99, 4) == 2  # never the last block
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        real_shape.steered_block(1.0, 30)


def test_end_to_end_benchmark_runs_both_sides_as_processes(real_models_cache, monkeypatch, capsys):
    """benchmarks/end_to_end.py --quick: prosv-jax's `axbench train` (all concepts, then one) and the reference, one
    process per concept, each with its wall clock and peak memory, and the speed-up and memory ratio lines."""
    import end_to_end

    real_models_cache("smollm2-135m-instruct")
    monkeypatch.setenv("PROSV_JAX_CACHE", real_models_cache.root)
    end_to_end.main(["--quick", "--no-write"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    assert {"reference (one process per concept)", "prosv-jax axbench train"} <= set(rows)
    for cells in rows.values():
        if cells[0].strip().isdigit():
            assert float(cells[1]) > 0 and float(cells[3]) > 0.1  # seconds, peak GiB
    assert "speed-up" in out and "peak memory, 1 concept(s) against 1" in out
