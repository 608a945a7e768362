"""Runs (or resumes) a planted-SV width sweep and writes its tidy table; or says first what it will cost.

    python experiments/scaling/run_sweep.py --spec wide --estimate             # time it here first (measures steps)
    python experiments/scaling/run_sweep.py --spec wide --out outputs/scaling/wide
    python experiments/scaling/run_sweep.py --spec cpu4 --out outputs/scaling/cpu_sweep   # the 4-width sweep
    python experiments/scaling/run_sweep.py --spec gpu --estimate --flops-per-s 2e14        # an accelerator's time

Specs (`prosv_jax/scaling/specs.py`): cpu4 (64-512, fixed data), wide (64-2048 with data growing with width,
coarse then fine grids, the baselines, transfer), gpu (256-8192, data growing as n), data_check (wide's eta_v arms
at n = 1024 with more data: does the optimum move?), steps_check (wide's eta_v arms at 64 to 1024 with twice
the steps: does the 48-step budget steepen the slope?). Rerunning the same command resumes:
finished groups are skipped. On several hosts, start the same command on each with --distributed (SLURM, Open
MPI, Cloud TPU) or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set; --out must be shared.
The table lands in <out>/results.csv; the figures come from experiments/analysis/make_figures.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="wide", choices=("cpu4", "wide", "gpu", "data_check", "steps_check"),
                        help="which sweep (default: wide)")
    parser.add_argument("--out", default="", help="the sweep's folder (default: outputs/scaling/<spec>)")
    parser.add_argument("--widths", type=int, nargs="+", default=None,
                        help="run only these of the spec's widths (the same folder takes the rest later)")
    parser.add_argument("--data-exponent", type=float, default=None,
                        help="wide/gpu: data grows as (n / 64)^this (batch and set; default: the spec's)")
    parser.add_argument("--estimate", action="store_true", help="print the cost per width and stop")
    parser.add_argument("--flops-per-s", type=float, default=0.0,
                        help="with --estimate: a sustained FLOP rate instead of timing steps here")
    parser.add_argument("--progress", action="store_true", help="tqdm bars per group")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-host job the cluster describes (SLURM, Open MPI, Cloud TPU)")
    parser.add_argument("--copy-csv", default="", help="also copy results.csv here (e.g. experiments/results/)")
    args = parser.parse_args(argv)

    from prosv_jax import distributed

    distributed.initialize_from_env(auto_detect=args.distributed)  # before anything starts a jax backend

    from prosv_jax.scaling.cost import estimate
    from prosv_jax.scaling.specs import SPECS
    from prosv_jax.scaling.sweep import run_sweep

    kwargs = {}
    if args.data_exponent is not None:
        if args.spec == "cpu4":
            parser.error("--data-exponent applies to every spec but cpu4 (cpu4 keeps its data fixed)")
        kwargs["data_exponent"] = args.data_exponent
    spec = SPECS[args.spec](**kwargs)
    if args.widths is not None:
        try:
            spec = spec.restricted(args.widths)
        except ValueError as error:
            parser.error(str(error))
    if args.estimate:
        cost = estimate(spec, measure=not args.flops_per_s, flops_per_s=args.flops_per_s or None)
        print(f"total: {cost['tflop']:.0f} TFLOP, ~{cost['seconds'] / 3600:.2f} h "
              f"({'measured here' if not args.flops_per_s else f'at {args.flops_per_s:.3g} FLOP/s'}; "
              "compilation and scoring not included)")
        return 0
    out = args.out or os.path.join("outputs", "scaling", args.spec)
    with distributed.failing_together():  # an error on one host stops the others
        table, info = run_sweep(spec, out, progress=args.progress, log=lambda m: print(m, flush=True))
    print(json.dumps(info, indent=1))
    print(f"{len(table)} runs -> {os.path.join(out, 'results.csv')}")
    if args.copy_csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.copy_csv)) or ".", exist_ok=True)
        table.to_csv(args.copy_csv, index=False, float_format="%.6g")
        print(f"copied to {args.copy_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
