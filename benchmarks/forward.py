"""Forward-pass and generation speed: prosv-jax (XLA:CPU) against HF transformers (PyTorch), same weights.

The model is Gemma-2-shaped with random weights: `transformers.Gemma2Config` with hidden 1024, 8 layers, 8 query
heads, 4 key/value heads, head_dim 128, MLP width 4096 and vocabulary 32000 by default. Gemma-2's real vocabulary
(256000) would make the LM head dominate the CPU time, so the vocabulary is an option (--vocab). The model is built
with transformers' PyTorch class, saved with `save_pretrained` (float32) to a temporary directory and loaded from
there by both sides in the benchmarked dtype (`prosv_jax.models.loading.load_model(dir, dtype)` and
`Gemma2ForCausalLM.from_pretrained(dir, dtype=...)`).

What is measured (tokens per second; warm-up / compilation excluded; the median of --repeats runs):

- prefill: one forward over [batch, prompt_len] random prompts (no padding) returning the logits of every
  position; no KV cache on either side (prosv-jax: a jitted `model(tokens, positions, valid).logits`,
  `block_until_ready`; HF: `model(input_ids, attention_mask, use_cache=False)` under `torch.inference_mode`).
  tok/s = batch * prompt_len / time.
- decode: greedy generation with a KV cache (prosv-jax: `prosv_jax.inference.generate.generate(model, tokens,
  valid, max_new_tokens=N, stop_ids=(-1,))`; HF: `model.generate(do_sample=False, max_new_tokens=N,
  min_new_tokens=N)` with EOS removed from the generation config). Neither stops early: prosv-jax's stop id -1
  cannot occur, and HF must produce N tokens (asserted). The decode loop's time is the difference of two
  generations: decode time = t(generate N tokens) - t(generate 1 token), where the 1-token run is the prefill (plus
  the first sampled token) alone; tok/s = batch * (N - 1) / decode time.

Times are wall-clock by default; --clock cpu times by the process's CPU time (see --help).

Both sides run on the same cores: XLA:CPU uses every core of the process's affinity and torch gets as many threads
(torch.set_num_threads); --cores N pins the process to N cores first. The sides alternate run by run (after one
warm-up each), so a load from other jobs on a shared machine hits both alike; the load other processes put on the
machine during the run is measured from /proc/stat and reported.

The allocator moves every number (docs/design.md), so each run states its allocator, and both sides share it
(same process). To run under mimalloc:

    pip install cmeel-mimalloc            # or: pip install --target /tmp/mimalloc cmeel-mimalloc
    LD_PRELOAD=$(find / -name libmimalloc.so 2>/dev/null | head -1) python benchmarks/forward.py

or pass --mimalloc, which finds libmimalloc.so (on sys.path's cmeel.prefix/lib, or $MIMALLOC_LIB) and re-executes
the script with it preloaded. Whether mimalloc is in use is read from /proc/self/maps.

Results are printed and appended (markdown table + JSON) to benchmarks/results/forward-<date>.md.

    python benchmarks/forward.py                     # full config, float32 and bfloat16
    python benchmarks/forward.py --mimalloc          # the same under mimalloc
    python benchmarks/forward.py --quick             # tiny smoke config (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import sys
import tempfile
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by a script's docstring, with the model and timing options every script shares."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_timing_args(p)
    return p


def append_results(name: str, argv, description: str, table: list[str], record: dict) -> str:
    """Appends a run to results/<name>-<date>.md: a heading, the command, `description`, the table and `record` as
    JSON (with the command added). Returns the file's path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}-{datetime.date.today().isoformat()}.md")
    command = f"python benchmarks/{name}.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(path, "a") as f:
        f.write(f"## {name} benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}\n\n`{command}`\n\n"
                f"{description}\n\n" + "\n".join(table) + "\n\n```json\n"
                + json.dumps(dict(command=command, **record), indent=1) + "\n```\n\n")
    return path


