"""gemma-3-12b L22, PrOSV lang (method.md table): beta=1, eta_alpha=1, c=8, eta_v=8e-2, 24 epochs, batch 6.

Needs --config.model.path=/path/to/gemma-3-12b and --config.data.split_dir=DIR (AxBench layout; none ships here for
this model).
"""

from base import paper_config


def get_config():
    return paper_config(
        name="gemma-3-12b", layer=22, objective="lang", positions="f2+l2", beta=1, factor_lr=1.0, c=8,
        direction_lr=8e-2, epochs=24, batch_size=6)
