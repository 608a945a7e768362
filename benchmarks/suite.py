"""The benchmark suite: prosv-jax against the machine's measured ceilings and the PyTorch reference, one table.

For the training step (full forward and frozen-prefix caching at L ~ 0.4 and ~ 0.75 of the depth, and a K-run
vmapped grid), the prefill, the decode step and PrOSV decoding, it counts the executed FLOPs (and, for decode, the
minimal bytes moved: every weight and the KV cache read once per step), times prosv-jax and the reference on the
same Gemma-2-shaped random model (benchmarks/forward.py's), and reports achieved FLOP/s and bytes/s as a fraction
of the ceilings it measures itself (a large float32 matmul, a large copy). Targets from the issues are checked.

FLOP counts (per position, forward; d model width, H/KV heads, h head dim, f MLP width, V vocabulary, T context):
block = 2d(H+2KV)h + 2Hhd (projections) + 6df (gated MLP) + 4THh (scores and mixing, the full T x T square as
executed). A backward pass that needs input gradients only costs one forward of the projections and MLP and two of
the attention mixing. prosv-jax's last block computes the response rows only (keys and values at every position) and
its training head runs two [positions x d x V] matmuls on response slots; the reference's last block and head run
on every position (the head's forward, then one backward matmul).

    python benchmarks/suite.py                     # full suite (~15 minutes on 2 cores)
    python benchmarks/suite.py --quick             # tiny smoke config (seconds)
    python benchmarks/suite.py --cores 1 --clock cpu   # steadier on a shared machine
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import (CpuMeter, append_results, axbench_like_examples, benchmark_parser, build_checkpoint, hf_runner,  # noqa: E402
                     jax_runner, machine, pin_cores, use_tiny_shape)
from forward import block_flops as shape_block_flops, stack_flops  # noqa: E402
from train import jax_side, timed, torch_side  # noqa: E402


def parse_args(argv=None):
    p = benchmark_parser(__doc__)
    p.add_argument("--batch", type=int, default=12, help="training batch (AxBench's)")
    p.add_argument("--positions", default="f2+l2")
    p.add_argument("--gen-batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--grid", type=int, default=16, help="K runs in the vmapped-grid measurement (0 = skip)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (the best is reported)")
    p.add_argument("--quick", action="store_true", help="tiny smoke config")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        use_tiny_shape(args)
        args.batch, args.repeats, args.grid = 4, 1, 2
        args.gen_batch, args.prompt_len, args.new_tokens = 2, 16, 4
    return args


# ------------------------------------------------------------------------------------------------ ceilings
def ceilings(quick: bool, clock) -> dict:
    """Best-of GFLOP/s of a square float32 matmul and of a bfloat16 one accumulating in float32, and the GB/s of a
    large elementwise copy (read + write), all through XLA on this process's cores."""
    import jax
    import jax.numpy as jnp

    n = 512 if quick else 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    # Donated: the output reuses the input's buffer, so the copy measures memory bandwidth, not page faults.
    copy = jax.jit(lambda x: x * 1.0001, donate_argnums=0)
    big = [jnp.ones((1 << (22 if quick else 26),), jnp.float32)]  # 16 MiB / 256 MiB
    nbytes = big[0].nbytes

    def copy_in_place():
        big[0] = copy(big[0])
        return big[0]

    def best(fn, *xs, repeats=5):
        fn(*xs).block_until_ready()
        times = []
        for _ in range(repeats):
            t0 = clock()
            fn(*xs).block_until_ready()
            times.append(clock() - t0)
        return min(times)

    bf = a.astype(jnp.bfloat16)
    return {"matmul_f32_gflops": 2 * n ** 3 / best(matmul, a, a) / 1e9,
            "matmul_bf16_gflops": 2 * n ** 3 / best(matmul, bf, bf) / 1e9,
            "copy_gbs": 2 * nbytes / best(copy_in_place) / 1e9}


# ------------------------------------------------------------------------------------------------ FLOP counts
def block_flops(args, context: int) -> tuple[int, int]:
    """forward.block_flops for the benchmark model of `args`."""
    return shape_block_flops(args.hidden, args.heads, args.kv_heads, args.head_dim, args.intermediate, context)


def train_flops(args, rows: int, length: int, slots: int, first_block: int, backward_from: int,
                reference: bool = False) -> float:
    """Executed FLOPs of one training step: blocks first_block.. forward, blocks backward_from.. backward (input
    gradients only), and the head (prosv-jax: 2 matmuls on rows*slots; reference: forward on every position plus
    one backward matmul). prosv-jax's last block computes its rows*slots response rows only; the reference's
    computes every position."""
    positions = rows * length
    last_rows = positions if reference else rows * slots
    shape = (args.hidden, args.heads, args.kv_heads, args.head_dim, args.intermediate)
    forward = stack_flops(*shape, args.layers - first_block, length, positions, last_rows)
    backward = stack_flops(*shape, args.layers - backward_from, length, positions, last_rows, backward=True)
    head = 2 * args.hidden * args.vocab
    head_flops = head * (2 * positions if reference else 2 * rows * slots)
    return forward + backward + head_flops


