"""gemma-2-2b L10, FSSV lang (method.md table): beta=2, eta_alpha=1, c=1, eta_v=4e-2, 12 epochs, batch 12.

Trains on the bundled concept10 split (AxBench prod_2b_l10_v1; --config.data.split_dir=DIR for another).
Needs --config.model.path=/path/to/gemma-2-2b.
"""

from base import BUNDLED_SPLIT, paper_config


def get_config():
    return paper_config(
        name="gemma-2-2b", layer=10, objective="lang", positions="all", beta=2, factor_lr=1.0, c=1,
        direction_lr=4e-2, epochs=12, batch_size=12,
        split_dir=BUNDLED_SPLIT)
