"""The steering transform against PyTorch forward hooks on the same HF weights, and its promises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_models
from prosv_jax.interventions import (LoReFT, PositionSpec, Site, Steering, SteeringVector, diffmean_direction,
                                     load_steering, save_steering, steered_forward, steered_generate,
                                     steering_hooks)
from prosv_jax.models.decoder import KVCache, positions_from_valid
from prosv_jax.models.loading import load_model

PROMPT_LENGTHS = (5, 3, 7)
RESPONSE_LENGTHS = (4, 6, 2)


@pytest.fixture(scope="module", params=["gemma2_window", "qwen2_bias_tied"])
def pair(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    torch_model = hf_models.build(request.param, directory, with_tokenizer=False)
    return torch_model, load_model(directory)


def sequences(side: str, seed: int = 0):
    """tokens, valid, prompt_mask [B, T] of prompt+response rows padded on `side`."""
    rng = np.random.RandomState(seed)
    lengths = [p + r for p, r in zip(PROMPT_LENGTHS, RESPONSE_LENGTHS)]
    width = max(lengths) + 1
    content = rng.randint(5, hf_models.VOCAB, (len(lengths), width))  # row r's tokens are content[r, :n]
    tokens = np.zeros(content.shape, np.int64)
    valid = np.zeros(tokens.shape, bool)
    prompt = np.zeros(tokens.shape, bool)
    for row, (p, n) in enumerate(zip(PROMPT_LENGTHS, lengths)):
        start = width - n if side == "left" else 0
        tokens[row, start:start + n] = content[row, :n]
        valid[row, start:start + n] = True
        prompt[row, start:start + p] = True
    return tokens, valid, prompt


def reference_mask(prompt: np.ndarray, valid: np.ndarray, spec: str) -> np.ndarray:
    """The edited positions, computed independently from the spec's definition."""
    out = np.zeros_like(prompt)
    for row in range(prompt.shape[0]):
        idx = np.flatnonzero(prompt[row])
        if spec == "all":
            out[row] = valid[row]
        elif spec == "all_prompt":
            out[row, idx] = True
        else:
            first, last = {"f2+l2": (2, 2), "f1": (1, 0), "l3": (0, 3), "f4+l4": (4, 4)}[spec]
            out[row, idx[:first]] = True
            out[row, idx[len(idx) - last:]] = True
    return out


def torch_steered_logits(torch_model, tokens, valid, edits):
    """Logits with forward hooks on model.layers[L] adding `edit(h, mask)` at each (layer, mask, edit)."""
    handles = []
    for layer, mask, edit in edits:
        mask_t = torch.tensor(mask)[..., None]

        def hook(module, inputs, output, mask_t=mask_t, edit=edit):
            h = output[0] if isinstance(output, tuple) else output
            h = torch.where(mask_t, edit(h), h)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        handles.append(torch_model.model.layers[layer].register_forward_hook(hook))
    try:
        positions = np.asarray(positions_from_valid(jnp.asarray(valid)))
        return hf_models.hf_logits(torch_model, tokens, valid, positions)
    finally:
        for handle in handles:
            handle.remove()


def sv_params(cfg, seed, alpha=3.0):
    v = np.random.RandomState(seed).normal(0, 0.5, cfg.hidden_size).astype(np.float32)
    return {"alpha": jnp.float32(alpha), "v": jnp.asarray(v)}


# --- position specs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["all", "all_prompt", "f2+l2", "f1", "l3", "f4+l4"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_position_masks_follow_the_real_prompt(spec, side):
    _, valid, prompt = sequences(side)
    got = np.asarray(PositionSpec.parse(spec).mask(jnp.asarray(prompt), jnp.asarray(valid)))
    np.testing.assert_array_equal(got, reference_mask(prompt, valid, spec))


def test_overlapping_first_and_last_positions_cover_a_short_prompt_once():
    prompt = np.array([[False, True, True, True]])
    np.testing.assert_array_equal(np.asarray(PositionSpec.parse("f2+l2").mask(prompt)), prompt)


