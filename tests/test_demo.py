"""The offline demo (`prosv-jax demo`, the README's main job) and the pieces it is built from.

The end-to-end test runs the README's exact command on its default settings (SmolLM2-135M-Instruct, a few CPU
minutes): it is the main job, so CI runs the real thing, not a shrunken copy (.ci/run also runs `--quick` from a
fresh install without the test extras).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prosv_jax.concepts import (concept10_descriptions, concept10_lexicon, concept10_split, concept_lexicon,
                               concept_word_rate)


def test_concept_lexicon_keeps_words_typical_of_the_concept():
    concept = ["the proletariat rose", "a proletariat and a commune", "proletariat proletariat commune",
               "the commune of the proletariat"] * 2
    background = ["the weather is nice and the commune", "a recipe with the usual steps"] * 50
    lexicon = concept_lexicon(concept, background, min_count=4, ratio=5)
    assert lexicon[0] == "proletariat"  # most frequent first
    assert "commune" not in lexicon  # also common in the background: not typical of the concept
    assert concept_word_rate(["The Proletariat wins.", "nothing here", "a commune"], lexicon) == pytest.approx(1 / 3)


def test_contrast_texts_drop_the_writers_style_words():
    concept = ["the proletariat rose, akin to a tide", "akin to the proletariat", "proletariat akin proletariat"] * 2
    background = ["the weather is nice", "a recipe with the usual steps"] * 50
    other_concepts = ["a video, akin to a film", "akin to a speaker's sound"] * 5
    assert concept_lexicon(concept, background, min_count=4, ratio=5) == ["proletariat", "akin"]
    assert concept_lexicon(concept, background, min_count=4, ratio=5, contrast_texts=other_concepts) == ["proletariat"]


def test_concept10_lexicons_name_their_concepts_not_the_writers_style():
    communism = concept10_lexicon(8, concept10_split(8, heldout=12)[0])
    video = concept10_lexicon(2, concept10_split(2, heldout=12)[0])
    assert {"lenin", "marx", "proletariat"} <= set(communism) and {"video", "multimedia", "footage"} <= set(video)
    for style_word in ("akin", "much", "pivotal", "dynamic"):  # frequent in every concept of the AxBench writer
        assert style_word not in communism and style_word not in video
    assert not set(communism) & set(video)


def test_concept10_split_and_its_errors():
    descriptions = concept10_descriptions()
    assert sorted(descriptions) == list(range(10))
    train, held = concept10_split(8, heldout=12)
    assert (len(train), len(held)) == (60, 12)
    assert not set(train) & set(held)
    with pytest.raises(ValueError, match="choose one of"):
        concept10_split(42, heldout=12)
    with pytest.raises(ValueError, match="heldout must be in"):
        concept10_split(8, heldout=72)


def test_dataset_loss_equals_the_full_logits_cross_entropy():
    """dataset_loss (response rows only, vocabulary chunks, padded last batch) vs log_softmax of full logits."""
    from transformers import AutoTokenizer

    from prosv_jax.models.tiny import builtin_model_dir
    from prosv_jax.data.axbench import lang_examples
    from prosv_jax.interventions import Steering, SteeringVector
    from prosv_jax.interventions.transform import steered_forward
    from prosv_jax.models.loading import load_model
    from prosv_jax.training.data import TrainDataset
    from prosv_jax.training.evaluate import dataset_loss, unsteered_loss

    model_dir = builtin_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, jnp.float32)
    _, held = concept10_split(3, heldout=7)
    dataset = TrainDataset.from_examples(lang_examples(tokenizer, held, 40, True), max_response=40,
                                         pad_id=tokenizer.pad_token_id)
    steering = Steering.single(1, SteeringVector(beta=2.0, c=4.0), "f2+l2")
    params = steering.init_params(jax.random.key(0), model.cfg)
    rows = dataset.positives

    def reference(p):
        logits = steered_forward(steering)(model, p, rows.tokens, rows.valid, rows.prompt_mask).logits
        logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)  # [B, T, V]
        picked = np.take_along_axis(logp, rows.target_index[..., None], 1)  # [B, R, V]
        token = np.take_along_axis(picked, rows.target_ids[..., None], 2)[..., 0]  # [B, R]
        return -(token * rows.target_mask).sum() / rows.target_mask.sum()

    steered = dataset_loss(model, steering, params, dataset, batch_size=4, vocab_chunk=100)
    plain = unsteered_loss(model, steering, params, dataset, batch_size=4, vocab_chunk=100)
    assert steered == pytest.approx(reference(params), rel=1e-5)
    assert plain == pytest.approx(reference(steering.with_factor(params, 0.0)), rel=1e-5)
    assert abs(steered - plain) > 1e-4  # the steering does change the loss


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, real_models_cache):
    """The README's `prosv-jax demo` on its defaults (SmolLM2-135M-Instruct; converted once per test session)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    real_models_cache("smollm2-135m-instruct")
    env = {**os.environ, "PROSV_JAX_CACHE": real_models_cache.root}
    result = subprocess.run([sys.executable, "-m", "prosv_jax.cli", "demo", "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=3600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out / "summary.json") as f:
        return out, result.stdout, json.load(f), env


def test_demo_trains_and_compares_on_the_real_model(demo_run):
    out, stdout, summary, _ = demo_run
    assert summary["model"] == "smollm2-135m-instruct" and summary["layer"] == 18
    loss, rate = summary["heldout_loss"], summary["concept_word_rate"]
    # The PrOSV lowers the loss of the concept's held-out examples (text it never saw) by a clear margin.
    assert loss["PrOSV"] < loss["unsteered"] - 0.05
    # The FSSV writes the concept into half the answers or more; the unsteered model into (almost) none.
    assert rate["FSSV"] >= 0.5 and rate["unsteered"] <= 1 / 6
    assert rate["PrOSV"] >= 0.5  # and so does the PrOSV, with its learned factor (no factor search)
    # The recipes are the paper's, moved from Gemma-2-2B's width 2304 to 576 by eta_alpha ~ n^1/2, eta_v ~ n^-1/2.
    assert summary["recipes"]["PrOSV"]["factor_lr"] == pytest.approx(10.0 / 2)
    assert summary["recipes"]["PrOSV"]["direction_lr"] == pytest.approx(4e-2 * 2)
    answers = summary["answers"]
    settings = summary["settings"]
    assert set(answers) == {"unsteered", "PrOSV", "FSSV"}
    assert all(len(texts) == settings["instructions"] for texts in answers.values())
    for method in ("PrOSV", "FSSV"):
        assert sum(a != b for a, b in zip(answers[method], answers["unsteered"])) >= settings["instructions"] - 1
    for instruction in summary["instructions"]:
        assert instruction.split()[0] in stdout
    for name in ("summary.md", "answers.md", "prosv/loss_curves.png", "fssv/loss_curves.png",
                 "prosv/runs/prosv/steering.json", "fssv/runs/fssv/params.safetensors"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "sweep.csv").exists()  # the sweep runs only with --sweep
    assert f"results in {out}" in stdout


def test_a_steering_trained_on_the_real_model_applies_with_steer(demo_run, capsys, monkeypatch):
    """The demo's saved PrOSV loads and steers `prosv-jax generate --steer` (float32 greedy decoding:
    exactly the Generator's answer with the loaded steering, and not the unsteered one)."""
    from prosv_jax import cli
    from prosv_jax.evaluation.generation import Generator
    from prosv_jax.interventions import load_steering

    out, _, _, env = demo_run
    saved = out / "prosv" / "runs" / "prosv"
    prompt = "Tell me about Paris."
    monkeypatch.setenv("PROSV_JAX_CACHE", env["PROSV_JAX_CACHE"])
    args = ["generate", "--model", "smollm2-135m-instruct", "--chat", "--prompt", prompt, "--max-new-tokens", "16",
            "--json"]
    assert cli.main(args + ["--steer", str(saved)]) == 0
    steered = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli.main(args) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    generator = Generator("smollm2-135m-instruct", "float32", batch_size=1)
    steering, params, _ = load_steering(str(saved), generator.model.cfg)
    expected = generator([prompt], steering=steering, params=params, max_new_tokens=16, temperature=0.0)[0]
    assert steered["text"] == expected.text and steered["text"] != plain["text"]


def test_demo_rerun_reuses_training_and_refuses_other_settings(demo_run):
    out, _, first, env = demo_run
    steering_file = out / "prosv" / "runs" / "prosv" / "params.safetensors"
    before = steering_file.stat().st_mtime_ns
    result = subprocess.run([sys.executable, "-m", "prosv_jax.cli", "demo", "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert steering_file.stat().st_mtime_ns == before  # nothing retrained
    with open(out / "summary.json") as f:
        second = json.load(f)
    assert second["heldout_loss"] == first["heldout_loss"]
    assert second["answers"] == first["answers"]  # same seeds, same sampled answers

    other = subprocess.run([sys.executable, "-m", "prosv_jax.cli", "demo", "--out", str(out), "--concept", "3"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert other.returncode == 2
    assert "concept_id" in other.stdout and "another --out" in other.stdout
    assert steering_file.stat().st_mtime_ns == before