def axbench_like_examples(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """n (prompt, response) id lists of AxBench's lengths: prompts of 20-30 tokens, responses of 90-170 cut to 128."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(list(rng.integers(3, vocab, rng.integers(20, 31))),
             list(rng.integers(3, vocab, rng.integers(90, 171)))[:128]) for _ in range(n)]


def block_flops(hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, context: int
                ) -> tuple[int, int]:
    """(projection + gated-MLP FLOPs, attention-mixing FLOPs) of one decoder block per position, forward; the mixing
    (QK^T and AV) over `context` keys as executed (the full square for a masked sequence)."""
    dense = 2 * hidden * (heads + 2 * kv_heads) * head_dim + 2 * heads * head_dim * hidden + 6 * hidden * intermediate
    return dense, 4 * context * heads * head_dim


def stack_flops(hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, count: int, length: int,
                positions: int, last_rows: int, backward: bool = False) -> int:
    """FLOPs of the model's last `count` blocks over `positions` = sequences x length positions, forward (or their
    input-gradient backward: the mixing twice). The last block computes `last_rows` rows (keys and values at every
    position; queries, output projection and MLP at those rows)."""
    if count <= 0:
        return 0
    dense, mix = block_flops(hidden, heads, kv_heads, head_dim, intermediate, length)
    mix *= 2 if backward else 1
    kv = 4 * hidden * kv_heads * head_dim  # key and value projections per position
    return (count - 1) * positions * (dense + mix) + positions * kv + last_rows * (dense - kv + mix)


def use_tiny_shape(args) -> None:
    """The --quick model shape of the training and steering benchmarks (a smoke test, not a measurement)."""
    args.layers, args.hidden, args.heads, args.kv_heads, args.head_dim = 4, 64, 4, 2, 16
    args.intermediate, args.vocab = 128, 512


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The Gemma-2-shaped benchmark model's options, shared by every benchmark script."""
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=32000, help="Gemma-2's real vocabulary is 256000")


def add_timing_args(p: argparse.ArgumentParser) -> None:
    """--cores and --clock: how to time on a machine that other jobs may share."""
    p.add_argument("--cores", type=int, default=None,
                   help="pin the process to the first N cores (XLA follows the affinity; torch gets N threads). "
                        "On a machine shared with other jobs, --cores 1 gives steadier jax/HF ratios")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: time by the process's CPU time (time.process_time) instead of wall time; with --cores 1 "
                        "it is robust to other jobs on a shared machine (no idle waits to miss); with more cores it "
                        "counts spinning threads, so use wall")


def reexec_with_mimalloc(args, argv, script: str) -> None:
    """With --mimalloc, restarts `script` with libmimalloc.so preloaded (once: a preloaded run just goes on)."""
    if args.mimalloc and "mimalloc" not in allocator():
        lib = find_mimalloc()
        if lib is None:
            sys.exit("libmimalloc.so not found: pip install cmeel-mimalloc, or set MIMALLOC_LIB")
        os.execve(sys.executable, [sys.executable, os.path.abspath(script)] + (argv or sys.argv[1:]),
                  dict(os.environ, LD_PRELOAD=lib))


def start_benchmark(args, argv, script: str):
    """The prologue of a benchmark comparing with PyTorch: --mimalloc (re-executing `script`), transformers' logging
    silenced, --cores applied to both frameworks. Returns the clock that --clock names."""
    reexec_with_mimalloc(args, argv, script)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    clock = pin_cores(args)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return clock


def pin_cores(args):
    """Applies --cores; returns the clock that --clock names."""
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
    return time.process_time if args.clock == "cpu" else time.perf_counter


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for what is measured and how to use mimalloc.")
    add_model_args(p)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    add_timing_args(p)
    p.add_argument("--quick", action="store_true", help="tiny smoke config (overrides the shape options)")
    p.add_argument("--mimalloc", action="store_true", help="re-execute with libmimalloc.so preloaded")
    p.add_argument("--out", default=None, help="markdown file to append to (default results/forward-<date>.md)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2 (decode time is t(N) - t(1))")
    if args.quick:
        args.layers, args.hidden, args.heads, args.kv_heads, args.head_dim = 2, 128, 4, 2, 32
        args.intermediate, args.vocab, args.batch, args.prompt_len, args.new_tokens = 256, 1000, 2, 16, 4
        args.repeats = 1
    return args


# ----------------------------------------------------------------------------------------------- machine / allocator
def allocator() -> str:
    with open("/proc/self/maps") as f:
        maps = f.read()
    for name in ("mimalloc", "jemalloc", "tcmalloc"):
        if name in maps:
            path = next(line.split()[-1] for line in maps.splitlines() if name in line)
            return f"{name} ({path})"
    return "glibc malloc"


