"""Training-step speed on one accelerator: a Gemma-2-2B-shaped model (random weights), bfloat16, cached prefix.

Times the Trainer's compiled group step (`group_program`: K vmapped steering runs, each on its own batch of B
sequences, from the cached residuals after block L) at a few batch sizes and run counts, and prints tokens/s and
model FLOP utilisation. No download: the model is built from Gemma-2-2B's shape (26 layers, d=2304, 8 query / 4
key-value heads of 256, MLP 9216, vocabulary 256000, sliding window 4096, attention / final soft-caps 50 / 30,
tied embeddings) with random weights. The steering is a PrOSV (f2+l2) at L=10, the paper's Gemma-2-2B layer.

    python benchmarks/gpu_train.py                  # H100 / H200: batch 12, 32 x runs 1, 8; under 5 minutes
    python benchmarks/gpu_train.py --tiny           # a small shape on any backend (CI smoke test: seconds on CPU)
    python benchmarks/gpu_train.py --batches 8,16,32 --runs 1,4,16 --steps 10

Data: AxBench-like lengths, random ids: prompts of 20-30 tokens, responses of 90-170 tokens cut to 128, padded
to the longest (T tokens, R response slots). tokens/s counts real (non-padding) tokens of all K x B sequences.

FLOPs are model FLOPs of what the step must compute, counted by hand (matmuls only; norms, soft-caps, RoPE and the
softmax are left out): for each of the blocks L+1..N-1 the forward pass (q/k/v/o projections and the MLP,
2 x tokens x weights, plus the attention products QK^T and AV over the full padded T x T, which the masked einsums
execute) and the backward pass; the last block at the R response rows only (queries, output projection, MLP; its
keys and values at every position), as the step computes it. The weights are frozen, so the backward needs
gradients w.r.t. activations only: once the forward for each projection (no weight gradient), twice for QK^T and
AV (both operands are activations).
The head counts at the R response slots only (the loss reads no other logits): 2 x d x vocabulary forward, the
same backward. These are model FLOPs, what the math needs, whatever the implementation executes (a head that
recomputes or fuses its chunks changes the hardware FLOPs, not these). MFU = FLOPs per step / seconds per step /
peak, with the peak dense bf16 rate of the detected device (H100 SXM and H200: 989 TFLOP/s; see PEAK_TFLOPS;
--peak-tflops overrides; none on CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import RESULTS_DIR, axbench_like_examples, stack_flops  # noqa: E402

# Gemma-2-2B; the tiny shape is the built-in model's.
SHAPES = {
    "gemma-2-2b": dict(vocab=256000, hidden=2304, intermediate=9216, layers=26, heads=8, kv_heads=4, head_dim=256,
                       window=4096, layer=10),
    "tiny": dict(vocab=512, hidden=128, intermediate=256, layers=4, heads=4, kv_heads=2, head_dim=32, window=64,
                 layer=1),
}
# Dense bfloat16 peak TFLOP/s by device name (first match wins; without sparsity).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
               ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
               ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0),
               ("TPU v6", 918.0))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the built-in model's small shape (CPU smoke test)")
    p.add_argument("--batches", help="per-run batch sizes B (default 12,32; --tiny: 4)")
    p.add_argument("--runs", help="run counts K vmapped together (default 1,8; --tiny: 2)")
    p.add_argument("--steps", type=int, help="timed steps per setting after a warm-up (default 5; --tiny: 2); "
                                             "the median is reported")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="frozen weights' dtype")
    p.add_argument("--layer", type=int, help="the steered block L (default 10; --tiny: 1)")
    p.add_argument("--positions", default="f2+l2", help="position spec of the steering")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for the MFU (default: by device name)")
    p.add_argument("--budget-s", type=float, default=270.0,
                   help="a setting is skipped when it would end past this many seconds from the start, judging by "
                        "the slowest setting so far (default 270: the whole command within 5 minutes)")
    p.add_argument("--out", default=RESULTS_DIR, help="folder for the results (.md appended, .json written)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    args.shape = "tiny" if args.tiny else "gemma-2-2b"
    args.batches = [int(x) for x in (args.batches or ("4" if args.tiny else "12,32")).split(",")]
    args.runs = [int(x) for x in (args.runs or ("2" if args.tiny else "1,8")).split(",")]
    args.steps = args.steps or (2 if args.tiny else 5)
    args.layer = SHAPES[args.shape]["layer"] if args.layer is None else args.layer
    return args


def model_config(shape: dict):
    import transformers

    from prosv_jax.models.config import ModelConfig

    hf = transformers.Gemma2Config(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        head_dim=shape["head_dim"], query_pre_attn_scalar=shape["head_dim"], sliding_window=shape["window"],
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    return ModelConfig.from_hf(hf)


def step_flops(cfg, layer: int, runs: int, batch: int, length: int, slots: int) -> dict:
    """Model FLOPs of one group step (see the module docstring): forward, backward and total."""
    shape = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size)
    sequences = runs * batch
    blocks = cfg.num_layers - 1 - layer
    stack = [stack_flops(*shape, blocks, length, sequences * length, sequences * slots, backward=b)
             for b in (False, True)]
    head = sequences * 2 * slots * cfg.hidden_size * cfg.vocab_size
    forward, backward = stack[0] + head, stack[1] + head
    return dict(forward=forward, backward=backward, total=forward + backward)


def peak_tflops(device_kind: str, override: float | None) -> float | None:
    if override:
        return override
    for name, tflops in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops
    return None


def time_setting(model, steering, group_data, runs: int, batch: int, steps: int) -> dict:
    """Compile + warm-up seconds and the median seconds of `steps` group steps of K=runs runs x B=batch rows."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from prosv_jax.training.optim import OptimConfig
    from prosv_jax.training.step import StepConfig, TrainState
    from prosv_jax.training.trainer import group_program

    optim = OptimConfig(factor_lr=1.0, direction_lr=0.04)
    graphdef, model_state = nnx.split(model)
    tx, group_step = group_program(graphdef, model.cfg, steering, StepConfig(), optim, 10_000)
    params = [steering.init_params(jax.random.key(k), model.cfg) for k in range(runs)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
    state = TrainState(stacked, jax.vmap(tx.init)(stacked), jnp.zeros(runs, jnp.int32), jnp.ones(runs, bool))
    lrs = {g: jnp.full(runs, v, jnp.float32) for g, v in optim.learning_rates(model.cfg.hidden_size).items()}
    state, lrs = jax.device_put((state, lrs), jax.local_devices()[0])
    rng = np.random.default_rng(runs * 1000 + batch)
    total = group_data.arrays[0].tokens.shape[0]
    indices = np.stack([rng.permutation(total)[:batch] for _ in range(runs)])  # each run its own rows
    data = group_data.gather(indices, np.ones_like(indices, bool))
    real_tokens = int(np.asarray(data.valid).sum())
    t0 = time.perf_counter()
    state, metrics = group_step(model_state, state, lrs, data)  # compiles
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - t0
    state, metrics = group_step(model_state, state, lrs, data)  # warm-up (autotuning, allocator)
    jax.block_until_ready(metrics["loss"])
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = group_step(model_state, state, lrs, data)
        jax.block_until_ready(metrics["loss"])
        seconds.append(time.perf_counter() - t0)
    loss = float(np.nanmean(np.asarray(metrics["loss"])))
    return dict(compile_s=compile_s, seconds=statistics.median(seconds), all_seconds=seconds,
                real_tokens=real_tokens, length=int(data.tokens.shape[-1]), slots=int(data.target_ids.shape[-1]),
                loss=loss)


def format_table(rows: list[dict]) -> str:
    lines = ["| runs K | batch B | T | ms/step | tokens/s | model TFLOP/step | TFLOP/s | MFU | compile s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['runs']} | {r['batch']} |  |  |  |  |  |  | {r['status']} |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        lines.append(f"| {r['runs']} | {r['batch']} | {r['length']} | {1000 * r['seconds']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {r['flops']['total'] / 1e12:.3f} | {r['tflops_per_s']:.2f} | {mfu} | "
                     f"{r['compile_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from prosv_jax.interventions import Steering, SteeringVector
    from prosv_jax.models.decoder import Decoder
    from prosv_jax.training.data import TrainDataset
    from prosv_jax.training.step import StepConfig
    from prosv_jax.training.trainer import GroupData, TrainConfig

    shape = SHAPES[args.shape]
    cfg = model_config(shape)
    device = jax.local_devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    peak = peak_tflops(kind, args.peak_tflops)
    print(f"device: {kind} ({device.platform}), {jax.local_device_count()} local; jax {jax.__version__}; peak "
          + (f"{peak:g} TFLOP/s dense bf16" if peak else "unknown (no MFU; --peak-tflops sets one)"), flush=True)
    print(f"model: {args.shape}-shaped, random weights, {args.dtype}: {cfg.num_layers} layers, d={cfg.hidden_size}, "
          f"{cfg.num_heads}/{cfg.num_kv_heads} heads of {cfg.head_dim}, MLP {cfg.intermediate_size}, vocabulary "
          f"{cfg.vocab_size}; steering {args.positions} at L={args.layer} (blocks {args.layer + 1}.."
          f"{cfg.num_layers - 1} run per step)", flush=True)
    # Random weights made by one compiled program, on the device, straight in the weights' dtype.
    model = nnx.jit(lambda: Decoder(cfg, jnp.dtype(args.dtype), rngs=nnx.Rngs(0)))()
    jax.block_until_ready(nnx.state(model))
    steering = Steering.single(args.layer, SteeringVector(beta=2.0, c=1.0), args.positions)
    dataset = TrainDataset.from_examples(axbench_like_examples(max(args.batches), cfg.vocab_size))
    t0 = time.perf_counter()
    group_data = GroupData(model, steering, dataset, TrainConfig(prefix_cache="device"), StepConfig())
    jax.block_until_ready(group_data.prefix)
    prefix_s = time.perf_counter() - t0
    print(f"set-up {time.perf_counter() - t_start:.1f} s (cached prefix of {len(dataset)} sequences: "
          f"{prefix_s:.1f} s)", flush=True)

    rows, slowest = [], 0.0
    for runs in args.runs:
        for batch in args.batches:
            row = dict(runs=runs, batch=batch)
            rows.append(row)
            started = time.perf_counter()
            if started - t_start + slowest > args.budget_s:
                row["status"] = "skipped (time budget)"
                print(f"  K={runs} B={batch}: skipped (--budget-s {args.budget_s:g})", flush=True)
                continue
            try:
                row.update(time_setting(model, steering, group_data, runs, batch, args.steps))
            except Exception as error:  # noqa: BLE001  one setting too big for the device: say so, go on
                if "RESOURCE_EXHAUSTED" not in str(error) and "out of memory" not in str(error).lower():
                    raise
                row["status"] = "out of memory"
                print(f"  K={runs} B={batch}: out of memory", flush=True)
                continue
            slowest = max(slowest, time.perf_counter() - started)
            row["status"] = "ok"
            row["flops"] = step_flops(cfg, args.layer, runs, batch, row["length"], row["slots"])
            row["tokens_per_s"] = row["real_tokens"] / row["seconds"]
            row["tflops_per_s"] = row["flops"]["total"] / row["seconds"] / 1e12
            row["mfu"] = row["tflops_per_s"] / peak if peak else None
            print(f"  K={runs} B={batch}: {1000 * row['seconds']:.1f} ms/step, {row['tokens_per_s']:.0f} tokens/s, "
                  f"{row['tflops_per_s']:.2f} TFLOP/s" + (f", MFU {100 * row['mfu']:.1f}%" if peak else "")
                  + f" (compile {row['compile_s']:.1f} s)", flush=True)
    table = format_table(rows)
    total = time.perf_counter() - t_start
    print("\n" + table + f"\n\ntotal {total:.0f} s", flush=True)
    if not args.no_write:
        write(args, argv, rows, table, dict(device=kind, platform=device.platform, peak_tflops=peak,
                                            jax=jax.__version__, python=platform.python_version(),
                                            model=dict(shape=args.shape, **shape), total_s=total,
                                            prefix_s=prefix_s))
    return rows


def write(args, argv, rows, table, info) -> None:
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now()
    name = f"gpu_train-{args.shape}-{info['platform']}-{stamp.date().isoformat()}"
    command = "python benchmarks/gpu_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = dict(command=command, time=stamp.isoformat(timespec="seconds"), **info, rows=rows)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(args.out, name + ".md"), "a") as f:
        f.write(f"## gpu_train benchmark, {record['time']}\n\n`{command}`\n\n{info['device']}; jax {info['jax']}; "
                f"peak {info['peak_tflops'] or 'unknown'} TFLOP/s. {args.shape}-shaped model, {args.dtype}, "
                f"{args.positions} at L={args.layer}; median of {args.steps} steps; model FLOPs as in the script's "
                f"docstring. Total {info['total_s']:.0f} s.\n\n{table}\n\n")
    print(f"results: {os.path.join(args.out, name)}.md / .json")


if __name__ == "__main__":
    main()
