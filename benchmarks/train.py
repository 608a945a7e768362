"""Training speed: prosv-jax's steering train step against the PyTorch reference recipe, same weights and data.

The reference is the authors' recipe: an HF transformers model (PyTorch), a forward hook on `model.layers[L]` adding
alpha*v, the loss from the model's `labels` (full logits at every position), Adam with two parameter groups,
`clip_grad_norm_` on v only and a linear schedule. prosv-jax runs its Trainer's compiled group step (the same
recipe; gradients w.r.t. alpha and v only) three ways: the full forward (`prefix_cache=off`), and from the cached
residuals after block L (`prefix_cache=device`) at L ~ 0.4 and ~ 0.75 of the depth. A last measurement compares
one vmapped group of K runs with K separate single-run steps.

Data: AxBench-like lengths, random ids: prompts of 20-30 tokens, responses of 90-170 tokens cut to 128, batch 12.
tokens/s counts real (non-padding) prompt + response tokens per second per run. The one-off cost of computing
the cached prefix is reported separately (it is paid once per dataset, not per step). The sides alternate step by
step after a warm-up, so load from other processes hits both alike; that load is measured and printed.

    python benchmarks/train.py                 # Gemma-2-shaped d=1024, 8 layers, float32 and bfloat16
    python benchmarks/train.py --mimalloc      # the same under mimalloc (see benchmarks/forward.py)
    python benchmarks/train.py --quick         # tiny smoke config
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import (CpuMeter, append_results, axbench_like_examples, benchmark_parser, build_checkpoint, machine,  # noqa: E402
                     start_benchmark, use_tiny_shape)


def parse_args(argv=None):
    p = benchmark_parser(__doc__)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--positions", default="f2+l2", help="position spec of the steering (f2+l2 or all)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    p.add_argument("--layer-fractions", default="0.4,0.75", help="where the SV sits, as fractions of the depth")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per side (the best is reported)")
    p.add_argument("--grid", type=int, default=16, help="K for the vmapped-grid measurement (0 = skip)")
    p.add_argument("--quick", action="store_true", help="tiny smoke config")
    p.add_argument("--mimalloc", action="store_true", help="re-execute with libmimalloc.so preloaded")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        use_tiny_shape(args)
        args.batch, args.repeats, args.grid = 4, 2, 4
    return args


# ----------------------------------------------------------------------------------------------------- prosv-jax
def prosv_jax_step(model, steering, dataset, batches, prefix_cache, *, optim=None, step_config=None, runs=1):
    """The Trainer's compiled group step as a callable (`prosv_jax.training.timing.group_step_fn`)."""
    from prosv_jax.training.timing import group_step_fn

    return group_step_fn(model, steering, dataset, batches, prefix_cache, optim=optim, step_config=step_config,
                         runs=runs)


def jax_side(model, layer, args, prefix_cache, runs=1):
    """prosv_jax_step on the synthetic AxBench-length batch of `args` (and that batch's real token count)."""
    import numpy as np

    from prosv_jax.interventions import Steering, SteeringVector
    from prosv_jax.training.data import TrainDataset

    steering = Steering.single(layer, SteeringVector(beta=2.0, c=1.0), args.positions)
    dataset = TrainDataset.from_examples(axbench_like_examples(args.batch, args.vocab))
    step, setup = prosv_jax_step(model, steering, dataset, [np.arange(args.batch)], prefix_cache, runs=runs)
    return step, setup, int(dataset.positives.valid.sum())


