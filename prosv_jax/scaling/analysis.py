"""Analysis of a width sweep's tidy table: optimal learning rates, their width exponents with intervals, the
stability edge, heatmaps, and the baselines (method.md section 2 predicts eta_alpha ~ n^+1/2, eta_v ~ n^-1/2).

The score of a run is its final metric (default: eval KL to the teacher, lower is better); a diverged run scores
at least the unsteered model's KL (it did no better than no steering). Scores are averaged over seeds in log10.

The deciding fit (`vertex_fit`, `fit_power_weighted`, `verdict`): per width, a parabola in log-lr fitted by least
squares to every run near the best grid value (all seeds, each with its own intercept), its vertex with a
delta-method error and the grid's resolution; then a weighted fit of log10(lr*) on log10(n) whose interval also grows with any
excess scatter (Birge ratio), and a verdict per prediction: consistent, excluded, or undecided at this precision.

Kept for comparison with the 4-width sweep: the vertex of the 3-point parabola through the best grid point and its
neighbours (`optimum_1d`; at a grid end the end point, flagged `at_edge`), an OLS fit with a t-interval, and a
bootstrap over seeds (resample seeds within each width, refit) that sees the seed noise only.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from prosv_jax.files import write_json

__all__ = ["bootstrap_exponent", "exponent_table", "fit_power", "fit_power_weighted", "make_figures", "optimal_lrs",
           "optimum_1d", "plateau_edges", "plot_baselines", "plot_exponents", "plot_heatmaps", "plot_lr_curves",
           "plot_transfer", "score", "stability_edge", "transfer_table", "verdict", "vertex_fit", "vertex_optima"]

SYMBOL = {"factor_lr": "eta_alpha", "direction_lr": "eta_v"}
HYPER = ("beta", "factor_lr", "c", "direction_lr")  # the columns that make one grid cell (seeds aside)


# --- scores and optima ---------------------------------------------------------------------------------------

def score(table, metric: str = "eval_kl", fail_column: str | None = "eval_plain_kl") -> np.ndarray:
    """The metric per row; diverged rows (or non-finite ones) score at least `fail_column` (no steering)."""
    value = table[metric].to_numpy(np.float64).copy()
    diverged = table["diverged"].to_numpy(bool) if "diverged" in table else np.zeros(len(value), bool)
    if fail_column is not None and fail_column in table:
        fail = table[fail_column].to_numpy(np.float64)
        bad = diverged | ~np.isfinite(value)
        value[bad] = np.fmax(np.where(np.isfinite(value[bad]), value[bad], -np.inf), fail[bad])
    return value


def _log_scores(table, metric: str) -> np.ndarray:
    return np.log10(np.maximum(score(table, metric), 1e-12))


def optimum_1d(lrs: Sequence[float], values: Sequence[float], method: str = "parabola", tol: float = 0.1
               ) -> tuple[float, bool]:
    """(lr*, at_edge) minimising `values` (e.g. mean log10 scores) over a grid of learning rates.

    method "parabola": the vertex of the parabola in log10 lr through the best grid point and its neighbours.
    method "plateau": the log-midpoint of the contiguous run of grid points within `tol` of the best (robust
    when the optimum is a flat plateau, whose midpoint moves with both of its ends).
    """
    lrs, values = np.asarray(lrs, np.float64), np.asarray(values, np.float64)
    order = np.argsort(lrs)
    lrs, values = lrs[order], values[order]
    ok = np.isfinite(values)
    if not ok.any():
        return float("nan"), True
    i = int(np.nanargmin(np.where(ok, values, np.inf)))
    last = len(lrs) - 1
    if method == "plateau":
        lo, hi = _plateau_span(values, tol)
        return float(np.sqrt(lrs[lo] * lrs[hi])), lo == 0 or hi == last
    if method != "parabola":
        raise ValueError(f"method must be 'parabola' or 'plateau', got {method!r}")
    if i == 0 or i == last or not (ok[i - 1] and ok[i + 1]):
        return float(lrs[i]), i == 0 or i == last
    x = np.log10(lrs[i - 1:i + 2])
    a, b, _ = np.polyfit(x, values[i - 1:i + 2], 2)
    vertex = -b / (2 * a) if a > 0 else x[1]
    return float(10 ** np.clip(vertex, x[0], x[2])), False


def optimal_lrs(table, lr_col: str, metric: str = "eval_kl", by: Sequence[str] = ("width",),
                method: str = "parabola"):
    """Per group of `by` (e.g. width): lr*, whether it sits at the grid's edge, and the best mean log10 score."""
    import pandas as pd

    data = table.assign(_log=_log_scores(table, metric))
    rows = []
    for key, part in data.groupby(list(by), sort=True):
        means = part.groupby(lr_col)["_log"].mean()
        lr_opt, edge = optimum_1d(means.index.to_numpy(), means.to_numpy(), method)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "lr_opt": lr_opt, "at_edge": edge, "best_log10": float(means.min()),
                     "n_seeds": int(part["seed"].nunique()) if "seed" in part else 1})
    return pd.DataFrame(rows)