def find_mimalloc() -> str | None:
    if os.environ.get("MIMALLOC_LIB"):
        return os.environ["MIMALLOC_LIB"]
    for entry in sys.path + ["/tmp/mimalloc"]:
        hits = glob.glob(os.path.join(entry, "cmeel.prefix", "lib", "libmimalloc.so"))
        if hits:
            return hits[0]
    return None


def machine() -> dict:
    import jax
    import torch
    import transformers
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return dict(cpu=cpu, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)), memory_gb=round(mem_gb, 1),
                python=platform.python_version(), jax=jax.__version__, torch=torch.__version__,
                transformers=transformers.__version__, allocator=allocator(), torch_threads=torch.get_num_threads())


# ------------------------------------------------------------------------------------------------------- timing
class CpuMeter:
    """CPU time used by OTHER processes (in cores, averaged) while the benchmark ran: the machine may be shared.

    The benchmark's own waited-for child processes count as its own, not as foreign load."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait, in clock ticks
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        return time.perf_counter(), busy, own * os.sysconf("SC_CLK_TCK")

    def foreign_cores(self) -> float:
        t1, busy1, own1 = self._read()
        t0, busy0, own0 = self.start
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / (t1 - t0))


def build_checkpoint(args, directory: str):
    import torch
    import transformers
    config = transformers.Gemma2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, query_pre_attn_scalar=args.head_dim, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config).eval()
    model.save_pretrained(directory)
    del model


def jax_runner(directory: str, dtype_name: str, tokens, args) -> dict:
    """name -> zero-argument callable running that measurement once; results land in the returned dict's "out"."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from prosv_jax.inference.generate import generate
    from prosv_jax.models.decoder import positions_from_valid
    from prosv_jax.models.loading import load_model

    model = load_model(directory, jnp.dtype(dtype_name))
    graphdef, state = nnx.split(model)
    tok = jnp.asarray(tokens, jnp.int32)
    valid = jnp.ones(tok.shape, bool)
    positions = positions_from_valid(valid)
    out = {}

    @jax.jit
    def forward(state, tok, positions, valid):
        return nnx.merge(graphdef, state)(tok, positions, valid).logits

    def prefill():
        out["logits"] = forward(state, tok, positions, valid).block_until_ready()

    def gen(n):
        def run():
            out[f"gen{n}"] = generate(model, tok, valid, max_new_tokens=n, stop_ids=(-1,)).tokens.block_until_ready()
        return run

    return dict(prefill=prefill, gen1=gen(1), genN=gen(args.new_tokens), out=out, model=model)


def hf_runner(directory: str, dtype_name: str, tokens, args) -> dict:
    import torch
    import transformers

    model = transformers.Gemma2ForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype_name)).eval()
    model.generation_config.eos_token_id = None  # no early stop (min_new_tokens too)
    tok = torch.tensor(tokens, dtype=torch.long)
    mask = torch.ones_like(tok)
    out = dict(attn=model.config._attn_implementation, cache=str(model.generation_config.cache_implementation))

    def prefill():
        with torch.inference_mode():
            out["logits"] = model(input_ids=tok, attention_mask=mask, use_cache=False).logits

    def gen(n):
        def run():
            with torch.inference_mode():
                seq = model.generate(input_ids=tok, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                     min_new_tokens=n, pad_token_id=0)
            assert seq.shape[1] == tok.shape[1] + n, seq.shape
            out[f"gen{n}"] = seq[:, tok.shape[1]:]
        return run

    return dict(prefill=prefill, gen1=gen(1), genN=gen(args.new_tokens), out=out, model=model)


def measure(runners: dict, repeats: int, clock=time.perf_counter) -> dict:
    """{side: {measurement: [seconds]}}; one warm-up each, then the sides alternate run by run, so a load that
    comes and goes on a shared machine hits both alike."""
    names = ("prefill", "gen1", "genN")
    for runner in runners.values():
        for name in names:
            runner[name]()
    times = {side: {name: [] for name in names} for side in runners}
    for _ in range(repeats):
        for name in names:
            for side, runner in runners.items():
                t0 = clock()
                runner[name]()
                times[side][name].append(clock() - t0)
    return times