@pytest.mark.parametrize("bad", ["", "x", "f", "f-1", "l2+f2", "f2l2", "first2", "f2+l"])
def test_bad_position_specs_show_the_grammar(bad):
    with pytest.raises(ValueError, match=r"f\{N\}\+l\{M\}"):
        PositionSpec.parse(bad)


def test_position_masks_are_data_not_shapes():
    """One compiled mask function serves prompts of every length (no retrace per example)."""
    spec = PositionSpec.parse("f2+l2")
    traces = []

    @jax.jit
    def masked(prompt):
        traces.append(1)
        return spec.mask(prompt)

    for lengths in ([5, 3], [2, 8], [1, 1]):
        masked(jnp.asarray(np.arange(8)[None, :] < np.asarray(lengths)[:, None]))
    assert len(traces) == 1


# --- parity with PyTorch hooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["all", "f2+l2", "all_prompt"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_steering_vector_matches_a_torch_forward_hook(pair, spec, side):
    torch_model, model = pair
    tokens, valid, prompt = sequences(side)
    layer = 1
    params = {"layer1": sv_params(model.cfg, 0)}
    alpha, v = 3.0, torch.tensor(np.asarray(params["layer1"]["v"]))
    expected = torch_steered_logits(torch_model, tokens, valid,
                                    [(layer, reference_mask(prompt, valid, spec), lambda h: h + alpha * v)])
    steering = Steering.single(layer, SteeringVector(), spec)
    got = steered_forward(steering)(model, params, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(prompt))
    np.testing.assert_allclose(np.asarray(got.logits)[valid], expected[valid], rtol=0, atol=1e-4)
    plain = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions_from_valid(jnp.asarray(valid))),
                             jnp.asarray(valid)).logits)
    assert np.abs(plain - expected)[valid].max() > 1e-2, "the steering must change the logits"


def test_several_sites_and_loreft_match_torch_hooks(pair):
    torch_model, model = pair
    tokens, valid, prompt = sequences("right", seed=1)
    kind = LoReFT(rank=3)
    steering = Steering((Site(0, SteeringVector(unit_norm=True), "f2+l2", "sv"), Site(2, kind, "all_prompt", "reft")))
    params = steering.init_params(jax.random.key(0), model.cfg)
    params["reft"]["b"] = jnp.linspace(-1, 1, 3)
    sv, reft = params["sv"], params["reft"]
    v_unit = torch.tensor(np.asarray(sv["v"]) / np.linalg.norm(np.asarray(sv["v"])))
    alpha = float(sv["alpha"])
    R, W, b = (torch.tensor(np.asarray(reft[k])) for k in ("R", "W", "b"))
    np.testing.assert_allclose(R.numpy() @ R.numpy().T, np.eye(3), atol=1e-5)
    expected = torch_steered_logits(torch_model, tokens, valid, [
        (0, reference_mask(prompt, valid, "f2+l2"), lambda h: h + alpha * v_unit),
        (2, reference_mask(prompt, valid, "all_prompt"), lambda h: h + (h @ W.T + b - h @ R.T) @ R),
    ])
    got = steered_forward(steering)(model, params, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(prompt))
    np.testing.assert_allclose(np.asarray(got.logits)[valid], expected[valid], rtol=0, atol=1e-4)


