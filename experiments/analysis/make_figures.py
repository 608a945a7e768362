"""Regenerates the scaling figures, summary.json and tables.md from a sweep's tidy table.

    python experiments/analysis/make_figures.py --csv experiments/results/scaling_wide.csv --out experiments/results \
        --data-check outputs/scaling/data_check/results.csv

Writes heatmaps_beta_x_eta_alpha.png, lr_sweeps.png, exponents.png, baselines.png, transfer.png, summary.json
(fitted exponents with the deciding 95% interval from seeds and grid and a verdict per prediction, the older OLS
and seed-bootstrap intervals, optima per width, plateau and stability edges, the data check, baselines, transfer)
and tables.md (the same as Markdown tables), and prints the exponents.
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
    parser.add_argument("--data-check", default="",
                        help="results.csv of the data_check spec: does eta_v* move with more data at that width?")
    args = parser.parse_args(argv)

    from prosv_jax.scaling.analysis import make_figures

    summary = make_figures(args.csv, args.out, metric=args.metric, n_boot=args.n_boot,
                           data_check_csv=args.data_check or None)
    for e in summary["exponents"]:
        print(f"{e['arm']:22s} {e['lr']:9s} {e['fixed']:10s} slope {e['slope_weighted']:+.3f}  95% (seeds and grid) "
              f"[{e['ci95'][0]:+.2f}, {e['ci95'][1]:+.2f}]  predicted {e['predicted']:+.1f}: {e['verdict']}  "
              f"(widths located: {e['widths_located']})")
        print(f"{'':43s} 3-point OLS {e['slope']:+.3f} [{e['ols_ci95'][0]:+.2f}, {e['ols_ci95'][1]:+.2f}]  seed "
              f"bootstrap [{e['boot_ci95'][0]:+.2f}, {e['boot_ci95'][1]:+.2f}]")
        for side in ("lower", "upper"):
            edge = e[f"plateau_{side}_edge"]
            print(f"{'':43s} plateau {side} edge slope {edge['slope']:+.3f} [{edge['ci95'][0]:+.2f}, "
                  f"{edge['ci95'][1]:+.2f}]: {edge['verdict']}  edges {_fmt(edge['edges'])}")
        print(f"{'':43s} optima {_fmt(e['vertex_optima'])}  stability edge {_fmt(e['stability_edge'])}")
    for d in summary.get("data_shift", []):
        print(f"more data at n = {d['width']}: batch {d['sweep_batch_size']} -> {d['more_data_batch_size']}, "
              f"{d['lr']}* {d['sweep_lr_opt']:.3g} -> {d['more_data_lr_opt']:.3g} ({d['shift_decades']:+.2f} +- "
              f"{d['shift_se']:.2f} decades)")
    print(f"figures, summary.json and tables.md in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