def fit_power(widths: Sequence[float], lrs: Sequence[float], level: float = 0.95) -> dict:
    """OLS log10(lr) = a + k log10(n): k, its standard error and a t-interval (nan interval with 2 points)."""
    from scipy import stats

    x, y = np.log10(np.asarray(widths, np.float64)), np.log10(np.asarray(lrs, np.float64))
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return {"slope": float("nan"), "intercept": float("nan"), "se": float("nan"), "ci": [float("nan")] * 2,
                "points": int(len(x))}
    k, a = np.polyfit(x, y, 1)
    dof = len(x) - 2
    if dof > 0:
        resid = y - (a + k * x)
        se = math.sqrt(resid @ resid / dof / ((x - x.mean()) @ (x - x.mean())))
        t = stats.t.ppf(0.5 + level / 2, dof)
        ci = [k - t * se, k + t * se]
    else:
        se, ci = float("nan"), [float("nan"), float("nan")]
    return {"slope": float(k), "intercept": float(a), "se": float(se), "ci": [float(c) for c in ci],
            "points": int(len(x))}


def bootstrap_exponent(table, lr_col: str, metric: str = "eval_kl", n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95, method: str = "parabola") -> dict:
    """Percentile interval of the fitted exponent when the seeds of each width are resampled with replacement."""
    rng = np.random.default_rng(seed)
    data = table.assign(_log=_log_scores(table, metric))
    # width -> (lrs [L], per-seed log scores [S, L])
    cells = {}
    for width, part in data.groupby("width"):
        pivot = part.pivot_table(index="seed", columns=lr_col, values="_log", aggfunc="mean")
        pivot = pivot.dropna(axis=1)  # the lrs every seed ran (a coarse arm's single-seed points drop out)
        if pivot.shape[1]:
            cells[width] = (pivot.columns.to_numpy(np.float64), pivot.to_numpy(np.float64))
    widths = sorted(cells)
    if len(widths) < 2:  # no slope to resample
        return {"ci": [float("nan")] * 2, "median": float("nan"), "n_boot": 0,
                "seeds_per_width": int(min((c[1].shape[0] for c in cells.values()), default=0))}
    slopes = []
    for _ in range(n_boot):
        opts = []
        for w in widths:
            lrs, per_seed = cells[w]
            pick = rng.integers(0, per_seed.shape[0], per_seed.shape[0])
            opts.append(optimum_1d(lrs, np.nanmean(per_seed[pick], axis=0), method)[0])
        slopes.append(fit_power(widths, opts)["slope"])
    slopes = np.asarray(slopes)
    tail = (1 - level) / 2 * 100
    return {"ci": [float(np.nanpercentile(slopes, tail)), float(np.nanpercentile(slopes, 100 - tail))],
            "median": float(np.nanmedian(slopes)), "n_boot": n_boot,
            "seeds_per_width": int(min(cells[w][1].shape[0] for w in widths))}


# --- optima with intervals that count the grid and the seeds --------------------------------------------------