def test_gradients_match_torch_autograd(pair):
    """d(sum of response log-probs)/d(alpha, v) through the steered model equals PyTorch's."""
    torch_model, model = pair
    tokens, valid, prompt = sequences("right", seed=2)
    params = {"layer1": sv_params(model.cfg, 3, alpha=2.0)}
    alpha_t = torch.tensor(2.0, requires_grad=True)
    v_t = torch.tensor(np.asarray(params["layer1"]["v"]), requires_grad=True)
    mask = reference_mask(prompt, valid, "f2+l2")
    target = valid & ~prompt

    handle = torch_model.model.layers[1].register_forward_hook(
        lambda m, i, o: torch.where(torch.tensor(mask)[..., None], (o[0] if isinstance(o, tuple) else o)
                                    + alpha_t * v_t, o[0] if isinstance(o, tuple) else o))
    try:
        out = torch_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)),
                          position_ids=torch.tensor(np.asarray(positions_from_valid(jnp.asarray(valid)))))
    finally:
        handle.remove()
    logp = torch.log_softmax(out.logits[:, :-1], -1).gather(-1, torch.tensor(tokens[:, 1:])[..., None])[..., 0]
    (logp * torch.tensor(target[:, 1:])).sum().backward()

    forward = steered_forward(Steering.single(1, SteeringVector(), "f2+l2"))

    def objective(p):
        logits = forward(model, p, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(prompt)).logits
        logp = jax.nn.log_softmax(logits[:, :-1], -1)
        picked = jnp.take_along_axis(logp, jnp.asarray(tokens[:, 1:])[..., None], -1)[..., 0]
        return (picked * target[:, 1:]).sum()

    grads = jax.jit(jax.grad(objective))(params)["layer1"]
    np.testing.assert_allclose(float(grads["alpha"]), alpha_t.grad.item(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(grads["v"]), v_t.grad.numpy(), rtol=1e-3, atol=1e-4)


# --- invariances ------------------------------------------------------------------------------------------------


def test_padding_invariance(pair):
    _, model = pair
    steering = Steering.single(1, SteeringVector(), "f2+l2")
    params = {"layer1": sv_params(model.cfg, 4)}
    forward = jax.jit(steered_forward(steering))
    results = {}
    for side in ("left", "right"):
        tokens, valid, prompt = sequences(side)
        logits = np.asarray(forward(model, params, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(prompt)).logits)
        results[side] = [logits[row][valid[row]] for row in range(len(tokens))]
    tokens, valid, prompt = sequences("right")
    for row in range(len(tokens)):
        n = valid[row].sum()
        alone = forward(model, params, jnp.asarray(tokens[row:row + 1, :n]), jnp.ones((1, n), bool),
                        jnp.asarray(prompt[row:row + 1, :n])).logits
        for side in ("left", "right"):
            np.testing.assert_allclose(results[side][row], np.asarray(alone)[0], rtol=0, atol=2e-5)


def test_vmap_over_steering_vectors_equals_separate_calls(pair):
    _, model = pair
    tokens, valid, prompt = (jnp.asarray(a) for a in sequences("right"))
    steering = Steering.single(1, SteeringVector(beta=1.0, c=4.0), "f2+l2")
    keys = jax.random.split(jax.random.key(0), 4)
    stacked = jax.vmap(lambda k: steering.init_params(k, model.cfg))(keys)
    forward = steered_forward(steering)
    batched = jax.jit(jax.vmap(lambda p: forward(model, p, tokens, valid, prompt).logits))(stacked)
    for i in range(4):
        single = forward(model, jax.tree.map(lambda x: x[i], stacked), tokens, valid, prompt).logits
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single), rtol=0, atol=2e-5)
    assert np.abs(np.asarray(batched[0] - batched[1])).max() > 1e-3


def test_a_mask_that_selects_nothing_is_exactly_the_unsteered_model(pair):
    _, model = pair
    tokens, valid, prompt = (jnp.asarray(a) for a in sequences("left"))
    steering = Steering.single(1, SteeringVector(), "f0")
    got = steered_forward(steering)(model, {"layer1": sv_params(model.cfg, 5)}, tokens, valid, prompt).logits
    plain = model(tokens, positions_from_valid(valid), valid).logits
    np.testing.assert_array_equal(np.asarray(got), np.asarray(plain))


# --- prompt-only generation -------------------------------------------------------------------------------------


