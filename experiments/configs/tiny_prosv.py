"""PrOSV (f2+l2), Lang, on the built-in tiny random model and AxBench concept 0 (the bundled concept10 split):
a CPU smoke run of the recipe.

    prosv-jax train --config experiments/configs/tiny_prosv.py --out /tmp/tiny_prosv
"""

from base import BUNDLED_SPLIT, get_config as base_config


def get_config():
    config = base_config()
    config.model.path = "builtin"
    config.model.name = "builtin-tiny"
    config.model.dtype = "float32"
    config.steering.layer = 1
    config.steering.positions = "f2+l2"
    config.steering.beta = 4.0
    config.steering.c = 8.0
    config.data.split_dir = BUNDLED_SPLIT
    config.data.concept_ids = [0]
    config.optim.factor_lr = 1.0
    config.optim.direction_lr = 4e-2
    config.train.epochs = 2
    config.train.batch_size = 12
    config.train.param_dtype = "float32"
    config.vocab_chunk = 512
    return config