def decode_cost(args, dtype_bytes: int) -> tuple[float, float]:
    """(FLOPs, minimal bytes) of one decode step at the mean context of the benchmark's generation."""
    context = args.prompt_len + args.new_tokens // 2
    dense, mix = block_flops(args, context)
    flops = args.gen_batch * (args.layers * (dense + mix) + 2 * args.hidden * args.vocab)
    weights = args.layers * dense / 2 + args.hidden * args.vocab  # parameters touched per step
    kv = args.gen_batch * args.layers * 2 * args.kv_heads * args.head_dim * context
    return flops, (weights + kv) * dtype_bytes


# ------------------------------------------------------------------------------------------------ measurements
def training_rows(args, directory, clock) -> list[dict]:
    import jax.numpy as jnp

    from prosv_jax.models.loading import load_model
    from prosv_jax.training.batch import make_batch
    from prosv_jax.training.data import TrainDataset

    model = load_model(directory, jnp.float32)
    dataset = TrainDataset.from_examples(axbench_like_examples(args.batch, args.vocab))
    length, slots = dataset.positives.tokens.shape[1], dataset.positives.target_ids.shape[1]
    ref_length = make_batch(axbench_like_examples(args.batch, args.vocab), multiple=1).tokens.shape[1]
    layers = [max(0, min(args.layers - 2, round(f * args.layers) - 1)) for f in (0.4, 0.75)]
    sides, flops = {}, {}
    for i, layer in enumerate(layers):
        sides[("reference", layer)] = torch_side(directory, "float32", layer, args)
        flops[("reference", layer)] = train_flops(args, args.batch, ref_length, 0, 0, layer + 1, reference=True)
        if i == 0:
            sides[("full", layer)], _, tokens = jax_side(model, layer, args, "off")
            flops[("full", layer)] = train_flops(args, args.batch, length, slots, 0, layer + 1)
        sides[("cached", layer)], _, _ = jax_side(model, layer, args, "device")
        flops[("cached", layer)] = train_flops(args, args.batch, length, slots, layer + 1, layer + 1)
    seconds = timed(sides, args.repeats, clock)
    targets = {("full", layers[0]): 1.0, ("cached", layers[0]): 1.5, ("cached", layers[1]): 2.5}
    rows = []
    for (kind, layer), sec in seconds.items():
        ref = seconds[("reference", layer)]
        name = {"reference": "PyTorch reference", "full": "prosv-jax full forward",
                "cached": "prosv-jax cached prefix"}[kind]
        rows.append(dict(benchmark=f"train step f32, SV at block {layer}", side=name, rate=tokens / sec,
                         unit="tok/s", vs=None if kind == "reference" else ref / sec,
                         target=targets.get((kind, layer)), flops=flops[(kind, layer)] / sec))
    if args.grid:
        layer = layers[-1]
        grid, _, _ = jax_side(model, layer, args, "device", runs=args.grid)
        single, _, _ = jax_side(model, layer, args, "device", runs=1)
        sec = timed({"grid": grid, "single": single}, args.repeats, clock)
        rows.append(dict(benchmark=f"train step f32, {args.grid} runs vmapped vs sequential, block {layer}",
                         side="prosv-jax grid", rate=args.grid * tokens / sec["grid"], unit="tok/s",
                         vs=args.grid * sec["single"] / sec["grid"], target=0.9,
                         flops=args.grid * flops[("cached", layer)] / sec["grid"]))
    return rows