def test_prompt_only_steering_touches_the_prefill_only(pair):
    _, model = pair
    tokens, valid, _ = sequences("left", seed=5)
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)
    layer, new = 1, 6
    steering = Steering.single(layer, SteeringVector(), "f2+l2")
    params = {"layer1": sv_params(model.cfg, 6, alpha=8.0)}
    steered = steered_generate(model, steering, params, tokens, valid, max_new_tokens=new, stop_ids=())
    plain_gen = np.asarray(steered_generate(model, steering, steering.with_factor(params, 0.0), tokens, valid,
                                            max_new_tokens=new, stop_ids=()).tokens)
    assert not np.array_equal(np.asarray(steered.tokens), plain_gen), "steering must change the answer"

    # Replay: steered prefill, then the PLAIN model's decode steps on its cache, reproduces the generation.
    positions = positions_from_valid(valid)
    cache = KVCache.empty(model.cfg, tokens.shape[0], tokens.shape[1] + new, model.dtype)
    forward = steered_forward(steering)
    prefill = forward(model, params, tokens, valid, valid, cache=cache)
    plain_prefill = model(tokens, positions, valid, cache=cache)
    for block in range(model.cfg.num_layers):  # caches at blocks <= L unchanged, later ones changed
        same = np.array_equal(np.asarray(prefill.cache.keys[block]), np.asarray(plain_prefill.cache.keys[block]))
        assert same == (block <= layer), block
    token = jnp.argmax(prefill.logits[:, -1], -1)
    replay, cache = [token], prefill.cache
    for step in range(1, new):
        out = model(token[:, None], positions[:, -1:] + step, jnp.ones((tokens.shape[0], 1), bool), cache=cache)
        token, cache = jnp.argmax(out.logits[:, 0], -1), out.cache
        replay.append(token)
    np.testing.assert_array_equal(np.stack([np.asarray(t) for t in replay], 1), np.asarray(steered.tokens))

    # FSSV also edits decode steps: its decode step differs from the plain decode step on the same cache.
    fssv = Steering.single(layer, SteeringVector(), "all")
    fssv_tokens = np.asarray(steered_generate(model, fssv, params, tokens, valid, max_new_tokens=2,
                                              stop_ids=()).tokens)
    full_prefill = steered_forward(fssv)(model, params, tokens, valid, valid, cache=KVCache.empty(
        model.cfg, tokens.shape[0], tokens.shape[1] + 2, model.dtype))
    token = jnp.argmax(full_prefill.logits[:, -1], -1)
    np.testing.assert_array_equal(np.asarray(token), fssv_tokens[:, 0])
    step = (token[:, None], positions[:, -1:] + 1, jnp.ones((tokens.shape[0], 1), bool))
    _, decode_hook = steering_hooks(fssv, params, valid)
    plain_logits = model(*step, cache=full_prefill.cache).logits
    fssv_logits = model(*step, cache=full_prefill.cache, hook=decode_hook).logits
    assert np.abs(np.asarray(plain_logits - fssv_logits)).max() > 1e-2
    np.testing.assert_array_equal(np.asarray(jnp.argmax(fssv_logits[:, 0], -1)), fssv_tokens[:, 1])
    assert steering_hooks(steering, params, valid)[1] is None  # PrOSV: no decode hook at all


# --- DiffMean, I/O ----------------------------------------------------------------------------------------------


def test_diffmean_is_the_mean_residual_difference(pair):
    torch_model, model = pair
    tokens, valid, prompt = sequences("right", seed=7)
    positive = np.array([True, False, True])
    response = valid & ~prompt
    got = np.asarray(diffmean_direction(model, 1, tokens, valid, response, positive))
    _, hidden = hf_models.hf_logits(torch_model, tokens, valid, np.asarray(positions_from_valid(jnp.asarray(valid))),
                                    hidden=True)
    h = hidden[2]  # residual after block 1
    expected = h[response & positive[:, None]].mean(0) - h[response & ~positive[:, None]].mean(0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="positive and one negative"):
        diffmean_direction(model, 1, tokens, valid, response, np.ones(3, bool))


