"""Figures without pyplot: plotting functions draw on `matplotlib.figure.Figure` objects and save them, so they
never switch the global backend (a notebook keeps its inline plots) and never leak open pyplot figures. Figures are
saved atomically (`save_figure`), like every other output file."""

from __future__ import annotations

import os


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """(figure, axes) like `pyplot.subplots`, on a standalone Figure (saved with `fig.savefig`)."""
    from matplotlib.figure import Figure

    figure_keys = {"figsize", "dpi", "layout"}
    fig = Figure(**{k: v for k, v in kwargs.items() if k in figure_keys})
    axes = fig.subplots(nrows, ncols, **{k: v for k, v in kwargs.items() if k not in figure_keys})
    return fig, axes


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """`fig.savefig(path, **kwargs)` through a temporary file renamed into place: a kill never leaves half a file.
    The format comes from the path's extension (the temporary file has none)."""
    from prosv_jax.files import replace_atomically

    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
