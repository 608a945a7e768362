"""The study on SmolLM2-135M-Instruct (steered, block 12 = 0.4 of its 30) with Gemma-3-270M as the evaluator: the
headline methods on all 10 concept10 concepts, plus on the 3 dev concepts a layer sweep (blocks 6 and 18), the
paper's Gemma-2-2B PrOSV Lang row as released (not moved to this width) and a float32 training check.

    python experiments/real/study.py run --config experiments/real/configs/smollm2.py
    python experiments/real/study.py run --config experiments/real/configs/smollm2.py --config.concepts=[0,1,2]
"""

from base import LANG_PROSV, RELEASED_LANG_PROSV, get_config as base_config, method


def get_config():
    c = base_config()
    c.methods = c.methods + [
        method("prosv_lang_released", "PrOSV Lang, as released", RELEASED_LANG_PROSV, concepts="dev",
               setting="SmolLM2-135M L12 dev"),
        method("prosv_lang_float32", "PrOSV Lang, float32", LANG_PROSV, concepts="dev",
               setting="SmolLM2-135M L12 dev", overrides=[("model.dtype", "float32"),
                                                          ("train.param_dtype", "float32")]),
        method("prosv_lang_L6", "PrOSV Lang", LANG_PROSV, concepts="dev", layer=6, sacrifice=False),
        method("prosv_lang_L18", "PrOSV Lang", LANG_PROSV, concepts="dev", layer=18, sacrifice=False),
    ]
    return c
