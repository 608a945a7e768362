"""Wall clock of `prosv-jax demo` as a user runs it: quick and default, cold (model not converted yet) and warm.

Each run is a fresh `prosv-jax demo` process into a fresh output folder; "cold" also starts from an empty
PROSV_JAX_CACHE, so it includes the one-off dequantization of SmolLM2-135M-Instruct. The targets of the real-models
issue: the default under 10 minutes cold on 2 cores, `--quick` under 3. The table gives the wall clock, the stage
times the demo records, the held-out losses and concept-word rates, and the load average around each run (other jobs
on the machine slow it down; a fair number wants a quiet machine); the JSON record keeps every answer.

    python benchmarks/demo.py                 # quick cold, quick warm, default cold, default warm
    python benchmarks/demo.py --runs quick    # only the quick pair
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
from forward import append_results  # noqa: E402

TARGET_SECONDS = {"quick": 180, "default": 600}


def run_demo(kind: str, cache: str, out: str) -> dict:
    """One `prosv-jax demo` process; its wall clock, the load around it, and what its summary.json records."""
    command = [sys.executable, "-m", "prosv_jax.cli", "demo", "--no-progress", "--out", out]
    command += ["--quick"] if kind == "quick" else []
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "PROSV_JAX_CACHE": cache}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"demo failed ({kind}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return dict(wall_s=round(wall, 1), stages=summary["seconds"], heldout_loss=summary["heldout_loss"],
                concept_word_rate=summary["concept_word_rate"], load=(round(load_before, 2), round(os.getloadavg()[0], 2)),
                instructions=summary["instructions"], answers=summary["answers"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", choices=("quick", "default", "both"), default="both")
    args = p.parse_args(argv)
    kinds = ["quick", "default"] if args.runs == "both" else [args.runs]
    rows, table = {}, ["| run | wall s | target s | stages (s) | held-out loss unsteered / PrOSV / FSSV | concept "
                       "words unsteered / PrOSV / FSSV | load avg before, after |", "|---|---:|---:|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as root:
        for kind in kinds:
            cache = os.path.join(root, f"cache-{kind}")
            for state in ("cold", "warm"):
                name = f"{kind} {state}"
                result = run_demo(kind, cache, os.path.join(root, f"out-{kind}-{state}"))
                rows[name] = result
                loss, rate = result["heldout_loss"], result["concept_word_rate"]
                table.append(f"| {name} | {result['wall_s']} | {TARGET_SECONDS[kind]} | {result['stages']} | "
                             f"{loss['unsteered']:.3f} / {loss['PrOSV']:.3f} / {loss['FSSV']:.3f} | "
                             f"{rate['unsteered']:.0%} / {rate['PrOSV']:.0%} / {rate['FSSV']:.0%} | "
                             f"{result['load'][0]}, {result['load'][1]} |")
                print(table[-1], flush=True)
    print("\n".join(table))
    path = append_results("demo", argv, f"`prosv-jax demo` wall clock, {os.cpu_count()} cores, "
                          "cold = empty model cache (includes the one-off GGUF dequantization).", table, {"rows": rows})
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
