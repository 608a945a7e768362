"""The study's config fields and SmolLM2-135M-Instruct defaults (experiments/real/study.py reads them).

  out                   where every stage writes (outputs/real/<study>); results: where `report` writes its tables
  model.name/label/layer  the steered model (a prosv-jax model name or folder), its label, the steered block L
  evaluator.*           the evaluator model (detectors, probe judge): name, label, candidate blocks `layers` (the best
                        mean held-out AUROC on the dev concepts wins), max_tokens of a detector text, allow_same
                        (the steered model as its own evaluator: only for code tests, its likelihoods favour it),
                        min_auroc (a concept whose detector is below it is reported apart from the headline)
  split, concepts       the AxBench split and the concepts studied; dev_concepts (a subset) carry the dev-only
                        variants (layer sweep, released hyperparameters, float32). A study grown by concepts (the
                        old list first, then more) keeps everything finished and does only the new concepts
  train.*               max_examples (each concept's first N positives), max_response (responses cut, Lang and
                        SimPO), epochs, dtype (frozen weights and steering params), seeds
  methods               a list of `method(...)`: name, label (row of the tables), config (a training config file;
                        "" for DiffMean and prompting), positions (f2+l2 | all), concepts ("all" | "dev"), layer
                        (0 = model.layer), setting (column label; "" = "<model label> L<layer>"), overrides
                        ([(field, value)] of the training config), simpo (SimPO: trains on the study's
                        negatives, made by stage `negatives` with the detectors), grid (also the 14-factor sweep with factor
                        selection), attack (also under the suppression attack), sacrifice (measure it)
  generation.*          answers: max_new_tokens, dtype, seed, batch_size, grid_batch_size
  judge.batch_size, sacrifice.n_pairs / batch_size, attack.fssv_factor_scales
"""

import ml_collections

LANG_PROSV = "experiments/configs/smollm2_135m_l12_lang_prosv.py"
LANG_FSSV = "experiments/configs/smollm2_135m_l12_lang_fssv.py"
SIMPO_PROSV = "experiments/configs/smollm2_135m_l12_simpo_prosv.py"
RELEASED_LANG_PROSV = "experiments/configs/gemma2_2b_l10_lang_prosv.py"


def method(name, label, config="", positions="f2+l2", concepts="all", layer=0, setting="", overrides=(),
           simpo=False, grid=False, attack=False, sacrifice=True):
    return ml_collections.ConfigDict(dict(
        name=name, label=label, config=config, positions=positions, concepts=concepts, layer=layer, setting=setting,
        overrides=[list(kv) for kv in overrides], simpo=simpo, grid=grid, attack=attack, sacrifice=sacrifice))


def main_methods():
    """The methods of the headline table, on every concept."""
    return [
        method("prosv_lang", "PrOSV Lang", LANG_PROSV, attack=True),
        method("prosv_simpo", "PrOSV SimPO", SIMPO_PROSV, simpo=True, attack=True),
        method("fssv_lang", "FSSV Lang", LANG_FSSV, positions="all", grid=True, attack=True),
        method("diffmean", "DiffMean", positions="all", grid=True),
        method("prompting", "Prompting"),
    ]


def get_config():
    c = ml_collections.ConfigDict()
    c.out = "outputs/real/smollm2"
    c.results = "experiments/results/real"
    c.model = ml_collections.ConfigDict(dict(name="smollm2-135m-instruct", label="SmolLM2-135M", layer=12))
    c.evaluator = ml_collections.ConfigDict(dict(name="gemma3-270m", label="Gemma-3-270M", layers=[6, 9, 12],
                                                 max_tokens=128, allow_same=False, min_auroc=0.85))  # concept_detector.MIN_AUROC
    c.split = "bundled:concept10"
    c.concepts = list(range(10))
    c.dev_concepts = [0, 1, 2]
    c.train = ml_collections.ConfigDict(dict(max_examples=36, max_response=64, epochs=12, dtype="bfloat16",
                                             seeds=[42]))
    c.methods = main_methods()
    c.generation = ml_collections.ConfigDict(dict(max_new_tokens=128, dtype="float32", seed=0, batch_size=10,
                                                  grid_batch_size=70))
    c.judge = ml_collections.ConfigDict(dict(batch_size=32))
    c.sacrifice = ml_collections.ConfigDict(dict(n_pairs=32, batch_size=16))
    c.attack = ml_collections.ConfigDict(dict(fssv_factor_scales="1,0.8,0.5"))
    return c
