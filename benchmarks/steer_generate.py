"""Steered decoding speed: unsteered vs PrOSV (prompt-only) vs FSSV (every token), prosv-jax, same model.

A PrOSV edits the prefill only, so its decode steps are the plain model's program: its decode tokens/s should
match the unsteered model's (target >= 0.98x). FSSV adds the edit to every decode step. The model is the
Gemma-2-shaped benchmark config of benchmarks/forward.py (random weights). Decode time = t(N new tokens) -
t(1 new token) (best of the repeats), tok/s = batch * (N - 1) / decode time; the three variants alternate run by
run after a warm-up.

    python benchmarks/steer_generate.py            # d=1024, 8 layers, float32
    python benchmarks/steer_generate.py --quick    # tiny smoke config
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import (CpuMeter, append_results, benchmark_parser, build_checkpoint, machine, pin_cores,  # noqa: E402
                     use_tiny_shape)


def parse_args(argv=None):
    p = benchmark_parser(__doc__)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--layer", type=int, default=3, help="block whose output is steered")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        use_tiny_shape(args)
        args.layer, args.repeats = 1, 3
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prosv_jax.inference.generate import generate
    from prosv_jax.interventions import Steering, SteeringVector, steered_generate
    from prosv_jax.models.loading import load_model

    clock = pin_cores(args)
    info = machine()
    tokens = np.random.default_rng(0).integers(3, args.vocab, (args.batch, args.prompt_len))
    valid = np.ones(tokens.shape, bool)
    meter, t_start = CpuMeter(), time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        build_checkpoint(args, directory)
        model = load_model(directory, jnp.dtype(args.dtype))
    variants = {"unsteered": None, "PrOSV f2+l2": "f2+l2", "FSSV all": "all"}

    def runner(positions, n):
        """One generation of n tokens: the plain model's, or steered with the SV at `positions`."""
        if positions is None:
            return lambda: generate(model, tokens, valid, max_new_tokens=n, stop_ids=(-1,)).tokens.block_until_ready()
        steering = Steering.single(args.layer, SteeringVector(), positions)
        return lambda: steered_generate(model, steering, params, tokens, valid, max_new_tokens=n,
                                        stop_ids=(-1,)).tokens.block_until_ready()

    params = Steering.single(args.layer, SteeringVector(beta=2.0, c=1.0), "all").init_params(
        jax.random.key(0), model.cfg, model.dtype)
    runs = {(name, n): runner(pos, n) for name, pos in variants.items() for n in (1, args.new_tokens)}
    for fn in runs.values():
        fn()
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            t0 = clock()
            fn()
            times[key].append(clock() - t0)
    med = {key: min(t) for key, t in times.items()}  # best of: other jobs only ever add time
    rate = {name: args.batch * (args.new_tokens - 1) / (med[(name, args.new_tokens)] - med[(name, 1)])
            for name in variants}
    load = f"other processes used {meter.foreign_cores():.2f} of {os.cpu_count()} cores on average"
    table = ["| variant | decode tok/s | vs unsteered |", "|---|---:|---:|"]
    table += [f"| {name} | {r:.1f} | {r / rate['unsteered']:.3f}x |" for name, r in rate.items()]
    shape = (f"Gemma-2-shaped random weights, {args.layers} layers, d={args.hidden}, vocab {args.vocab}, {args.dtype}; "
             f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, SV at block {args.layer}, "
             f"best of {args.repeats}, {args.clock}-clock seconds")
    print(shape + "\n" + "\n".join(table) + f"\n{load}; total {time.perf_counter() - t_start:.0f} s")
    if args.no_write:
        return
    path = append_results("steer_generate", argv, f"{info['cpu']}; jax {info['jax']}; allocator {info['allocator']}. "
                          f"{shape}. {load}.", table, dict(rate=rate, seconds={
                              f"{k[0]} / {k[1]} tokens": v for k, v in times.items()}))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
