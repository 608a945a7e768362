"""benchmarks/gpu_train.py: the --tiny smoke run works on CPU, and its FLOP count matches the model's weights."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_times_the_group_step_and_writes_results(bench, tmp_path):
    rows = bench.main(["--tiny", "--steps", "1", "--peak-tflops", "2", "--out", str(tmp_path)])
    assert [(r["runs"], r["batch"], r["status"]) for r in rows] == [(2, 4, "ok")]
    row = rows[0]
    assert row["seconds"] > 0 and row["tokens_per_s"] > 0 and math.isfinite(row["loss"])
    assert 0 < row["real_tokens"] <= 2 * 4 * row["length"]
    assert row["mfu"] == pytest.approx(row["tflops_per_s"] / 2)
    written = list(tmp_path.glob("gpu_train-tiny-cpu-*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["rows"][0]["status"] == "ok"
    assert "| runs K | batch B |" in next(tmp_path.glob("gpu_train-tiny-cpu-*.md")).read_text()


def test_flop_count_of_gemma_2_2b_counts_each_executed_weight(bench):
    import jax
    from flax import nnx

    from prosv_jax.models.decoder import Block

    cfg = bench.model_config(bench.SHAPES["gemma-2-2b"])
    block = nnx.eval_shape(lambda: Block(cfg, 11, jax.numpy.bfloat16, nnx.Rngs(0)))
    matmul = sum(math.prod(v.shape) for path, v in nnx.to_flat_state(nnx.state(block)) if path[-1] != "scale")
    assert matmul == 77_856_768  # q, k, v, o and the three MLP matrices of one Gemma-2-2B block
    T, R = 160, 128
    flops = bench.step_flops(cfg, layer=10, runs=1, batch=1, length=T, slots=R)
    attention = 2 * 2 * T * T * 8 * 256
    head = 2 * R * 2304 * 256_000
    kv = 2 * 2304 * 4 * 256  # the key and value weights; the last block uses them at every position
    last = T * 2 * kv + R * (2 * (matmul - kv)) + R * attention // T  # the rest at the R response rows only
    assert flops["forward"] == 14 * (2 * T * matmul + attention) + last + head  # blocks 11..25 and the head
    assert flops["backward"] == 14 * (2 * T * matmul + 2 * attention) + last + R * attention // T + head
    assert bench.step_flops(cfg, 10, 8, 32, T, R)["total"] == 256 * flops["total"]
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert bench.peak_tflops("NVIDIA H200", None) == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert bench.peak_tflops("cpu", None) is None
