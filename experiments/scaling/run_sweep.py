"""Runs (or resumes) the planted-SV width sweep and writes its tidy table.

    python experiments/scaling/run_sweep.py --out outputs/scaling/cpu_sweep            # the committed sweep
    python experiments/scaling/run_sweep.py --out outputs/scaling/cpu_sweep --widths 64 128 256 512 1024

Rerunning the same command resumes: finished groups are skipped. The table lands in <out>/results.csv; the
figures come from experiments/analysis/make_figures.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/scaling/cpu_sweep")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--progress", action="store_true", help="tqdm bars per group")
    parser.add_argument("--copy-csv", default="", help="also copy results.csv here (e.g. experiments/results/)")
    args = parser.parse_args(argv)

    from prosv_jax.scaling.sweep import default_spec, run_sweep

    spec = default_spec(args.widths)
    table, info = run_sweep(spec, args.out, progress=args.progress, log=lambda m: print(m, flush=True))
    print(json.dumps(info, indent=1))
    print(f"{len(table)} runs -> {os.path.join(args.out, 'results.csv')}")
    if args.copy_csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.copy_csv)) or ".", exist_ok=True)
        table.to_csv(args.copy_csv, index=False, float_format="%.6g")
        print(f"copied to {args.copy_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
