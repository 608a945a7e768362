"""The judge-free concept detector and probe judge: pooled residuals against transformers, the logistic fit against scipy, AUROC
against a pairwise count, the bundled texts, and a real detector on SmolLM2-135M-Instruct."""

import os

import numpy as np
import pytest

from prosv_jax.evaluation.concept_detector import (MIN_AUROC, ConceptDetector, auroc, detector_texts,
                                                   fit_logistic, pooled_residuals)


def test_auroc_equals_the_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean()
    assert auroc(scores, labels) == pytest.approx(pairwise, abs=1e-12)
    assert auroc([0.1, 0.9], [0, 1]) == 1.0 and auroc([0.9, 0.1], [0, 1]) == 0.0
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        auroc([0.1, 0.2], [1, 1])


def test_newton_logistic_fit_reaches_scipys_optimum():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0.3).astype(float)
    weight, bias = fit_logistic(x, y, l2=0.1)
    sample = np.where(y == 1, 0.5 / y.sum(), 0.5 / (1 - y).sum())

    def objective(theta):
        z = x @ theta[:-1] + theta[-1]
        return (sample * (np.logaddexp(0, z) - y * z)).sum() + 0.05 * theta[:-1] @ theta[:-1]

    reference = minimize(objective, np.zeros(6), method="BFGS", options=dict(gtol=1e-12)).x
    np.testing.assert_allclose(np.r_[weight, bias], reference, atol=1e-5)
    with pytest.raises(ValueError, match="one class is empty"):
        fit_logistic(x, np.ones(60))


def test_detector_separates_shifted_features_and_round_trips_through_json():
    rng = np.random.default_rng(2)
    shift = np.zeros(8)
    shift[3] = 3.0
    detector = ConceptDetector.fit("toy", 1, rng.normal(size=(30, 8)) + shift, rng.normal(size=(50, 8)))
    assert detector.flagged  # not validated yet
    assert detector.validate(rng.normal(size=(20, 8)) + shift, rng.normal(size=(20, 8))) > 0.95
    assert not detector.flagged
    again = ConceptDetector.from_json(detector.to_json())
    probe = rng.normal(size=(4, 8))
    np.testing.assert_allclose(again.probability(probe), detector.probability(probe), rtol=1e-12)
    assert again.heldout_auroc == detector.heldout_auroc


