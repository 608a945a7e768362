"""Compile time against depth: the steered training gradient of random Llama-style models (d=256, the issue's
shape) at several block counts, with the decoder's blocks unrolled (`scan_min_blocks = 0`) and with long stretches
of plain blocks scanned (the default, `prosv_jax.models.decoder.SCAN_MIN_BLOCKS`).

Per (blocks, mode): lowering and XLA compile time of jit(value_and_grad) of the PrOSV f2+l2 loss at block
0.4 x depth (from the cached prefix, as the Trainer runs it, or the full model with --full), the best of
--repeats compiles (caches cleared between them), the step time (best of 3 runs) and the loss (the two modes must
agree). The ratio column divides by the smallest block count of the same mode.

    python benchmarks/compile_time.py                        # 8, 16, 32, 64 blocks (a few minutes on 2 cores)
    python benchmarks/compile_time.py --blocks 8,64 --full   # the full forward instead of the cached prefix
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import CpuMeter, append_results, axbench_like_examples, machine  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--blocks", default="8,16,32,64", help="block counts, comma-separated")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="compiles per setting (the best is reported)")
    p.add_argument("--full", action="store_true", help="the full forward (no cached prefix)")
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def gradient(blocks: int, scan: bool, args):
    """(jitted value_and_grad, its arguments) of the steered loss on a random model of `blocks` blocks."""
    import jax
    import jax.numpy as jnp
    import transformers
    from flax import nnx

    from prosv_jax.interventions import Steering
    from prosv_jax.models.config import ModelConfig
    from prosv_jax.models.decoder import SCAN_MIN_BLOCKS, Decoder
    from prosv_jax.training.batch import make_batch
    from prosv_jax.training.step import StepData, prefix_residuals, response_logprobs

    d = args.hidden
    hf = transformers.LlamaConfig(vocab_size=1024, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=blocks,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = Decoder(ModelConfig.from_hf(hf), jnp.float32, rngs=nnx.Rngs(0))
    model.scan_min_blocks = SCAN_MIN_BLOCKS if scan else 0
    steering = Steering.single(int(0.4 * blocks))
    params = steering.init_params(jax.random.key(1), model.cfg)
    b = make_batch(axbench_like_examples(args.batch, 1024))
    data = StepData(b.tokens, b.valid, b.prompt_mask, b.target_index, b.target_ids, b.target_mask,
                    np.zeros(args.batch, np.float32))
    graphdef, state = nnx.split(model)
    if not args.full:
        data = data._replace(prefix=jax.jit(lambda st: prefix_residuals(nnx.merge(graphdef, st), steering, b.tokens,
                                                                          b.valid))(state))

    def loss(p, st, data):
        return -(response_logprobs(nnx.merge(graphdef, st), steering, p, data) * data.target_mask).sum()

    return jax.jit(jax.value_and_grad(loss)), (params, state, data)


def measure(blocks: int, scan: bool, args) -> dict:
    import jax

    lowers, compiles = [], []
    for _ in range(args.repeats):
        jax.clear_caches()
        fn, inputs = gradient(blocks, scan, args)
        t0 = time.perf_counter()
        lowered = fn.lower(*inputs)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        lowers.append(t1 - t0)
        compiles.append(t2 - t1)
    value = jax.block_until_ready(compiled(*inputs))[0]
    steps = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        steps.append(time.perf_counter() - t)
    best = int(np.argmin(np.add(lowers, compiles)))
    return dict(blocks=blocks, scan=scan, lower_s=lowers[best], compile_s=compiles[best],
                total_s=lowers[best] + compiles[best], step_s=min(steps), loss=float(value))


def main(argv=None) -> None:
    args = parse_args(argv)
    meter = CpuMeter()
    rows = []
    for blocks in [int(x) for x in args.blocks.split(",")]:
        for scan in (False, True):
            rows.append(measure(blocks, scan, args))
            r = rows[-1]
            print(f"blocks {blocks:3d} {'scanned' if scan else 'unrolled':8s} lower {r['lower_s']:.2f} s, compile "
                  f"{r['compile_s']:.2f} s, step {r['step_s'] * 1000:.0f} ms, loss {r['loss']:.6f}", flush=True)
    first = {scan: next(r for r in rows if r["scan"] == scan)["total_s"] for scan in (False, True)}
    table = ["| blocks | mode | lower + compile s | ratio to the fewest blocks | step ms | loss |", "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['blocks']} | {'scanned' if r['scan'] else 'unrolled'} | {r['total_s']:.2f} | "
                     f"{r['total_s'] / first[r['scan']]:.2f}x | {r['step_s'] * 1000:.0f} | {r['loss']:.6f} |")
    foreign = meter.foreign_cores()
    description = (f"Random Llama-style d={args.hidden}, batch {args.batch} AxBench-length rows, PrOSV f2+l2 at 0.4 "
                   f"of the depth, {'full forward' if args.full else 'cached prefix'}; float32; other processes "
                   f"used {foreign:.2f} cores on average.")
    print("\n" + description + "\n\n" + "\n".join(table))
    if not args.no_write:
        print("\nappended to", append_results("compile_time", argv, description, table,
                                             dict(rows=rows, machine=machine(), foreign_cores=foreign)))


if __name__ == "__main__":
    main()
