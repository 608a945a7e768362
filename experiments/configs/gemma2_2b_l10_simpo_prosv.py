"""gemma-2-2b L10, PrOSV simpo (method.md table): beta=4, eta_alpha=20, c=8, eta_v=4e-2, 12 epochs, batch 6.

Trains on the bundled concept10 split (AxBench prod_2b_l10_v1; --config.data.split_dir=DIR for another).
Needs --config.model.path=/path/to/gemma-2-2b, plus the negatives JSONL: --config.data.negatives=FILE.
"""

from base import BUNDLED_SPLIT, paper_config


def get_config():
    return paper_config(
        name="gemma-2-2b", layer=10, objective="simpo", positions="f2+l2", beta=4, factor_lr=20.0, c=8,
        direction_lr=4e-2, epochs=12, batch_size=6,
        split_dir=BUNDLED_SPLIT)