# --------------------------------------------------------------------------------------------------- reference
def reference_step(directory, dtype, layer, batches, positions, *, direction_lr=0.04, factor_lr=1.0, beta=2.0):
    """One step of the reference recipe per call (HF model + forward hook + Adam groups + v-only clipping +
    schedule), cycling through `batches` (lists of (prompt ids, response ids)), each padded to its own longest
    row as the authors' collator does."""
    import itertools

    import numpy as np
    import torch
    import transformers

    from prosv_jax.interventions import PositionSpec
    from prosv_jax.training.batch import make_batch

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype)).eval()
    model.requires_grad_(False)
    prepared = []
    for examples in batches:
        batch = make_batch(examples, multiple=1)
        tokens = torch.tensor(batch.tokens, dtype=torch.long)
        labels = torch.where(torch.tensor(batch.valid & ~batch.prompt_mask), tokens, torch.tensor(-100))
        mask = torch.tensor(np.asarray(PositionSpec.parse(positions).mask(batch.prompt_mask, batch.valid)))
        prepared.append((tokens, torch.tensor(batch.valid.astype(np.int64)), labels, mask))
    n = model.config.hidden_size
    alpha = torch.tensor(beta * math.sqrt(n), dtype=getattr(torch, dtype), requires_grad=True)
    v = ((torch.rand(n) * 2 - 1) / math.sqrt(n)).to(getattr(torch, dtype)).requires_grad_(True)
    current = {}

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        return torch.where(current["mask"][..., None], hidden + alpha * v, hidden)

    model.model.layers[layer].register_forward_hook(hook)
    optimizer = torch.optim.Adam([{"params": [v], "lr": direction_lr}, {"params": [alpha], "lr": factor_lr}],
                                 eps=1e-8)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, 0, 10_000)
    turn = itertools.cycle(prepared)

    def step():
        tokens, attention, labels, current["mask"] = next(turn)
        loss = model(input_ids=tokens, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([v], 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        return loss.detach().item()

    return step


def torch_side(directory, dtype, layer, args):
    """reference_step on the synthetic AxBench-length batch of `args`."""
    return reference_step(directory, dtype, layer, [axbench_like_examples(args.batch, args.vocab)], args.positions)


def timed(sides: dict, repeats: int, clock=time.perf_counter) -> dict:
    """{name: best seconds per call}; one warm-up each, then the sides alternate call by call. The best of the
    repeats, since load from other jobs only ever adds time."""
    for fn in sides.values():
        fn()
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: min(t) for name, t in times.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    clock = start_benchmark(args, argv, __file__)
    import jax.numpy as jnp

    from prosv_jax.models.loading import load_model

    info = machine()
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    layers = [max(0, min(args.layers - 2, round(f * args.layers) - 1))
              for f in map(float, args.layer_fractions.split(","))]
    shape = (f"Gemma-2-shaped, random weights: {args.layers} layers, d={args.hidden}, {args.heads}/{args.kv_heads} "
             f"heads, head_dim {args.head_dim}, MLP {args.intermediate}, vocab {args.vocab}; batch {args.batch}, "
             f"prompts 20-30, responses 90-170 cut to 128; positions {args.positions}; best of {args.repeats}, "
             f"{args.clock}-clock seconds, {len(os.sched_getaffinity(0)) if not args.cores else args.cores} core(s)")
    print(shape, f"\nallocator: {info['allocator']}", flush=True)
    rows, meter, t_start = [], CpuMeter(), time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        build_checkpoint(args, directory)
        for dtype in dtypes:
            model = load_model(directory, jnp.dtype(dtype))
            sides, setups, tokens = {}, {}, None
            sides["reference (PyTorch)"] = torch_side(directory, dtype, layers[0], args)
            sides[f"prosv-jax full forward, L={layers[0]}"], _, tokens = jax_side(model, layers[0], args, "off")
            for layer in layers:
                name = f"prosv-jax cached prefix, L={layer}"
                if layer != layers[0]:
                    sides[f"reference (PyTorch), L={layer}"] = torch_side(directory, dtype, layer, args)
                sides[name], setups[name], _ = jax_side(model, layer, args, "device")
            seconds = timed(sides, args.repeats, clock)
            reference = {layer: seconds.get(f"reference (PyTorch), L={layer}", seconds["reference (PyTorch)"])
                         for layer in layers}
            for name, sec in seconds.items():
                layer = int(name.rsplit("L=", 1)[1]) if "L=" in name else layers[0]
                rows.append(dict(dtype=dtype, row=name, tokens_per_s=tokens / sec, seconds=sec,
                                 vs_reference=reference[layer] / sec, setup_s=setups.get(name)))
            print(f"  {dtype} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
            del sides
        if args.grid:
            model = load_model(directory, jnp.float32)
            layer = layers[-1]
            grid_step, _, tokens = jax_side(model, layer, args, "device", runs=args.grid)
            single_step, _, _ = jax_side(model, layer, args, "device", runs=1)
            seconds = timed({"grid": grid_step, "single": single_step}, args.repeats, clock)
            rows.append(dict(dtype="float32", row=f"{args.grid} runs vmapped (one program), L={layer}",
                             tokens_per_s=args.grid * tokens / seconds["grid"], seconds=seconds["grid"],
                             vs_reference=None, setup_s=None,
                             vs_sequential=args.grid * seconds["single"] / seconds["grid"]))
    foreign = meter.foreign_cores()
    table = ["| dtype | measurement | tokens/s | s/step | vs reference | prefix set-up s |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['vs_reference']:.2f}x" if r.get("vs_reference") else (
            f"{r['vs_sequential']:.2f}x of sequential" if r.get("vs_sequential") else "")
        setup = f"{r['setup_s']:.2f}" if r.get("setup_s") else ""
        table.append(f"| {r['dtype']} | {r['row']} | {r['tokens_per_s']:.0f} | {r['seconds']:.3f} | {ratio} | {setup} |")
    load = f"other processes used {foreign:.2f} of {os.cpu_count()} cores on average during the run"
    print("\n".join(table) + f"\n{load}; total {time.perf_counter() - t_start:.0f} s")
    if args.no_write:
        return
    path = append_results("train", argv, f"{info['cpu']}, {info['cores']} cores; jax {info['jax']}, torch "
                          f"{info['torch']}; allocator {info['allocator']}. {shape}. Load: {load}.", table,
                          dict(machine=info, config=vars(args), rows=rows))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