def test_save_and_load_round_trip_and_refuse_another_model(pair, tmp_path):
    _, model = pair
    steering = Steering((Site(1, SteeringVector(train_factor=False), "f2+l2", "sv"), Site(0, LoReFT(2), "all", "r")))
    params = steering.init_params(jax.random.key(1), model.cfg)
    save_steering(tmp_path / "sv", steering, params, model.cfg, info={"concept": "test"})
    loaded, loaded_params, spec = load_steering(tmp_path / "sv", model.cfg)
    assert loaded == steering and spec["info"] == {"concept": "test"}
    for site in params:
        for name in params[site]:
            np.testing.assert_array_equal(np.asarray(loaded_params[site][name]), np.asarray(params[site][name]))
    with pytest.raises(ValueError, match="hidden_size=.*this model has hidden_size"):
        load_steering(tmp_path / "sv", model.cfg.replace(hidden_size=model.cfg.hidden_size * 2))
    with pytest.raises(ValueError, match="num_layers"):
        load_steering(tmp_path / "sv", model.cfg.replace(num_layers=1, layer_types=model.cfg.layer_types[:1]))
    with pytest.raises(FileNotFoundError, match="steering.json"):
        load_steering(tmp_path / "nothing")
    # m8: a same-shaped model of another family is refused
    with pytest.raises(ValueError, match=f"family={model.cfg.family}, but this model has family=other"):
        load_steering(tmp_path / "sv", model.cfg.replace(family="other"))


def test_steering_files_are_saved_as_a_pair_and_checked_on_load(pair, tmp_path, monkeypatch):
    """m14: a kill between the two files leaves the old pair; m3: a corrupt or incomplete spec names the file."""
    import json

    import prosv_jax.interventions.io as io

    _, model = pair
    steering = Steering.single(1, SteeringVector(), "f2+l2")
    old = steering.init_params(jax.random.key(1), model.cfg)
    save_steering(tmp_path / "sv", steering, old, model.cfg, info={"v": 1})
    (tmp_path / "sv" / "notes.txt").write_text("kept")
    new = steering.init_params(jax.random.key(2), model.cfg)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between the two files")

    monkeypatch.setattr(io, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_steering(tmp_path / "sv", steering, new, model.cfg, info={"v": 2})
    monkeypatch.undo()
    _, params, spec = load_steering(tmp_path / "sv", model.cfg)
    assert spec["info"] == {"v": 1}
    np.testing.assert_array_equal(np.asarray(params["layer1"]["v"]), np.asarray(old["layer1"]["v"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sv"]  # no staging folder left behind
    save_steering(tmp_path / "sv", steering, new, model.cfg, info={"v": 2})
    _, params, spec = load_steering(tmp_path / "sv", model.cfg)
    assert spec["info"] == {"v": 2} and (tmp_path / "sv" / "notes.txt").read_text() == "kept"
    np.testing.assert_array_equal(np.asarray(params["layer1"]["v"]), np.asarray(new["layer1"]["v"]))

    spec_path = tmp_path / "sv" / "steering.json"
    good = json.loads(spec_path.read_text())
    spec_path.write_text("{\n")
    with pytest.raises(ValueError, match=f"{spec_path} is not valid JSON"):
        load_steering(tmp_path / "sv")
    spec_path.write_text(json.dumps({**good, "model": {"hidden_size": 8, "num_layers": 2}}))
    with pytest.raises(ValueError, match=rf"{spec_path} lacks \['model.family'\]"):
        load_steering(tmp_path / "sv")
    spec_path.write_text(json.dumps({**good, "sites": [{"layer": 1}]}))
    with pytest.raises(ValueError, match=f"{spec_path}: a site lacks a field"):
        load_steering(tmp_path / "sv")


def test_layer_out_of_range_is_refused(pair):
    _, model = pair
    with pytest.raises(ValueError, match="out of range"):
        Steering.single(model.cfg.num_layers, SteeringVector()).init_params(jax.random.key(0), model.cfg)
