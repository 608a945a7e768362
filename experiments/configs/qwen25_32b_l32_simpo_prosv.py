"""qwen2.5-32b L32, PrOSV simpo (method.md table): beta=1, eta_alpha=10, c=8, eta_v=8e-2, 6 epochs, batch 3, grad-accum
2.

Needs --config.model.path=/path/to/qwen2.5-32b and --config.data.split_dir=DIR (AxBench layout; none ships here for
this model), plus the negatives JSONL: --config.data.negatives=FILE.
"""

from base import paper_config


def get_config():
    return paper_config(
        name="qwen2.5-32b", layer=32, objective="simpo", positions="f2+l2", beta=1, factor_lr=10.0, c=8,
        direction_lr=8e-2, epochs=6, batch_size=3, grad_accum=2)