def generation_rows(args, directory, clock) -> list[dict]:
    import jax
    import numpy as np

    from prosv_jax.interventions import Steering, SteeringVector, steered_generate

    gen_args = argparse.Namespace(**{**vars(args), "batch": args.gen_batch})
    tokens = np.random.default_rng(0).integers(3, args.vocab, (args.gen_batch, args.prompt_len))
    jax_run, hf_run = jax_runner(directory, "float32", tokens, gen_args), hf_runner(directory, "float32", tokens,
                                                                                     gen_args)
    model = jax_run["model"]
    steering = Steering.single(max(0, args.layers // 2 - 1), SteeringVector(beta=2.0, c=1.0), "f2+l2")
    params = steering.init_params(jax.random.key(0), model.cfg, model.dtype)
    valid = np.ones(tokens.shape, bool)

    def prosv(n):
        return lambda: steered_generate(model, steering, params, tokens, valid, max_new_tokens=n,
                                        stop_ids=(-1,)).tokens.block_until_ready()

    calls = {("jax", "prefill"): jax_run["prefill"], ("hf", "prefill"): hf_run["prefill"],
             ("jax", 1): jax_run["gen1"], ("jax", "N"): jax_run["genN"], ("hf", 1): hf_run["gen1"],
             ("hf", "N"): hf_run["genN"], ("prosv", 1): prosv(1), ("prosv", "N"): prosv(args.new_tokens)}
    sec = timed(calls, args.repeats, clock)
    n_prefill, n_decode = args.gen_batch * args.prompt_len, args.gen_batch * (args.new_tokens - 1)
    decode = {side: n_decode / (sec[(side, "N")] - sec[(side, 1)]) for side in ("jax", "hf", "prosv")}
    dense, mix = block_flops(args, args.prompt_len)
    prefill_flops = n_prefill * args.layers * (dense + mix) + args.gen_batch * 2 * args.hidden * args.vocab
    step_flops, step_bytes = decode_cost(args, 4)
    steps_per_s = decode["jax"] / args.gen_batch
    return [
        dict(benchmark="prefill f32", side="prosv-jax", rate=n_prefill / sec[("jax", "prefill")], unit="tok/s",
             vs=sec[("hf", "prefill")] / sec[("jax", "prefill")], target=None,
             flops=prefill_flops / sec[("jax", "prefill")]),
        dict(benchmark="decode f32", side="prosv-jax", rate=decode["jax"], unit="tok/s", vs=decode["jax"] / decode["hf"],
             target=None, flops=step_flops * steps_per_s, bytes=step_bytes * steps_per_s),
        dict(benchmark="decode f32, PrOSV f2+l2 vs unsteered", side="prosv-jax PrOSV", rate=decode["prosv"],
             unit="tok/s", vs=decode["prosv"] / decode["jax"], target=0.98,
             flops=step_flops * decode["prosv"] / args.gen_batch,
             bytes=step_bytes * decode["prosv"] / args.gen_batch)]


# ------------------------------------------------------------------------------------------------ report
def format_table(rows: list[dict], ceiling: dict) -> str:
    lines = ["| benchmark | measured | rate | vs reference | target | GFLOP/s | of matmul ceiling | GB/s | of copy "
             "ceiling |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = "" if r["vs"] is None else f"{r['vs']:.2f}x"
        target = "" if r["target"] is None else (f">= {r['target']}x " + ("met" if r["vs"] >= r["target"] else
                                                                          "NOT met"))
        gbs = r.get("bytes")
        lines.append(f"| {r['benchmark']} | {r['side']} | {r['rate']:.1f} {r['unit']} | {vs} | {target} | "
                     f"{r['flops'] / 1e9:.1f} | {r['flops'] / 1e9 / ceiling['matmul_f32_gflops']:.0%} | "
                     + (f"{gbs / 1e9:.1f} | {gbs / 1e9 / ceiling['copy_gbs']:.0%} |" if gbs else " | |"))
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    clock = pin_cores(args)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    info = machine()
    meter, t_start = CpuMeter(), time.perf_counter()
    ceiling = ceilings(args.quick, clock)
    print(f"ceilings: {ceiling}", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        build_checkpoint(args, directory)
        rows = training_rows(args, directory, clock)
        print(f"  training done ({time.perf_counter() - t_start:.0f} s)", flush=True)
        rows += generation_rows(args, directory, clock)
    load = f"other processes used {meter.foreign_cores():.2f} of {os.cpu_count()} cores on average"
    shape = (f"Gemma-2-shaped random weights: {args.layers} layers, d={args.hidden}, {args.heads}/{args.kv_heads} "
             f"heads x {args.head_dim}, MLP {args.intermediate}, vocab {args.vocab}; training batch {args.batch} "
             f"(prompts 20-30, responses 90-170 cut to 128, {args.positions}); generation batch {args.gen_batch}, "
             f"prompt {args.prompt_len}, {args.new_tokens} new tokens; best of {args.repeats}, {args.clock}-clock, "
             f"{len(os.sched_getaffinity(0))} core(s), allocator {info['allocator']}")
    ceilings_line = (f"ceilings (XLA, these cores): float32 matmul {ceiling['matmul_f32_gflops']:.0f} GFLOP/s, "
                     f"bfloat16 matmul {ceiling['matmul_bf16_gflops']:.0f} GFLOP/s, copy {ceiling['copy_gbs']:.1f} GB/s")
    table = format_table(rows, ceiling)
    print(f"{shape}\n{ceilings_line}\n\n{table}\n\n{load}; total {time.perf_counter() - t_start:.0f} s")
    if args.no_write:
        return
    path = append_results("suite", argv, f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; jax "
                          f"{info['jax']}, torch {info['torch']}. {shape}. {ceilings_line}. Load: {load}.",
                          table.split("\n"), dict(machine=info, config=vars(args), ceilings=ceiling, rows=rows))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