def test_pooled_residuals_equal_transformers_hidden_states(tmp_path):
    """Mean of HF's block-L hidden state over every token but the first, padded batch, partial last batch."""
    import jax.numpy as jnp
    import torch
    from transformers import AutoTokenizer

    from hf_models import build
    from prosv_jax.models.loading import load_model

    hf = build("llama_gqa_untied", tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["a short one", "a somewhat longer text about videos and films and clips", "three words here"]
    ours = pooled_residuals(load_model(str(tmp_path), jnp.float32), tokenizer, texts, 1, batch_size=2)
    for row, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = hf(ids, output_hidden_states=True).hidden_states[2][0]  # after block 1: [T, d]
        np.testing.assert_allclose(ours[row], hidden[1:].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        pooled_residuals(load_model(str(tmp_path), jnp.float32), tokenizer, texts, 99)


def test_detector_texts_of_the_bundled_split_keep_heldout_apart():
    texts = detector_texts("bundled:concept10", 2)
    assert len(texts["train_positive"]) == 72 and len(texts["heldout_positive"]) == 36
    assert len(texts["train_negative"]) == 216 + 9 * 8 and len(texts["heldout_negative"]) >= 36
    training = set(texts["train_positive"]) | set(texts["train_negative"])
    assert not training & (set(texts["heldout_positive"]) | set(texts["heldout_negative"]))
    with pytest.raises(ValueError, match="unknown concept id 10"):
        detector_texts("bundled:concept10", 10)


def test_a_split_without_latent_texts_is_refused_by_name(concept10_split, tmp_path):
    import shutil

    copy = tmp_path / "split"
    shutil.copytree(concept10_split / "generate", copy / "generate")
    with pytest.raises(FileNotFoundError, match="inference/latent_eval_data.parquet"):
        detector_texts(str(copy), 2)


def test_a_concept_with_too_few_labelled_texts_is_refused_by_name(concept10_split, tmp_path):
    """Concept 3 cut to 5 training texts, then concept 4 to 2 held-out texts with it: each is named, with the fix."""
    import shutil

    import datasets

    copy = tmp_path / "split"
    shutil.copytree(concept10_split, copy)
    train = copy / "generate" / "train_data.parquet"
    rows = datasets.Dataset.from_parquet(str(train)).to_list()
    kept, seen = [], 0
    for r in rows:
        seen += r["concept_id"] == 3
        if r["concept_id"] != 3 or seen <= 5:
            kept.append(r)
    datasets.Dataset.from_list(kept).to_parquet(str(train))
    with pytest.raises(ValueError, match=r"concept 3 has 5 training texts .* needs at least 16: leave the concept out"):
        detector_texts(str(copy), 3)
    latent = copy / "inference" / "latent_eval_data.parquet"
    rows = datasets.Dataset.from_parquet(str(latent)).to_list()
    seen, kept = 0, []
    for r in rows:
        seen += r["concept_id"] == 4 and r["category"] == "positive"
        if not (r["concept_id"] == 4 and r["category"] == "positive") or seen <= 2:
            kept.append(r)
    datasets.Dataset.from_list(kept).to_parquet(str(latent))
    with pytest.raises(ValueError, match=r"concept 4 has 2 held-out texts with the concept .* at least 4 of each"):
        detector_texts(str(copy), 4)
    assert len(detector_texts(str(copy), 5)["train_positive"]) == 72  # the others are untouched


@pytest.fixture(scope="module")
def smollm2_detectors(real_models_cache, tmp_path_factory):
    """`axbench detectors` for concept 2 (video and multimedia) on SmolLM2-135M-Instruct, block 15."""
    from prosv_jax.evaluation.concept_detector import run_detectors

    real_models_cache("smollm2-135m-instruct")
    out = str(tmp_path_factory.mktemp("smollm2-detectors"))
    previous = os.environ.get("PROSV_JAX_CACHE")
    os.environ["PROSV_JAX_CACHE"] = real_models_cache.root
    try:
        rows = run_detectors("smollm2-135m-instruct", "bundled:concept10", out, layer=15, concepts=[2], max_tokens=128)
    finally:
        os.environ.pop("PROSV_JAX_CACHE") if previous is None else os.environ.__setitem__("PROSV_JAX_CACHE", previous)
    return out, rows


def test_a_real_detector_finds_its_concept_in_unseen_texts(smollm2_detectors):
    """The held-out AUROC on AxBench's latent_eval texts (instructions never trained on) clears MIN_AUROC."""
    _, rows = smollm2_detectors
    print(f"held-out AUROC {rows[0]['heldout_auroc']:.3f}")
    assert rows[0]["heldout_auroc"] >= MIN_AUROC and not rows[0]["flagged"]


def test_the_probe_judge_rates_concept_relevance_and_fluency_on_a_real_evaluator(smollm2_detectors, real_models_cache,
                                                                                 monkeypatch):
    """Each rating moves the way its question asks: a held-out video text vs a negative (concept), GPT-4's answer to
    its own instruction vs to another (instruction), the answer vs its words shuffled (fluency)."""
    import json
    import random

    from prosv_jax.concepts import alpaca_gpt4_pairs
    from prosv_jax.evaluation.judges import RatingRequest
    from prosv_jax.evaluation.probe_judge import ProbeJudge

    monkeypatch.setenv("PROSV_JAX_CACHE", real_models_cache.root)
    judge = ProbeJudge(smollm2_detectors[0])
    assert judge.config()["evaluator"] == "smollm2-135m-instruct" and judge.anchors["pmi_ref"] > 0
    with monkeypatch.context() as patched:  # a second judge reads the anchors saved beside the detectors
        patched.setattr(ProbeJudge, "pmi", lambda *a: pytest.fail("the anchors were computed again"))
        assert ProbeJudge(smollm2_detectors[0]).anchors == judge.anchors
    texts = detector_texts("bundled:concept10", 2)
    concept = judge.detectors[2].concept
    pair = alpaca_gpt4_pairs()[7]
    shuffled = " ".join(random.Random(0).sample(pair["output"].split(), len(pair["output"].split())))
    requests = [RatingRequest("concept", concept, pair["instruction"], texts["heldout_positive"][0]),
                RatingRequest("concept", concept, pair["instruction"], texts["heldout_negative"][0]),
                RatingRequest("instruction", concept, pair["instruction"], pair["output"]),
                RatingRequest("instruction", concept, judge.unrelated_instruction(pair["instruction"]), pair["output"]),
                RatingRequest("fluency", concept, pair["instruction"], pair["output"]),
                RatingRequest("fluency", concept, pair["instruction"], shuffled)]
    r = judge.rate(requests)
    print([(x.factor, round(x.value, 3), x.reply) for x in r])
    assert all(0.0 <= x.value <= 2.0 and x.ok for x in r)
    assert r[0].value > r[1].value and r[2].value > r[3].value and r[4].value > r[5].value
    assert json.loads(r[2].reply)["pmi_per_token"] > json.loads(r[3].reply)["pmi_per_token"]
    with pytest.raises(ValueError, match="no detector for concept"):
        judge.rate([RatingRequest("concept", "an unknown concept", "hi", "hello")])


def test_the_probe_judge_refuses_an_evaluator_that_cannot_anchor_it(tmp_path):
    """An evaluator whose head is zero predicts the uniform distribution: every answer is as likely after any
    instruction and in any word order, so no 0-2 scale can be anchored: a clear error, not ratings."""
    import torch

    from hf_models import build
    from prosv_jax import cli
    from prosv_jax.evaluation.probe_judge import ProbeJudge

    evaluator = tmp_path / "uniform"
    model = build("llama_gqa_untied", evaluator)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(evaluator)
    assert cli.main(["axbench", "detectors", "--model", str(evaluator), "--split", "bundled:concept10",
                     "--concepts", "2", "--out", str(tmp_path / "det"), "--max-tokens", "32"]) == 0
    with pytest.raises(ValueError, match="cannot anchor the ratings"):
        ProbeJudge(str(tmp_path / "det"))


def test_detectors_stage_writes_resumes_and_refuses_other_settings(tmp_path, capsys):
    """`prosv-jax axbench detectors` on the tiny random model: a file per concept and the table; a rerun keeps the
    saved detectors; another layer into the same folder is refused by name."""
    import csv
    import os

    from prosv_jax import cli
    from prosv_jax.evaluation.concept_detector import load_detectors

    out = tmp_path / "det"
    command = ["axbench", "detectors", "--model", "builtin", "--split", "bundled:concept10", "--concepts", "0,2",
               "--out", str(out), "--max-tokens", "32"]
    assert cli.main(command) == 0
    with open(out / "detectors.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["concept_id"]) for r in rows] == [0, 2]
    assert all(0.0 <= float(r["heldout_auroc"]) <= 1.0 for r in rows)
    detectors = load_detectors(str(out))
    assert sorted(detectors) == [0, 2] and detectors[2].concept == "references to video and multimedia content"
    stamp = os.path.getmtime(out / "c2.json")
    assert cli.main(command) == 0
    assert os.path.getmtime(out / "c2.json") == stamp
    assert cli.main(command + ["--layer", "0"]) == 2
    printed = capsys.readouterr()
    assert "holds a detector made with other settings" in printed.out + printed.err
