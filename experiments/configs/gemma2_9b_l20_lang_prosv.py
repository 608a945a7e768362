"""gemma-2-9b L20, PrOSV lang (method.md table): beta=2, eta_alpha=0.1, c=8, eta_v=4e-2, 12 epochs, batch 12.

Needs --config.model.path=/path/to/gemma-2-9b and --config.data.split_dir=DIR (AxBench's concept10
prod_9b_l20_v1 folder; it does not ship with prosv-jax).
"""

from base import paper_config


def get_config():
    return paper_config(
        name="gemma-2-9b", layer=20, objective="lang", positions="f2+l2", beta=2, factor_lr=0.1, c=8,
        direction_lr=4e-2, epochs=12, batch_size=12)
