"""gemma-2-2b L10, PrOSV lang (method.md table): beta=4, eta_alpha=10, c=8, eta_v=4e-2, 12 epochs, batch 12.

Trains on the bundled concept10 split (AxBench prod_2b_l10_v1; --config.data.split_dir=DIR for another).
Needs --config.model.path=/path/to/gemma-2-2b.
"""

from base import BUNDLED_SPLIT, paper_config


def get_config():
    return paper_config(
        name="gemma-2-2b", layer=10, objective="lang", positions="f2+l2", beta=4, factor_lr=10.0, c=8,
        direction_lr=4e-2, epochs=12, batch_size=12,
        split_dir=BUNDLED_SPLIT)
