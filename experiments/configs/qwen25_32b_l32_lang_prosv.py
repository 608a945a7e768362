"""qwen2.5-32b L32, PrOSV lang (method.md table): beta=2, eta_alpha=10, c=8, eta_v=4e-2, 12 epochs, batch 6.

Needs --config.model.path=/path/to/qwen2.5-32b and --config.data.split_dir=DIR (AxBench layout; none ships here for
this model).
"""

from base import paper_config


def get_config():
    return paper_config(
        name="qwen2.5-32b", layer=32, objective="lang", positions="f2+l2", beta=2, factor_lr=10.0, c=8,
        direction_lr=4e-2, epochs=12, batch_size=6)
