"""SmolLM2-135M-Instruct L12, PrOSV SimPO: the released Gemma-2-2B L10 row (gemma2_2b_l10_simpo_prosv.py) moved from
width 2304 to 576 by the method's rules, bfloat16, on the built-in real checkpoint. Needs the concept-free negatives
(`prosv-jax axbench negatives ...`, then --config.data.negatives=FILE).

    prosv-jax train --config experiments/configs/smollm2_135m_l12_simpo_prosv.py --config.data.negatives=neg.jsonl \
        --config.data.concept_ids=[8] --out runs/s
"""

import gemma2_2b_l10_simpo_prosv
from base import moved_to_width


def get_config():
    config = moved_to_width(gemma2_2b_l10_simpo_prosv.get_config(), width=576)
    config.model.name = config.model.path = "smollm2-135m-instruct"
    config.steering.layer = 12
    return config
