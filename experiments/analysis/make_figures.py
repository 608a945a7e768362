"""Regenerates the scaling figures and summary.json from a sweep's tidy table.

    python experiments/analysis/make_figures.py --csv experiments/results/scaling_cpu.csv --out experiments/results

Writes heatmaps_beta_x_eta_alpha.png, lr_sweeps.png, exponents.png, baselines.png and summary.json (fitted
exponents with OLS and bootstrap 95% intervals, optima per width, stability edges, baselines), and prints the
exponents.
"""

from __future__ import annotations

import argparse
import sys


def _fmt(values: dict) -> str:
    return "{" + ", ".join(f"{k}: {'-' if v is None else f'{v:.3g}'}" for k, v in values.items()) + "}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default="experiments/results/scaling_cpu.csv")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--metric", default="eval_kl")
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args(argv)

    from prosv_jax.scaling.analysis import make_figures

    summary = make_figures(args.csv, args.out, metric=args.metric, n_boot=args.n_boot)
    for e in summary["exponents"]:
        print(f"{e['arm']:12s} {e['lr']:9s} {e['fixed']:10s} slope {e['slope']:+.3f}  OLS 95% "
              f"[{e['ols_ci95'][0]:+.2f}, {e['ols_ci95'][1]:+.2f}]  bootstrap 95% [{e['boot_ci95'][0]:+.2f}, "
              f"{e['boot_ci95'][1]:+.2f}]  predicted {e['predicted']:+.1f}")
        print(f"{'':33s} plateau-midpoint slope {e['plateau_slope']:+.3f}  bootstrap 95% "
              f"[{e['plateau_boot_ci95'][0]:+.2f}, {e['plateau_boot_ci95'][1]:+.2f}]; stability-edge slope "
              f"{e['stability_edge_slope']:+.3f}")
        print(f"{'':33s} optima {_fmt(e['optima'])}  plateau {_fmt(e['plateau_optima'])}  edge "
              f"{_fmt(e['stability_edge'])}")
    print(f"figures and summary.json in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
