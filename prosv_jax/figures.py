"""Figures without pyplot: plotting functions draw on `matplotlib.figure.Figure` objects and save them, so they
never switch the global backend (a notebook keeps its inline plots) and never leak open pyplot figures."""

from __future__ import annotations


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """(figure, axes) like `pyplot.subplots`, on a standalone Figure (saved with `fig.savefig`)."""
    from matplotlib.figure import Figure

    figure_keys = {"figsize", "dpi", "layout"}
    fig = Figure(**{k: v for k, v in kwargs.items() if k in figure_keys})
    axes = fig.subplots(nrows, ncols, **{k: v for k, v in kwargs.items() if k not in figure_keys})
    return fig, axes