def vertex_fit(lrs: Sequence[float], log_scores: Sequence[float], groups: Sequence | None = None,
               window: float = math.log10(2) + 1e-9, min_points: int = 4) -> dict:
    """The optimum of a learning-rate sweep and its standard error, from every run (all seeds) near the best.

    Least squares of log10 score on a parabola in log10 lr over the runs whose lr lies within `window` decades
    of the best grid value (by mean over seeds), widened to the `min_points` nearest grid values when fewer fall
    inside. With `groups` (each run's seed) every seed gets its own intercept: a seed's init and data order shift
    its whole curve up or down, and pairing the learning rates within a seed takes that shift out of the vertex.
    The vertex has a standard error (decades) of two parts: `se_fit`, the delta-method error of the vertex (the
    scatter left in the residuals), and `se_grid` = step / sqrt(12) for the local grid step, which bounds what a
    parabola can misplace on a curve that is not one (an asymmetric optimum). On synthetic sweeps the interval
    covers the true optimum at least at its stated rate (tests/test_scaling.py). `located` is False when the best
    grid value is the grid's end, the parabola opens downwards, or its vertex lies outside the fitted points.
    """
    x = np.log10(np.asarray(lrs, np.float64))
    y = np.asarray(log_scores, np.float64)
    g = np.zeros(len(x), np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, g = x[ok], y[ok], g[ok]
    grid = np.unique(x)
    nan = {"log10_lr": float("nan"), "lr": float("nan"), "se": float("inf"), "located": False, "points": 0}
    if grid.size < 3:
        return nan
    means = np.asarray([y[x == v].mean() for v in grid])
    best = grid[int(np.argmin(means))]
    near = grid[np.abs(grid - best) <= window]
    if near.size < min_points:
        near = grid[np.argsort(np.abs(grid - best), kind="stable")[:min_points]]
    use = np.isin(x, near)
    u, v = x[use] - best, y[use]
    levels = np.unique(g[use])
    intercepts = (g[use][:, None] == levels[None, :]).astype(np.float64)  # [m, seeds]: one intercept per seed
    design = np.concatenate([intercepts, np.stack([u, u * u], axis=1)], axis=1)  # [m, seeds + 2]
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    dof = len(u) - design.shape[1]
    c1, c2 = coef[-2], coef[-1]
    edge = best in (grid[0], grid[-1])
    if c2 <= 0:
        return {**nan, "log10_lr": float(best), "lr": float(10 ** best), "points": int(len(u)), "at_edge": edge}
    vertex = -c1 / (2 * c2)
    inside = near.min() - best <= vertex <= near.max() - best
    if dof > 0:
        sigma2 = float(((v - design @ coef) ** 2).sum() / dof)
        cov = sigma2 * np.linalg.pinv(design.T @ design)
        grad = np.zeros(design.shape[1])
        grad[-2:] = [-1 / (2 * c2), -vertex / c2]  # d vertex / d (c1, c2); the intercepts do not move it
        se_fit = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    else:
        se_fit = float("inf")
    se_grid = float(np.median(np.diff(np.sort(near)))) / math.sqrt(12)
    return {"log10_lr": float(best + vertex), "lr": float(10 ** (best + vertex)),
            "se": float(math.hypot(se_fit, se_grid)), "se_fit": se_fit, "se_grid": se_grid,
            "located": bool(inside and not edge), "points": int(len(u)), "dof": int(dof), "at_edge": edge}


def fit_power_weighted(widths: Sequence[float], log10_lrs: Sequence[float], se: Sequence[float],
                       level: float = 0.95) -> dict:
    """Weighted least squares of log10 lr* on log10 n (weights 1/se^2), with the slope's error scaled up by the
    Birge ratio sqrt(chi^2 / dof) when the points scatter more than their errors say, and a t-interval with
    (points - 2) degrees of freedom: the interval holds both the per-width errors and the scatter."""
    from scipy import stats

    x = np.log10(np.asarray(widths, np.float64))
    y, s = np.asarray(log10_lrs, np.float64), np.asarray(se, np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(s) & (s > 0)
    x, y, s = x[ok], y[ok], s[ok]
    out = {"slope": float("nan"), "se": float("nan"), "ci": [float("nan")] * 2, "points": int(len(x)),
           "birge": float("nan")}
    if len(x) < 3:
        return out
    w = 1 / s ** 2
    xm = (w * x).sum() / w.sum()
    sxx = (w * (x - xm) ** 2).sum()
    slope = (w * (x - xm) * (y - (w * y).sum() / w.sum())).sum() / sxx
    intercept = (w * y).sum() / w.sum() - slope * xm
    dof = len(x) - 2
    birge = math.sqrt(max(1.0, float((w * (y - intercept - slope * x) ** 2).sum()) / dof))
    se_slope = birge / math.sqrt(sxx)
    t = stats.t.ppf(0.5 + level / 2, dof)
    return {"slope": float(slope), "intercept": float(intercept), "se": float(se_slope),
            "ci": [float(slope - t * se_slope), float(slope + t * se_slope)], "points": int(len(x)),
            "birge": float(birge)}


RESOLUTION = 0.25  # an interval this narrow (half-width) tells an exponent of +-1/2 from 0 and from +-1


def verdict(ci: Sequence[float], predicted: float, resolution: float = RESOLUTION) -> str:
    """'excluded': the interval misses the prediction; 'consistent': it holds it and is at most +-resolution
    wide; 'undecided': it holds it but is wider (or could not be computed)."""
    lo, hi = ci
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undecided"
    if not lo <= predicted <= hi:
        return "excluded"
    return "consistent" if (hi - lo) / 2 <= resolution else "undecided"


def vertex_optima(table, lr_col: str, metric: str = "eval_kl") -> list[dict]:
    """`vertex_fit` per width over every run of `table` (one slice of the grid: the other hyperparameters fixed)."""
    data = table.assign(_log=_log_scores(table, metric))
    return [{"width": int(width), **vertex_fit(part[lr_col].to_numpy(np.float64), part["_log"].to_numpy(),
                                               part["seed"].to_numpy() if "seed" in part else None)}
            for width, part in data.groupby("width", sort=True)]


def plateau_edges(table, lr_col: str, metric: str = "eval_kl", tol: float = 0.1) -> list[dict]:
    """Per width, the lower and upper edge of the plateau: the outermost grid values of the contiguous run within
    `tol` decades of the best mean score. Each edge's error (decades) is the grid's resolution there (a uniform
    position inside the step beyond it: step / sqrt(12)) plus the scatter of the per-seed edges."""
    data = table.assign(_log=_log_scores(table, metric))
    out = []
    for width, part in data.groupby("width", sort=True):
        pivot = part.pivot_table(index="seed", columns=lr_col, values="_log", aggfunc="mean").sort_index(axis=1)
        pivot = pivot.dropna(axis=1)  # the lrs every seed ran
        grid = np.log10(pivot.columns.to_numpy(np.float64))
        row = {"width": int(width)}
        for name, side in (("lower", 0), ("upper", 1)):
            j = _edge_index(pivot.mean(axis=0).to_numpy(), tol, side)
            value, censored = (float("nan"), True) if j is None else (float(grid[j]), j in (0, len(grid) - 1))
            per_seed = [np.nan if k is None else grid[k] for k in (_edge_index(r, tol, side) for r in pivot.to_numpy())]
            j = 0 if j is None else j
            # The step beyond the edge: to the next grid value below a lower edge, above an upper one.
            step = np.diff(grid)[min(max(j - (side == 0), 0), len(grid) - 2)] if len(grid) > 1 else float("nan")
            seed_var = float(np.nanvar(per_seed, ddof=1) / len(per_seed)) if len(per_seed) > 1 else 0.0
            row[name] = {"log10_lr": value, "se": float(math.sqrt(step ** 2 / 12 + seed_var)), "censored": censored}
        out.append(row)
    return out


def _edge_index(values: np.ndarray, tol: float, side: int) -> int | None:
    """The grid index of the plateau's lower (side 0) or upper (side 1) edge; None when no value is finite."""
    return _plateau_span(values, tol)[side] if np.isfinite(values).any() else None


def _plateau_span(values: np.ndarray, tol: float) -> tuple[int, int]:
    i = int(np.nanargmin(np.where(np.isfinite(values), values, np.inf)))
    near = np.isfinite(values) & (values <= values[i] + tol)
    lo, hi = i, i
    while lo > 0 and near[lo - 1]:
        lo -= 1
    while hi < len(values) - 1 and near[hi + 1]:
        hi += 1
    return lo, hi


def stability_edge(table, lr_col: str, by: Sequence[str] = ("width",)):
    """Per group: the largest lr below the smallest lr at which some seed diverged (`censored`: none diverged,
    the edge lies beyond the grid and the value is the grid's largest lr)."""
    import pandas as pd

    rows = []
    for key, part in table.groupby(list(by), sort=True):
        failed = part.groupby(lr_col)["diverged"].any().sort_index()
        lrs = failed.index.to_numpy(np.float64)
        first = np.flatnonzero(failed.to_numpy())
        key = key if isinstance(key, tuple) else (key,)
        if first.size == 0:
            rows.append({**dict(zip(by, key)), "edge": float(lrs[-1]), "first_fail": float("nan"), "censored": True})
        else:
            j = first[0]
            rows.append({**dict(zip(by, key)), "edge": float(lrs[j - 1]) if j > 0 else float("nan"),
                         "first_fail": float(lrs[j]), "censored": False})
    return pd.DataFrame(rows)


def _select(table, **equal):
    mask = np.ones(len(table), bool)
    for column, value in equal.items():
        mask &= np.isclose(table[column].to_numpy(np.float64), value) if isinstance(value, float) else (
            table[column].to_numpy() == value)
    return table[mask]


STUDIES = (  # (the coarse arm and the arm refining it, lr column, the column held fixed per fit, predicted exponent)
    (("alpha_lr", "alpha_fine"), "factor_lr", "beta", 0.5),
    (("alpha_plateau",), "factor_lr", "beta", 0.5),  # the wide sweep's beta <= 1: read its plateau_*_edge
    (("v_lr", "v_fine"), "direction_lr", "c", -0.5),
    # alpha frozen at 1, v only: dz = eta_v per coordinate, so eta_v* should not move with width.
    (("fixed_alpha",), "direction_lr", "alpha0", 0.0),
)


def _edge_fit(edges: list[dict], side: str, predicted: float) -> dict:
    usable = [e for e in edges if not e[side]["censored"] and np.isfinite(e[side]["log10_lr"])]
    fit = fit_power_weighted([e["width"] for e in usable], [e[side]["log10_lr"] for e in usable],
                             [e[side]["se"] for e in usable])
    return {"slope": fit["slope"], "ci95": fit["ci"], "verdict": verdict(fit["ci"], predicted),
            "edges": {e["width"]: (None if e[side]["censored"] else 10 ** e[side]["log10_lr"]) for e in edges}}


def exponent_table(table, metric: str = "eval_kl", n_boot: int = 1000, studies=STUDIES) -> list[dict]:
    """Fitted width exponents of the optimal learning rates against the predictions, one row per slice of a study
    (e.g. eta_alpha* at beta = 4).

    The deciding interval (`ci95`, `verdict`) is the weighted fit of the per-width vertices (`vertex_fit`: seeds
    and grid) over the widths whose optimum lies inside the grid. Kept beside it: the OLS interval of the 3-point
    parabola optima and the seed bootstrap (the earlier sweep's numbers), the plateau's edges (`plateau_edges`:
    where eta_alpha is flat, how its ends move with width) and the stability edge.
    """
    out = []
    for arms, lr_col, other, predicted in studies:
        part = table[table["arm"].isin(arms)]
        for value in sorted(part[other].unique()) if len(part) else []:
            sub = _select(part, **{other: float(value)})
            opt = optimal_lrs(sub, lr_col, metric)
            fit = fit_power(opt["width"], opt["lr_opt"])
            boot = bootstrap_exponent(sub, lr_col, metric, n_boot=n_boot)
            vertices = vertex_optima(sub, lr_col, metric)
            located = [v for v in vertices if v["located"]]
            weighted = fit_power_weighted([v["width"] for v in located], [v["log10_lr"] for v in located],
                                          [v["se"] for v in located])
            plateau = optimal_lrs(sub, lr_col, metric, method="plateau")
            plateau_fit = fit_power(plateau["width"], plateau["lr_opt"])
            edges = plateau_edges(sub, lr_col, metric)
            edge = stability_edge(sub, lr_col)
            edge_fit = fit_power(edge["width"][~edge["censored"]], edge["edge"][~edge["censored"]])
            inside = lambda ci: bool(ci[0] <= predicted <= ci[1])  # noqa: E731
            out.append({
                "arm": "+".join(a for a in arms if a in set(sub["arm"])), "lr": SYMBOL[lr_col],
                "fixed": f"{other}={value:g}", "predicted": predicted,
                "slope_weighted": weighted["slope"], "ci95": weighted["ci"], "birge": weighted["birge"],
                "verdict": verdict(weighted["ci"], predicted),
                "widths_located": [v["width"] for v in located],
                "vertex_optima": {v["width"]: v["lr"] for v in vertices},
                "vertex_se_decades": {v["width"]: v["se"] for v in vertices},
                "runs_per_width": {int(w): int(n) for w, n in sub.groupby("width").size().items()},
                "optima_at_grid_edge": {int(w): bool(e) for w, e in zip(opt["width"], opt["at_edge"])},
                "slope": fit["slope"], "ols_se": fit["se"], "ols_ci95": fit["ci"], "boot_ci95": boot["ci"],
                "seeds_per_width": boot["seeds_per_width"], "prediction_in_ols_ci": inside(fit["ci"]),
                "prediction_in_boot_ci": inside(boot["ci"]), "any_optimum_at_grid_edge": bool(opt["at_edge"].any()),
                "optima": {int(w): float(lr) for w, lr in zip(opt["width"], opt["lr_opt"])},
                "stability_edge": {int(w): (None if c else float(e)) for w, e, c in
                                   zip(edge["width"], edge["edge"], edge["censored"])},
                "plateau_slope": plateau_fit["slope"], "plateau_ols_ci95": plateau_fit["ci"],
                "plateau_optima": {int(w): float(lr) for w, lr in zip(plateau["width"], plateau["lr_opt"])},
                "plateau_lower_edge": _edge_fit(edges, "lower", predicted),
                "plateau_upper_edge": _edge_fit(edges, "upper", predicted),
                "stability_edge_slope": edge_fit["slope"], "stability_edge_ci95": edge_fit["ci"],
            })
    return out


# --- figures ----------------------------------------------------------------------------------------------------

def plot_heatmaps(table, path: str, arm: Sequence[str] = ("alpha_lr", "alpha_plateau"), x: str = "factor_lr",
                  y: str = "beta",
                  metric: str = "eval_kl") -> None:
    """One panel per width: mean log10 score over (y, x); x marks cells where a seed diverged, a star the best."""
    from prosv_jax.figures import save_figure, subplots

    part = table[table["arm"].isin(arm)]
    if not len(part):
        raise ValueError(f"no runs of the arms {tuple(arm)} in this table: nothing to draw over {y} x {x}")
    part = part.assign(_log=_log_scores(part, metric))
    widths = sorted(part["width"].unique())
    fig, axes = subplots(1, len(widths), figsize=(3.6 * len(widths), 3.3), squeeze=False)
    for ax, width in zip(axes[0], widths):
        sub = part[part["width"] == width]
        grid = sub.pivot_table(index=y, columns=x, values="_log", aggfunc="mean").sort_index()
        div = sub.pivot_table(index=y, columns=x, values="diverged", aggfunc="max").reindex_like(grid)
        values = grid.to_numpy()
        best = np.nanmin(values)
        # Colour: log10 score; per width, from its best cell to best + 1.5 (a 30x worse score).
        image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis_r", vmin=best, vmax=best + 1.5)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        ax.set_xticks(range(grid.shape[1]), [f"{v:.3g}" for v in grid.columns], rotation=90, fontsize=7)
        ax.set_yticks(range(grid.shape[0]), [f"{v:.3g}" for v in grid.index], fontsize=7)
        for (i, j), bad in np.ndenumerate(div.to_numpy().astype(bool)):
            if bad:
                ax.text(j, i, "x", ha="center", va="center", color="red", fontsize=9)
        bi, bj = np.unravel_index(np.nanargmin(grid.to_numpy()), grid.shape)
        ax.plot(bj, bi, marker="*", color="white", markersize=12, markeredgecolor="black")
        ax.set_title(f"n = {width}", fontsize=9)
        ax.set_xlabel("eta_alpha" if x == "factor_lr" else x, fontsize=8)
    axes[0][0].set_ylabel(y)
    fig.suptitle(f"log10 {metric} (mean over seeds) over {y} x eta_alpha per width; x: a seed diverged; star: best",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110, bbox_inches="tight")


LR_PANELS = (  # (arms, lr column, fixed column, its value): the 4-width sweep's arms and the wide sweep's
    (("alpha_lr", "alpha_plateau"), "factor_lr", "beta", 1.0), (("alpha_lr", "alpha_fine"), "factor_lr", "beta", 4.0),
    (("v_lr", "v_fine"), "direction_lr", "c", 1.0))


def plot_lr_curves(table, path: str, metric: str = "eval_kl", panels=LR_PANELS) -> None:
    """Score vs one learning rate per width (panels: (arm, lr column, fixed column, its value)); the band spans
    the seeds, dotted lines mark the fitted optima."""
    from matplotlib import colormaps

    from prosv_jax.figures import save_figure, subplots

    fig, axes = subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (arm, lr_col, column, value) in zip(axes[0], panels):
        part = table[table["arm"].isin(arm)]
        part = _select(part, **{column: float(value)}) if len(part) else part
        if not len(part):
            continue
        part = part.assign(_log=_log_scores(part, metric))
        opt = optimal_lrs(part, lr_col, metric).set_index("width")
        colors = colormaps["viridis"](np.linspace(0, 0.9, part["width"].nunique()))
        for color, (width, sub) in zip(colors, part.groupby("width")):
            means = sub.groupby(lr_col)["_log"].agg(["mean", "min", "max"])
            ax.plot(means.index, means["mean"], "-o", color=color, ms=3, label=f"n={width}")
            ax.fill_between(means.index, means["min"], means["max"], color=color, alpha=0.15)
            ax.axvline(opt.loc[width, "lr_opt"], color=color, ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(SYMBOL[lr_col])
        ax.set_ylabel(f"log10 {metric}")
        ax.set_title(f"{SYMBOL[lr_col]} sweep ({'+'.join(sorted(set(part['arm'])))}, {column}={value:g}); "
                     "dotted: optimum", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_exponents(exponents: list[dict], path: str) -> None:
    """log-log optimal lr vs width: the vertices with 95% error bars, the weighted fit with its interval and
    verdict, the predicted slope, and (eta_alpha) the stability edge."""
    from prosv_jax.figures import save_figure, subplots

    fig, axes = subplots(1, 2, figsize=(11, 4.2))
    for ax, name in zip(axes, ("eta_alpha", "eta_v")):
        drawn = set()
        for row in (e for e in exponents if e["lr"] == name):
            located = [int(w) for w in row["widths_located"]]
            if not located:
                continue
            widths = np.asarray(located, np.float64)
            opt = np.asarray([row["vertex_optima"][w] for w in located])
            se = np.asarray([row["vertex_se_decades"][w] for w in located])
            lo, hi = opt * (1 - 10 ** (-1.96 * se)), opt * (10 ** (1.96 * se) - 1)
            line = ax.errorbar(widths, opt, yerr=[lo, hi], fmt="o", ms=4, capsize=2,
                               label=f"{row['fixed']}: {row['slope_weighted']:+.2f} "
                                     f"[{row['ci95'][0]:+.2f}, {row['ci95'][1]:+.2f}] {row['verdict']}")[0]
            if np.isfinite(row["slope_weighted"]):
                fit = 10 ** (np.log10(opt).mean() + row["slope_weighted"] * (np.log10(widths) -
                                                                            np.log10(widths).mean()))
                ax.plot(widths, fit, "-", color=line.get_color(), lw=1)
            edges = [(int(w), e) for w, e in row["stability_edge"].items() if e is not None]
            if edges and name == "eta_alpha":
                ax.plot([w for w, _ in edges], [e for _, e in edges], "v", color=line.get_color(), alpha=0.5,
                        label=f"stability edge, {row['fixed']}")
            if row["predicted"] not in drawn:
                drawn.add(row["predicted"])
                pred = 10 ** (np.log10(opt).mean() + row["predicted"] * (np.log10(widths) - np.log10(widths).mean()))
                ax.plot(widths, pred, "--", color="grey", lw=1, label=f"predicted slope {row['predicted']:+.1f}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width n")
        ax.set_ylabel(f"optimal {name}")
        ax.set_title(f"optimal {name}: vertex +- 95% (seeds and grid); slope [95%] verdict", fontsize=9)
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def baseline_table(table, metric: str = "eval_kl"):
    """Per (arm, width): the best mean-over-seeds score over the arm's grid, and that point's cos(alpha v, z*)."""
    import pandas as pd

    data = table.assign(_log=_log_scores(table, metric))
    if "transfer_from" in data:
        data = data[data["transfer_from"].isna()]  # a transfer arm's single point is not an arm's best
    rows = []
    for (arm, width), part in data.groupby(["arm", "width"]):
        best = _best_cell(part, HYPER)
        rows.append({"arm": arm, "width": int(width), "best_log10": float(best["log"]), "cos_edit": float(best["cos"]),
                     **{k: float(best[k]) for k in HYPER}, "diverged_share": float(part["diverged"].mean())})
    return pd.DataFrame(rows)


def _best_cell(part, keys: Sequence[str]):
    """The grid cell (rows sharing `keys`, seeds averaged) with the lowest mean `_log` score: its keys, `log` and
    mean `cos` (cos(alpha v, alpha* v*))."""
    cells = part.groupby(list(keys)).agg(log=("_log", "mean"), cos=("cos_edit", "mean")).reset_index()
    return cells.loc[cells["log"].idxmin()]


RECIPE_ARMS = ("v_lr", "v_fine", "alpha_lr", "alpha_fine")  # Adam, both groups trained: the recipe's arms


def data_check_table(table, metric: str = "eval_kl", arms: Sequence[str] = RECIPE_ARMS):
    """Is a width data-limited? Per width: the data it trained on, and the best cell over the recipe's arms (mean over
    seeds) with its KL to the teacher and cos(alpha v, alpha* v*). Roughly constant across widths: no width is."""
    import pandas as pd

    data = table[table["arm"].isin(arms)]
    data = data.assign(_log=_log_scores(data, metric))
    rows = []
    for width, part in data.groupby("width"):
        best = _best_cell(part, ("arm", *HYPER))
        first = part.iloc[0]
        rows.append({"width": int(width), "batch_size": int(first["batch_size"]), "n_train": int(first["n_train"]),
                     "plain_kl": float(first["eval_plain_kl"]), f"best_{metric}": float(10 ** best["log"]),
                     "cos_edit": float(best["cos"]), "arm": best["arm"]})
    return pd.DataFrame(rows)


def data_optimum_shift(table, check, metric: str = "eval_kl", arms: Sequence[str] = ("v_lr", "v_fine"),
                       lr_col: str = "direction_lr", fixed: tuple[str, float] = ("c", 1.0)) -> list[dict]:
    """Does more data move the optimum? For every width `check` (the same arms trained on more data) holds: the
    vertex optimum and the best cell's score and cos(alpha v, alpha* v*) in each table. `shift_decades` over its
    error `shift_se` near 0: the data limit bends the curve's floor, not where its optimum lies."""
    rows = []
    for width in sorted(set(check["width"]) & set(table["width"])):
        found = {}
        for label, data in (("sweep", table), ("more_data", check)):
            part = _select(data[data["arm"].isin(arms) & (data["width"] == width)], **{fixed[0]: fixed[1]})
            vertex = vertex_optima(part, lr_col, metric)[0]
            best = _best_cell(part.assign(_log=_log_scores(part, metric)), (lr_col,))
            found[label] = {"batch_size": int(part["batch_size"].iloc[0]), "lr_opt": vertex["lr"],
                            "se_decades": vertex["se"], "located": vertex["located"],
                            f"best_{metric}": float(10 ** best["log"]), "cos_edit": float(best["cos"])}
        shift = np.log10(found["more_data"]["lr_opt"] / found["sweep"]["lr_opt"])
        rows.append({"width": int(width), "lr": SYMBOL[lr_col], **{f"{k}_{key}": v for k, d in found.items()
                                                                    for key, v in d.items()},
                     "shift_decades": float(shift), "shift_se": float(np.hypot(found["sweep"]["se_decades"],
                                                                             found["more_data"]["se_decades"]))})
    return rows


def plot_baselines(table, path: str, metric: str = "eval_kl") -> None:
    """Best achievable score and cos(alpha v, alpha* v*) per arm vs width: the recipe against its baselines."""
    from prosv_jax.figures import save_figure, subplots

    base = baseline_table(table, metric)
    fig, axes = subplots(1, 2, figsize=(10, 3.6))
    for arm, part in base.groupby("arm"):
        part = part.sort_values("width")
        axes[0].plot(part["width"], 10 ** part["best_log10"], "-o", label=arm)
        axes[1].plot(part["width"], part["cos_edit"], "-o", label=arm)
    if "eval_plain_kl" in table:
        plain = table.groupby("width")["eval_plain_kl"].first()
        axes[0].plot(plain.index, plain.to_numpy(), "k:", label="no steering")
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"best {metric} over the arm's grid")
    axes[1].set_ylabel("cos(alpha v, alpha* v*) at that point")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width n")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


TRANSFERS = (  # (label, arms, {lr column: width exponent applied when transferring from the smallest width},
    #             the arm that ran the transferred point itself at the larger widths, if the sweep has one)
    ("adam, eta_v scaled n^-1/2 (recipe)", ("v_lr", "v_fine"), {"direction_lr": -0.5}, "v_transfer_scaled"),
    ("adam, eta_v kept fixed", ("v_lr", "v_fine"), {}, "v_transfer_fixed"),
    ("adam, eta_alpha scaled n^+1/2 (recipe)", ("alpha_lr", "alpha_fine"), {"factor_lr": 0.5}, "alpha_transfer_scaled"),
    ("adam, eta_alpha kept fixed", ("alpha_lr", "alpha_fine"), {}, "alpha_transfer_fixed"),
    ("alpha fixed to 1, eta_v kept fixed", ("fixed_alpha",), {}, None),
    ("sgd, learning rates kept fixed", ("sgd",), {}, None),
    ("sgd with v clipping, learning rates kept fixed", ("sgd_clip",), {}, None),
    ("sgd without clipping, learning rates kept fixed", ("sgd_noclip",), {}, None),
    ("adam, one learning rate kept fixed", ("adam_tied",), {}, None),
)


def transfer_table(table, metric: str = "eval_kl", transfers=TRANSFERS):
    """Tune at the smallest width, transfer to the others: the best grid cell of an arm at the smallest width,
    its learning rates scaled by (n / n_min)^exponent at width n. Where the sweep ran that point (a transfer arm,
    `Arm.transfer_from`), its own score is read (`exact`); else the nearest grid value in log stands in.
    `regret_log10` = log10 score there minus the width's best log10 score in those arms (0 = transfer is optimal);
    `snap_decades` = how far the nearest grid value lay from the transferred one (a large value: the grid does not
    hold the transferred point, so the regret is not its own). Note: an arm's grid may already scale one rate with
    width (the eta_alpha arms scale eta_v, the eta_v arms scale eta_alpha)."""
    import pandas as pd

    rows = []
    data = table.assign(_log=_log_scores(table, metric))
    for label, arms, scaling, exact_arm in transfers:
        part = data[data["arm"].isin(arms)]
        if not len(part):
            continue
        cells = part.groupby(["width", *HYPER])["_log"].mean().reset_index()
        exact = data[data["arm"] == exact_arm].groupby(["width", *HYPER])["_log"].mean().reset_index()
        widths = sorted(cells["width"].unique())
        small = cells[cells["width"] == widths[0]]
        tuned = small.loc[small["_log"].idxmin()]
        for width in widths:
            here = cells[cells["width"] == width]
            ran = exact[exact["width"] == width]
            best = min(float(here["_log"].min()), float(ran["_log"].min()) if len(ran) else np.inf)
            if len(ran):
                pick, snap = ran, 0.0
            else:
                mask, snap = np.ones(len(here), bool), 0.0
                for column in HYPER:
                    if here[column].nunique() == 1:
                        continue  # not swept at this width: set by the arm (e.g. its other rate, scaled with width)
                    target = float(tuned[column]) * (width / widths[0]) ** scaling.get(column, 0.0)
                    distance = np.abs(np.log10(here[column].to_numpy(np.float64)) - np.log10(target))
                    mask &= distance <= distance.min() + 1e-9
                    snap = max(snap, float(distance.min()))
                pick = here[mask]
            value = float(pick["_log"].mean())
            rows.append({"transfer": label, "arm": "+".join(arms), "width": int(width), "log10": value,
                         "regret_log10": value - best, "snap_decades": snap, "exact": bool(len(ran)),
                         **{c: float(pick[c].iloc[0]) for c in HYPER}})
    return pd.DataFrame(rows)


def plot_transfer(table, path: str, metric: str = "eval_kl") -> None:
    """Tuned at the smallest width and transferred: the score's excess over each width's best, per recipe."""
    from prosv_jax.figures import save_figure, subplots

    data = transfer_table(table, metric)
    fig, ax = subplots(figsize=(6.5, 3.8))
    for label, part in data.groupby("transfer", sort=False):
        part = part.sort_values("width")
        ax.plot(part["width"], 10 ** part["regret_log10"], marker="o", ms=4, label=label,
                ls="-" if "recipe" in label else "--")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    ax.set_xlabel("width n")
    ax.set_ylabel(f"{metric} / best {metric} at that width")
    ax.set_title("tuned at the smallest width, transferred to larger widths", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _md_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def _md_by_width(records: Sequence[dict], key: str, widths: Sequence[int], cell, header: str = "") -> list[str]:
    """A table with a row per distinct `key` (in order of appearance) and a column per width, cells from `cell`."""
    cells = {(r[key], r["width"]): cell(r) for r in records}
    rows = list(dict.fromkeys(r[key] for r in records))
    return _md_table([header or key, *map(str, widths)], [[k, *(cells.get((k, w), "") for w in widths)] for k in rows])


def _g(x) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.3g}"


def summary_markdown(summary: dict) -> str:
    """The summary's tables in Markdown (tables.md beside the figures): exponents with their verdicts, the optima,
    the data check, the baselines and the transfer."""
    lines = [f"# Sweep tables ({summary['runs']} runs, widths {summary['widths']}, metric {summary['metric']})", "",
             "## Fitted exponents (95% interval from seeds and grid)", ""]
    rows = []
    for e in summary["exponents"]:
        rows.append([e["arm"], f"{e['lr']}*, {e['fixed']}", f"{e['slope_weighted']:+.2f}",
                     f"[{e['ci95'][0]:+.2f}, {e['ci95'][1]:+.2f}]", f"{e['predicted']:+.1f}", e["verdict"],
                     ", ".join(f"{w}: {_g(v)}" for w, v in e["vertex_optima"].items())])
        for side in ("lower", "upper"):
            edge = e[f"plateau_{side}_edge"]
            if np.isfinite(edge["slope"]):  # located at enough widths to fit
                rows.append([e["arm"], f"plateau {side} edge, {e['fixed']}", f"{edge['slope']:+.2f}",
                             f"[{edge['ci95'][0]:+.2f}, {edge['ci95'][1]:+.2f}]", f"{e['predicted']:+.1f}",
                             edge["verdict"], ", ".join(f"{w}: {_g(v)}" for w, v in edge["edges"].items())])
    lines += _md_table(["arms", "quantity", "slope", "95%", "predicted", "verdict", "per width"], rows)
    if summary.get("data_check"):
        lines += ["## Data check: the best recipe run per width", ""]
        lines += _md_table(["width", "batch", "train set", "unsteered KL", "best KL", "cos(alpha v, alpha* v*)",
                            "arm"], [[d["width"], d["batch_size"], d["n_train"], _g(d["plain_kl"]),
                                      _g(d[f"best_{summary['metric']}"]), f"{d['cos_edit']:.3f}", d["arm"]]
                                     for d in summary["data_check"]])
    widths = summary["widths"]
    if summary.get("baselines"):
        lines += ["## Best KL over each arm's grid (cos(alpha v, alpha* v*) at that point)", ""]
        lines += _md_by_width(summary["baselines"], "arm", widths,
                              lambda b: f"{10 ** b['best_log10']:.3g} ({b['cos_edit']:.2f})")
    if summary.get("transfer"):
        lines += ["## Transfer from the smallest width: KL / best KL at that width (* = the point's own run)", ""]
        lines += _md_by_width(summary["transfer"], "transfer", widths,
                              lambda t: f"{10 ** t['regret_log10']:.2f}{'*' if t.get('exact') else ''}", "rule")
    if summary.get("data_shift"):
        lines += ["## More data at the same width: does the optimum move?", ""]
        rows = [[d["width"], d["lr"], f"{d['sweep_batch_size']} -> {d['more_data_batch_size']}",
                 f"{_g(d['sweep_lr_opt'])} -> {_g(d['more_data_lr_opt'])}",
                 f"{d['shift_decades']:+.2f} +- {d['shift_se']:.2f}",
                 f"{_g(d['sweep_best_' + summary['metric']])} -> {_g(d['more_data_best_' + summary['metric']])}",
                 f"{d['sweep_cos_edit']:.3f} -> {d['more_data_cos_edit']:.3f}"] for d in summary["data_shift"]]
        lines += _md_table(["width", "lr", "batch", "optimum", "shift (decades, 1 se)", "best KL", "cos"], rows)
    return "\n".join(lines)


def make_figures(csv_path: str, out_dir: str, metric: str = "eval_kl", n_boot: int = 1000,
                 data_check_csv: str | None = None) -> dict:
    """Every figure, summary.json and tables.md from a sweep's results.csv; returns the summary.
    `data_check_csv`: the same eta_v arms on more data at some width (`data_optimum_shift`)."""
    import pandas as pd

    table = pd.read_csv(csv_path)
    os.makedirs(out_dir, exist_ok=True)
    exponents = exponent_table(table, metric, n_boot=n_boot)
    if table["arm"].isin(("alpha_lr", "alpha_plateau")).any():  # a sweep of eta_v alone has no beta x eta_alpha
        plot_heatmaps(table, os.path.join(out_dir, "heatmaps_beta_x_eta_alpha.png"), metric=metric)
    plot_lr_curves(table, os.path.join(out_dir, "lr_sweeps.png"), metric=metric)
    plot_exponents(exponents, os.path.join(out_dir, "exponents.png"))
    plot_baselines(table, os.path.join(out_dir, "baselines.png"), metric=metric)
    plot_transfer(table, os.path.join(out_dir, "transfer.png"), metric=metric)
    summary = {"metric": metric, "runs": int(len(table)), "widths": sorted(int(w) for w in table["width"].unique()),
               "exponents": exponents, "data_check": data_check_table(table, metric).to_dict(orient="records"),
               "baselines": baseline_table(table, metric).to_dict(orient="records"),
               "transfer": transfer_table(table, metric).to_dict(orient="records")}
    if data_check_csv:
        summary["data_shift"] = data_optimum_shift(table, pd.read_csv(data_check_csv), metric)
    write_json(os.path.join(out_dir, "summary.json"), summary, indent=1)
    with open(os.path.join(out_dir, "tables.md"), "w") as f:
        f.write(summary_markdown(summary))
    return summary
