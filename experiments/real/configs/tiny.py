"""The study's quick version for CI: every stage on the built-in tiny random model (steered and evaluator alike, so
only the code is tested, not the claims), 2 concepts, a few examples, short answers.

    python experiments/real/study.py run --config experiments/real/configs/tiny.py --config.out=/tmp/tiny_study
"""

from base import get_config as base_config, main_methods, method

TINY_PROSV = "experiments/configs/tiny_prosv.py"
TINY_FSSV = "experiments/configs/tiny_fssv.py"


def get_config():
    c = base_config()
    c.out = "outputs/real/tiny"
    c.results = "outputs/real/tiny_results"
    c.model.update(dict(name="builtin", label="tiny", layer=1))
    c.evaluator.update(dict(name="builtin", label="tiny", layers=[0, 1], max_tokens=32,
                            allow_same=True, min_auroc=0.0))  # a random model's detectors are weak
    c.concepts = [0, 1]
    c.dev_concepts = [0]
    c.train.update(dict(max_examples=6, max_response=16, epochs=1, dtype="float32"))
    configs = {"prosv_lang": TINY_PROSV, "prosv_simpo": TINY_PROSV, "fssv_lang": TINY_FSSV}
    methods = main_methods()
    for m in methods:
        if m.name in configs:
            m.config = configs[m.name]
        if m.simpo:
            m.overrides = [["objective", "simpo"]]
    c.methods = methods + [method("prosv_lang_fast", "PrOSV Lang, factor lr x10", TINY_PROSV, concepts="dev",
                                  setting="tiny L1 dev", overrides=[("optim.factor_lr", 10.0)])]
    c.generation.update(dict(max_new_tokens=8, batch_size=10, grid_batch_size=70))
    c.judge.batch_size = 16
    c.sacrifice.update(dict(n_pairs=4, batch_size=4))
    return c
