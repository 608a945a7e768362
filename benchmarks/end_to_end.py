"""End to end, as a user runs it: training PrOSV on AxBench concept10 with prosv-jax against the reference recipe.

prosv-jax: one `prosv-jax axbench train` process for every concept (the paper's Lang PrOSV recipe,
experiments/configs/smollm2_135m_l12_lang_prosv.py: SmolLM2-135M-Instruct, block 12, bfloat16, batch 12, 12 epochs),
and once more for the first concept alone (the single-concept peak memory). The reference: the authors' way, one
fresh process per concept, concept after concept: load the HF model and tokenizer, template the concept's examples,
then the recipe (forward hook adding alpha v on the first 2 and last 2 prompt tokens, loss on every response token
from full logits, two Adam groups, v-only clipping, linear decay), each batch padded to its own longest row, in the
Trainer's seed-42 example order. Both sides use the same data, steps and hyperparameters.

Reported: wall clock of each side (model loading, compilation and prefix caching included) and the speed-up
(target >= 2.5x), the peak resident memory of each process, and prosv-jax's 10-concept peak against its
single-concept one (target <= 1.5x).

    python benchmarks/end_to_end.py                                  # all 10 concepts, all 72 examples (~8 h, 2 cores)
    python benchmarks/end_to_end.py --max-examples 12                # 10 concepts, 12 steps each (~90 min on 2 cores)
    python benchmarks/end_to_end.py --concepts 0,1 --max-examples 24 # a shorter comparison
    python benchmarks/end_to_end.py --quick                          # smoke run: 1 concept, 4 examples, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import CpuMeter, append_results, find_mimalloc, machine  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "experiments", "configs", "smollm2_135m_l12_lang_prosv.py")
SPEEDUP_TARGET, MEMORY_TARGET = 2.5, 1.5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--concepts", default="0,1,2,3,4,5,6,7,8,9", help="concept10 ids, comma-separated")
    p.add_argument("--max-examples", type=int, default=0, help="each concept's first N positives (0 = all 72)")
    p.add_argument("--epochs", type=int, default=0, help="0 = the recipe's 12")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16", help="both sides (the recipe's)")
    p.add_argument("--mimalloc", action="store_true", help="preload libmimalloc.so in every process of both sides")
    p.add_argument("--quick", action="store_true", help="smoke run: concept 0, 4 examples, 1 epoch, batch 2")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to benchmarks/results/")
    p.add_argument("--reference-concept", type=int, default=None, help=argparse.SUPPRESS)  # a reference child
    p.add_argument("--batch", type=int, default=0, help="0 = the recipe's 12")
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.concepts, args.max_examples, args.epochs, args.batch = "0", 4, 1, 2
    return args


def recipe_overrides(args) -> list[str]:
    """The --config overrides both sides train with."""
    out = [f"--config.model.dtype={args.dtype}", f"--config.train.param_dtype={args.dtype}",
           "--config.train.progress=False"]
    if args.max_examples:
        out.append(f"--config.data.max_examples={args.max_examples}")
    if args.epochs:
        out.append(f"--config.train.epochs={args.epochs}")
    if args.batch:
        out.append(f"--config.train.batch_size={args.batch}")
    return out


# ----------------------------------------------------------------------------------------------- the reference
def reference_concept(concept: int, args) -> dict:
    """The reference recipe on one concept, in this process (no jax imported); returns its record."""
    start = time.perf_counter()
    import math

    import numpy as np
    import torch
    import transformers

    from prosv_jax.config import resolve
    from prosv_jax.data import axbench
    from prosv_jax.models.sources import resolve_model_dir
    from prosv_jax.training.batch import make_batch
    from prosv_jax.training.data import batch_indices, steps_per_epoch

    transformers.logging.set_verbosity_error()
    config = resolve(RECIPE, recipe_overrides(args))
    model_dir = resolve_model_dir(config.model.name)
    dtype = getattr(torch, args.dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    model.requires_grad_(False)
    pairs = axbench.concept_positives(config.data.split_dir, concept)[:config.data.max_examples or None]
    examples = axbench.lang_examples(tokenizer, pairs, None, config.data.chat)
    loaded = time.perf_counter() - start
    n, s, o = model.config.hidden_size, config.steering, config.optim
    torch.manual_seed(0)
    alpha = torch.tensor(s.beta * math.sqrt(n), dtype=dtype, requires_grad=True)
    v = ((torch.rand(n) * 2 - 1) * s.c / math.sqrt(n)).to(dtype).requires_grad_(True)
    edit = {}

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        return torch.where(edit["mask"][..., None], hidden + alpha * v, hidden)

    model.model.layers[s.layer].register_forward_hook(hook)
    optimizer = torch.optim.Adam([{"params": [v], "lr": o.direction_lr}, {"params": [alpha], "lr": o.factor_lr}],
                                 betas=(o.b1, o.b2), eps=o.eps)
    batch_size = config.train.batch_size
    total = config.train.epochs * steps_per_epoch(len(examples), batch_size)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, 0, total)
    losses = []
    for step in range(total):
        indices, real = batch_indices(42, step, len(examples), batch_size)
        batch = make_batch([examples[i] for i in indices[real]], multiple=1)  # padded to its own longest row
        tokens = torch.tensor(batch.tokens, dtype=torch.long)
        labels = torch.where(torch.tensor(batch.valid & ~batch.prompt_mask), tokens, torch.tensor(-100))
        prompt_len = batch.prompt_mask.sum(1)
        columns = np.arange(batch.tokens.shape[1])[None]
        edit["mask"] = torch.tensor((columns < 2) | ((columns >= prompt_len[:, None] - 2)
                                                     & (columns < prompt_len[:, None])))  # f2+l2
        loss = model(input_ids=tokens, attention_mask=torch.tensor(batch.valid.astype(np.int64)), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([v], o.clip_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    os.makedirs(args.out, exist_ok=True)
    torch.save({"alpha": alpha.detach(), "v": v.detach()}, os.path.join(args.out, f"c{concept}.pt"))
    return {"concept": concept, "steps": total, "load_s": loaded, "seconds": time.perf_counter() - start,
            "first_loss": losses[0], "last_loss": losses[-1]}


# --------------------------------------------------------------------------------------------------- the driver
def timed_process(command: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak resident GiB, stdout) of a child process; raises with its output if it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             cwd=REPO)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 2**20, output  # ru_maxrss is in KiB on Linux


def child_env(args) -> dict:
    env = dict(os.environ)
    if args.mimalloc:
        lib = find_mimalloc()
        if lib is None:
            sys.exit("libmimalloc.so not found: pip install cmeel-mimalloc, or set MIMALLOC_LIB")
        env["LD_PRELOAD"] = lib
    return env


def prosv_jax_run(concepts: list[int], args, out: str) -> dict:
    command = [sys.executable, "-c", "import sys; from prosv_jax.cli import main; sys.exit(main())", "axbench",
               "train", "--config", RECIPE, f"--config.data.concept_ids=[{','.join(map(str, concepts))}]",
               "--out", out] + recipe_overrides(args)
    seconds, peak, _ = timed_process(command, child_env(args))
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {"seconds": seconds, "peak_gib": peak, "runs": len(summary)}


def reference_run(concepts: list[int], args, out: str) -> dict:
    records, peak, total = [], 0.0, 0.0
    for concept in concepts:
        command = [sys.executable, os.path.abspath(__file__), "--reference-concept", str(concept), "--out", out,
                   "--dtype", args.dtype, "--max-examples", str(args.max_examples), "--epochs", str(args.epochs),
                   "--batch", str(args.batch)]
        seconds, rss, output = timed_process(command, child_env(args))
        records.append({**json.loads(output.strip().splitlines()[-1]), "wall_s": seconds, "peak_gib": rss})
        peak, total = max(peak, rss), total + seconds
        print(f"  reference concept {concept}: {seconds:.0f} s", flush=True)
    return {"seconds": total, "peak_gib": peak, "concepts": records}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.reference_concept is not None:
        print(json.dumps(reference_concept(args.reference_concept, args)))
        return
    concepts = [int(c) for c in args.concepts.split(",")]
    info, meter = machine(), CpuMeter()
    with tempfile.TemporaryDirectory() as scratch:
        jax_all = prosv_jax_run(concepts, args, os.path.join(scratch, "jax_all"))
        print(f"  prosv-jax, {len(concepts)} concept(s): {jax_all['seconds']:.0f} s", flush=True)
        jax_one = prosv_jax_run(concepts[:1], args, os.path.join(scratch, "jax_one"))
        reference = reference_run(concepts, args, os.path.join(scratch, "reference"))
    speedup = reference["seconds"] / jax_all["seconds"]
    memory = jax_all["peak_gib"] / jax_one["peak_gib"]
    table = ["| side | concepts | wall clock s | per concept s | peak memory GiB |", "|---|---:|---:|---:|---:|",
             f"| reference (one process per concept) | {len(concepts)} | {reference['seconds']:.0f} | "
             f"{reference['seconds'] / len(concepts):.0f} | {reference['peak_gib']:.2f} |",
             f"| prosv-jax axbench train | {len(concepts)} | {jax_all['seconds']:.0f} | "
             f"{jax_all['seconds'] / len(concepts):.0f} | {jax_all['peak_gib']:.2f} |",
             f"| prosv-jax axbench train | 1 | {jax_one['seconds']:.0f} | {jax_one['seconds']:.0f} | "
             f"{jax_one['peak_gib']:.2f} |", "",
             f"speed-up {speedup:.2f}x (target {SPEEDUP_TARGET}x); prosv-jax peak memory, {len(concepts)} concept(s) "
             f"against 1: {memory:.2f}x (target at most {MEMORY_TARGET}x)"]
    load = f"other processes used {meter.foreign_cores():.2f} of {os.cpu_count()} cores on average during the run"
    print("\n".join(table) + f"\n{load}")
    if not args.no_write:
        description = (f"SmolLM2-135M-Instruct, PrOSV Lang at block 12 (the paper's recipe), {args.dtype}, concepts "
                       f"{concepts}, max_examples {args.max_examples or 'all'}, epochs {args.epochs or 'recipe'}; "
                       f"{info['cpu']}, {info['usable_cores']} core(s); jax {info['jax']}, torch {info['torch']}; "
                       f"mimalloc {'preloaded' if args.mimalloc else 'not preloaded'} in every child. Load: {load}.")
        print("appended to", append_results("end_to_end", argv, description, table,
                                            dict(machine=info, config=vars(args), prosv_jax=jax_all,
                                                 prosv_jax_one=jax_one, reference=reference)))


if __name__ == "__main__":
    main()