def main(argv=None) -> None:
    args = parse_args(argv)
    reexec_with_mimalloc(args, argv, __file__)

    clock = pin_cores(args)
    threads = len(os.sched_getaffinity(0))
    import numpy as np
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    info = machine()
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    shape = (f"Gemma-2-shaped, random weights: {args.layers} layers, d={args.hidden}, {args.heads} heads / "
             f"{args.kv_heads} kv, head_dim {args.head_dim}, MLP {args.intermediate}, vocab {args.vocab}; "
             f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, median of {args.repeats} (jax/HF runs alternate), {args.clock}-clock seconds")
    print(shape, flush=True)
    print(f"allocator: {info['allocator']}; {threads} core(s)", flush=True)
    tokens = np.random.default_rng(0).integers(3, args.vocab, (args.batch, args.prompt_len))
    rows, checks, notes = [], {}, {}
    t_start = time.perf_counter()
    meter = CpuMeter()
    with tempfile.TemporaryDirectory() as directory:
        build_checkpoint(args, directory)
        for dtype in dtypes:
            runners = dict(jax=jax_runner(directory, dtype, tokens, args), hf=hf_runner(directory, dtype, tokens, args))
            times = measure(runners, args.repeats, clock)
            j, h = runners["jax"]["out"], runners["hf"]["out"]
            notes["hf"] = f"attn_implementation={h['attn']}, cache_implementation={h['cache']}"
            med = {side: {k: statistics.median(v) for k, v in t.items()} for side, t in times.items()}
            n_prefill, n_decode = args.batch * args.prompt_len, args.batch * (args.new_tokens - 1)
            for kind in ("prefill", "decode"):
                rate = {side: n_prefill / m["prefill"] if kind == "prefill" else n_decode / (m["genN"] - m["gen1"])
                        for side, m in med.items()}
                rows.append(dict(row=f"{kind} {dtype}", jax_tok_s=rate["jax"], hf_tok_s=rate["hf"],
                                 ratio=rate["jax"] / rate["hf"]))
            checks[dtype] = dict(
                max_abs_logit_diff=float(np.abs(np.asarray(j["logits"], np.float32) - h["logits"].float().numpy()).max()),
                greedy_tokens_equal=float((np.asarray(j[f"gen{args.new_tokens}"])
                                           == h[f"gen{args.new_tokens}"].numpy()).mean()),
                seconds=times)
            del runners, j, h
            print(f"  {dtype} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    foreign = meter.foreign_cores()

    header = f"allocator: {info['allocator']}, {threads} core(s), {args.clock} clock"
    table = [f"| {header} | prosv-jax tok/s | HF tok/s | ratio (jax/HF) |", "|---|---:|---:|---:|"]
    table += [f"| {r['row']} | {r['jax_tok_s']:.1f} | {r['hf_tok_s']:.1f} | {r['ratio']:.2f} |" for r in rows]
    print("\n" + "\n".join(table))
    for dtype, c in checks.items():
        secs = {side: {k: [round(x, 3) for x in v] for k, v in t.items()} for side, t in c["seconds"].items()}
        print(f"{dtype}: max |logit diff| {c['max_abs_logit_diff']:.2e}, greedy tokens equal "
              f"{100 * c['greedy_tokens_equal']:.0f}%; seconds {secs}")
    load_note = (f"other processes used {foreign:.2f} of {os.cpu_count()} cores on average during the run"
                 + (" -- the machine was shared: numbers are noisy" if foreign > 0.2 else ""))
    print(f"HF: {notes.get('hf')}; total {time.perf_counter() - t_start:.0f} s; {load_note}")

    if args.no_write:
        return
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = args.out or os.path.join(RESULTS_DIR, f"forward-{datetime.date.today().isoformat()}.md")
    command = "python benchmarks/forward.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if os.environ.get("LD_PRELOAD"):
        command = f"LD_PRELOAD={os.environ['LD_PRELOAD']} " + command
    record = dict(command=command, machine=info, config=vars(args), shape=shape, rows=rows, checks=checks,
                  foreign_load_cores=round(foreign, 2),
                  hf=notes.get("hf"), time=datetime.datetime.now().isoformat(timespec="seconds"))
    machine_line = (f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; jax {info['jax']}, "
                    f"torch {info['torch']}, transformers {info['transformers']}; allocator {info['allocator']}")
    with open(path, "a") as f:
        f.write(f"## forward benchmark, {record['time']}, {info['allocator']}, {threads} core(s)\n\n`{command}`\n\n{machine_line}\n\n"
                f"{shape}. HF: {notes.get('hf')}. Load: {load_note}.\n\n" + "\n".join(table) + "\n\n```json\n"
                + json.dumps(record, indent=1) + "\n```\n\n")
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
