"""gemma-2-9b L20, PrOSV simpo (method.md table): beta=2, eta_alpha=10, c=8, eta_v=8e-2, 12 epochs, batch 6.

Needs --config.model.path=/path/to/gemma-2-9b and --config.data.split_dir=DIR (AxBench's concept10
prod_9b_l20_v1 folder; it does not ship with prosv-jax), plus the negatives JSONL: --config.data.negatives=FILE.
"""

from base import paper_config


def get_config():
    return paper_config(
        name="gemma-2-9b", layer=20, objective="simpo", positions="f2+l2", beta=2, factor_lr=10.0, c=8,
        direction_lr=8e-2, epochs=12, batch_size=6)
