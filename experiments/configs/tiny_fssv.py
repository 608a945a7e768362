"""FSSV (all positions), Lang, on the built-in tiny random model and AxBench concept 0: a CPU smoke run.

    prosv-jax train --config experiments/configs/tiny_fssv.py --out /tmp/tiny_fssv
"""

from tiny_prosv import get_config as tiny_config


def get_config():
    config = tiny_config()
    config.steering.positions = "all"
    config.steering.beta = 2.0
    config.steering.c = 1.0
    return config
