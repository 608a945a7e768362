"""`prosv-jax axbench negatives`: concept-free answers by the unsteered model, filtered by a concept detector,
written as the negatives file SimPO training reads."""

import json

import pytest

from prosv_jax import cli


@pytest.fixture(scope="module")
def tiny_detectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("det")
    assert cli.main(["axbench", "detectors", "--model", "builtin", "--split", "bundled:concept10", "--concepts", "0",
                     "--out", str(out), "--max-tokens", "32"]) == 0
    return str(out)


def test_negatives_answer_every_positive_instruction_and_feed_simpo(tiny_detectors, tmp_path):
    from prosv_jax.data import axbench
    from prosv_jax.evaluation.negatives import run_negatives

    out = str(tmp_path / "negatives.jsonl")
    summary = run_negatives("builtin", "bundled:concept10", tiny_detectors, out, concepts=[0], max_new_tokens=8,
                            threshold=0.5, retries=1)
    with open(out) as f:
        lines = [json.loads(line) for line in f]
    positives = axbench.concept_positives("bundled:concept10", 0)
    assert [line["instruction"] for line in lines] == [i for i, _ in positives]
    assert summary[0]["above_threshold"] == sum(line["p_concept"] >= 0.5 for line in lines)
    assert summary[0]["resampled"] == sum(line["drawn"] != "greedy" for line in lines)
    assert all(line["drawn"] == "greedy" or line["drawn"].startswith("sampled") for line in lines)
    negatives = axbench.concept_negatives(out, 0, positives)  # what `train` reads for SimPO
    assert [i for i, _ in negatives] == [i for i, _ in positives]
    before = open(out).read()
    assert run_negatives("builtin", "bundled:concept10", tiny_detectors, out, concepts=[0], max_new_tokens=8) == {}
    assert open(out).read() == before  # a finished concept is kept


def test_negatives_refuse_a_concept_without_a_detector_and_bad_settings(tiny_detectors, tmp_path, capsys):
    out = str(tmp_path / "n.jsonl")
    base = ["axbench", "negatives", "--model", "builtin", "--split", "bundled:concept10", "--detectors",
            tiny_detectors, "--out", out]
    assert cli.main(base + ["--concepts", "3"]) == 2
    assert cli.main(base + ["--concepts", "0", "--threshold", "1.5"]) == 2
    printed = capsys.readouterr()
    assert "no detector for concept(s) [3]" in printed.out + printed.err
    assert "--threshold must be a probability" in printed.out + printed.err
