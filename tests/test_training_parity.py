"""Training against an independent PyTorch reference on the same HF weights (method.md sections 2-3).

Losses (Lang, scaled SimPO), the chunked log-sum-exp head, the optimiser recipe (two-group Adam, linear decay to 0
without warm-up, clipping of v only, gradient accumulation), the vmapped step the Trainer runs, and frozen-prefix
caching. The torch side recomputes everything from the examples: token packing, edited positions, position ids,
labels, the loss formulas and the optimiser loop (torch.optim.Adam + get_linear_schedule_with_warmup).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import hf_models
from prosv_jax.interventions import Site, Steering, SteeringVector, steered_forward
from prosv_jax.models.loading import load_model
from prosv_jax.training.batch import make_batch
from prosv_jax.training.losses import token_logprobs
from prosv_jax.training.optim import OptimConfig, make_optimizer, param_labels, schedule_fraction, schedule_steps
from prosv_jax.training.step import (StepConfig, StepData, TrainState, loss_fn, make_train_step, prefix_residuals,
                                     reference_logprob_sums, response_logprobs)
from prosv_jax.training.trainer import group_program

LAYER = 1
LENGTH, SLOTS = 16, 8  # one shape for every batch: one compiled step


@pytest.fixture(scope="module", params=["llama_gqa_untied", "gemma2_window"])
def pair(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    torch_model = hf_models.build(request.param, directory, with_tokenizer=False).float()
    for p in torch_model.parameters():
        p.requires_grad_(False)
    return torch_model, load_model(directory, jnp.float32)


def examples(prompt_lengths, response_lengths, seed):
    rng = np.random.RandomState(seed)
    return [(list(rng.randint(5, hf_models.VOCAB, p)), list(rng.randint(5, hf_models.VOCAB, r)))
            for p, r in zip(prompt_lengths, response_lengths)]


def pack(exs):
    return make_batch(exs, length=LENGTH, response_slots=SLOTS)


def step_data(batch, reference=None, prefix=None) -> StepData:
    ref = jnp.zeros(batch.tokens.shape[0], jnp.float32) if reference is None else reference
    return StepData(*(jnp.asarray(a) for a in batch), ref, prefix)


# --- the independent torch reference -------------------------------------------------------------------------------


def reference_arrays(exs, spec):
    """tokens, valid, position ids, edit mask and shifted labels (-100 off the response), from the examples."""
    B = len(exs)
    tokens = np.zeros((B, LENGTH), np.int64)
    valid = np.zeros((B, LENGTH), bool)
    edit = np.zeros((B, LENGTH), bool)
    labels = np.full((B, LENGTH), -100, np.int64)
    for row, (prompt, response) in enumerate(exs):
        p, n = len(prompt), len(prompt) + len(response)
        tokens[row, :n] = prompt + response
        valid[row, :n] = True
        labels[row, p:n] = response
        if spec == "all":
            edit[row, :n] = True
        else:
            assert spec == "f2+l2"
            edit[row, :min(2, p)] = True
            edit[row, max(p - 2, 0):p] = True
    positions = np.where(valid, np.cumsum(valid, 1) - 1, 0)
    return tokens, valid, positions, edit, labels


def torch_logits(torch_model, exs, edits):
    """Logits [B, T, V] with forward hooks adding alpha * v on the output of model.layers[L] at the edited tokens.

    edits: (layer, spec, alpha, v) with alpha, v torch tensors (gradients flow into them).
    """
    tokens, valid, positions, _, _ = reference_arrays(exs, "all")
    handles = []
    for layer, spec, alpha, v in edits:
        mask = torch.tensor(reference_arrays(exs, spec)[3])[..., None]

        def hook(module, inputs, output, mask=mask, alpha=alpha, v=v):
            h = output[0] if isinstance(output, tuple) else output
            h = torch.where(mask, h + alpha * v, h)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        handles.append(torch_model.model.layers[layer].register_forward_hook(hook))
    try:
        return torch_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)),
                           position_ids=torch.tensor(positions)).logits.float()
    finally:
        for handle in handles:
            handle.remove()


def torch_lang_loss(torch_model, exs, edits):
    logits = torch_logits(torch_model, exs, edits)
    labels = torch.tensor(reference_arrays(exs, "all")[4])
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="mean")


def torch_response_sums(torch_model, exs, edits):
    """(summed response log-probs [B], response lengths [B])."""
    logits = torch_logits(torch_model, exs, edits)
    labels = torch.tensor(reference_arrays(exs, "all")[4])[:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (logp * mask).sum(-1), mask.sum(-1).float()


def torch_simpo_loss(pi_sums, lengths, ref_sums):
    P = pi_sums.shape[0] // 2
    w = torch.clamp(ref_sums[P:] - ref_sums[:P], min=1.0)
    margin = w / lengths[:P] * pi_sums[:P] - pi_sums[P:] / lengths[P:]
    return -torch.nn.functional.logsigmoid(margin).mean()


def sv_params(model, seed=0, beta=2.0, c=1.0):
    kind = SteeringVector(beta=beta, c=c)
    return kind, {f"layer{LAYER}": kind.init_params(jax.random.key(seed), model.cfg.hidden_size)}


def to_torch(params):
    return (torch.tensor(float(params["alpha"]), requires_grad=True),
            torch.tensor(np.asarray(params["v"]), requires_grad=True))


# --- 1. Lang loss --------------------------------------------------------------------------------------------------


LANG_EXAMPLES = ((5, 3, 7, 4), (4, 6, 2, 5))


@pytest.mark.parametrize("spec", ["f2+l2", "all"])
def test_lang_loss_matches_torch_cross_entropy(pair, spec):
    torch_model, model = pair
    exs = examples(*LANG_EXAMPLES, seed=1)
    batch = pack(exs)
    np.testing.assert_array_equal(batch.tokens, reference_arrays(exs, spec)[0])
    kind, params = sv_params(model, beta=1.0, c=4.0)
    steering = Steering.single(LAYER, kind, spec)
    alpha, v = to_torch(params[f"layer{LAYER}"])
    with torch.no_grad():
        expected = torch_lang_loss(torch_model, exs, [(LAYER, spec, alpha, v)]).item()
        plain = torch_lang_loss(torch_model, exs, []).item()
    assert abs(expected - plain) > 1e-2, "the steering must change the loss"
    chunk = 37 if spec == "f2+l2" else 32768  # a padded last chunk; the full head (one chunk)
    got = float(jax.jit(loss_fn, static_argnums=(2, 4))(params, model, steering, step_data(batch),
                                                          StepConfig("lang", vocab_chunk=chunk)))
    assert abs(got - expected) <= 1e-5 + 1e-6 * abs(expected), (got, expected)


def test_chunked_vocabulary_head_equals_the_full_head(pair):
    """37 does not divide the vocabulary (320): the last chunk is padded; Gemma's final soft-cap applies per chunk."""
    _, model = pair
    exs = examples(*LANG_EXAMPLES, seed=2)
    data = step_data(pack(exs))
    positions = jnp.asarray(reference_arrays(exs, "all")[2])

    @jax.jit
    def heads(model, data):
        hidden, _, _ = model.run_blocks(model.embed(data.tokens), positions, data.valid, rows=data.target_index)
        chunked = token_logprobs(model, hidden, data.target_ids, vocab_chunk=37)
        full = token_logprobs(model, hidden, data.target_ids, vocab_chunk=10 ** 6)
        logits = model(data.tokens, positions, data.valid).logits  # the model's own head, soft-cap included
        direct = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), data.target_index[..., None], 1)
        return chunked, full, jnp.take_along_axis(direct, data.target_ids[..., None], -1)[..., 0]

    chunked, full, direct = (np.asarray(x)[np.asarray(data.target_mask)] for x in heads(model, data))
    np.testing.assert_allclose(chunked, full, rtol=0, atol=2e-6)
    np.testing.assert_allclose(full, direct, rtol=0, atol=2e-6)


# --- 2. scaled SimPO -----------------------------------------------------------------------------------------------


def simpo_examples(seed=3):
    """3 pairs sharing prompts; negatives shorter than positives in two pairs (w > 1), longer in one (w = 1)."""
    prompts = [ex[0] for ex in examples((5, 3, 6), (1, 1, 1), seed)]
    pos = examples((1, 1, 1), (6, 2, 7), seed + 1)
    neg = examples((1, 1, 1), (2, 6, 3), seed + 2)
    return [(p, r) for p, (_, r) in zip(prompts, pos)] + [(p, r) for p, (_, r) in zip(prompts, neg)]


@pytest.mark.parametrize("spec", ["f2+l2", "all"])
def test_scaled_simpo_matches_torch(pair, spec):
    torch_model, model = pair
    exs = simpo_examples()
    batch = pack(exs)
    kind, params = sv_params(model, beta=1.0, c=4.0)
    steering = Steering.single(LAYER, kind, spec)
    alpha, v = to_torch(params[f"layer{LAYER}"])
    with torch.no_grad():
        ref_t, lengths = torch_response_sums(torch_model, exs, [])
        pi_t, _ = torch_response_sums(torch_model, exs, [(LAYER, spec, alpha, v)])
        expected = torch_simpo_loss(pi_t, lengths, ref_t).item()
    ref = jax.jit(reference_logprob_sums)(model, step_data(batch))
    np.testing.assert_allclose(np.asarray(ref), ref_t.numpy(), rtol=1e-6, atol=5e-5)
    w = np.maximum(1.0, ref_t.numpy()[3:] - ref_t.numpy()[:3])
    assert (w > 1).any() and (w == 1).any(), w
    chunk = 37 if spec == "all" else 32768
    got = float(jax.jit(loss_fn, static_argnums=(2, 4))(params, model, steering, step_data(batch, ref),
                                                          StepConfig("simpo", vocab_chunk=chunk)))
    assert abs(got - expected) <= 1e-5 + 1e-6 * abs(expected), (got, expected)


def test_simpo_mean_is_over_real_pairs_only():
    """m1: a partial last batch pads with masked pairs; they must neither add log 2 to the loss nor shrink the
    gradient (the reference's last batch is simply smaller)."""
    from prosv_jax.training.losses import simpo_loss

    rng = np.random.RandomState(0)
    logprobs = jnp.asarray(-rng.rand(6, 5), jnp.float32)  # 3 pairs: rows 0-2 positives, 3-5 negatives
    mask = jnp.asarray(rng.rand(6, 5) > 0.3).at[:, 0].set(True)
    ref = jnp.asarray(-rng.rand(6) * 10, jnp.float32)
    padded_mask = mask.at[jnp.array([2, 5])].set(False)  # the third pair is padding
    real = lambda lp: simpo_loss(lp[jnp.array([0, 1, 3, 4])], mask[jnp.array([0, 1, 3, 4])],  # noqa: E731
                                 ref[jnp.array([0, 1, 3, 4])])
    padded = lambda lp: simpo_loss(lp, padded_mask, ref)  # noqa: E731
    assert float(padded(logprobs)) == pytest.approx(float(real(logprobs)), rel=1e-6)
    g_real, g_padded = jax.grad(real)(logprobs), jax.grad(padded)(logprobs)
    np.testing.assert_allclose(np.asarray(g_padded), np.asarray(g_real), rtol=1e-6)  # rows 2, 5: zero in both
    assert np.asarray(g_real)[jnp.array([0, 1, 3, 4])].any()


# --- 3. the optimiser recipe -----------------------------------------------------------------------------------


ETA_ALPHA, ETA_V = 1.0, 0.05
STEPS = 8


def train_batches():
    shapes = [((5, 3, 7), (4, 6, 2)), ((4, 6, 3), (5, 2, 6)), ((7, 2, 5), (3, 7, 4))]
    return [examples(p, r, seed=10 + i) for i, (p, r) in enumerate(shapes)]


def torch_objective_loss(torch_model, exs, edits, objective):
    """The batch's Lang loss, or its scaled-SimPO loss (rows: P positives then their P negatives)."""
    if objective == "lang":
        return torch_lang_loss(torch_model, exs, edits)
    with torch.no_grad():
        ref, _ = torch_response_sums(torch_model, exs, [])
    pi, lengths = torch_response_sums(torch_model, exs, edits)
    return torch_simpo_loss(pi, lengths, ref)


def torch_training(torch_model, params, spec, order, grad_accum, horizon, objective="lang"):
    """The reference loop: Adam groups {v}, {alpha}; clip v only; linear decay, no warm-up, over `horizon` scheduler
    steps, stepped once per update (the reference's horizon is every micro-batch: len(order))."""
    alpha, v = to_torch(params)
    opt = torch.optim.Adam([{"params": [v], "lr": ETA_V}, {"params": [alpha], "lr": ETA_ALPHA}],
                           betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = transformers.get_linear_schedule_with_warmup(opt, 0, horizon)
    losses, norms = [], []
    for i, exs in enumerate(order):
        loss = torch_objective_loss(torch_model, exs, [(LAYER, spec, alpha, v)], objective)
        (loss / grad_accum).backward()
        losses.append(loss.item())
        if (i + 1) % grad_accum == 0:
            norms.append(float(torch.nn.utils.clip_grad_norm_([v], 1.0)))
            opt.step()
            sched.step()
            opt.zero_grad()
    assert sched.get_last_lr()[1] == pytest.approx(ETA_ALPHA * (1 - (len(order) // grad_accum) / horizon))
    return alpha.detach().numpy(), v.detach().numpy(), np.asarray(losses), np.asarray(norms)


def jax_training(model, steering, params, order, optim: OptimConfig, horizon, objective="lang"):
    """One run: make_optimizer + make_train_step, jitted, one batch per call (SimPO: with the unsteered model's
    response log-prob sums as the batch's reference, as the Trainer caches them). -> (final params, losses, norms)."""
    labels = param_labels(steering, params)
    tx = make_optimizer(optim, labels, horizon)
    step = make_train_step(steering, StepConfig(objective), tx, labels, schedule_fraction(optim, horizon),
                           optim.grad_accum)
    reference = jax.jit(reference_logprob_sums)
    graphdef, model_state = nnx.split(model)
    lrs = {"factor": jnp.float32(ETA_ALPHA), "direction": jnp.float32(ETA_V), "other": jnp.float32(0.0)}
    run = jax.jit(lambda ms, state, data: step(nnx.merge(graphdef, ms), state, lrs, data))
    state = TrainState(params, tx.init(params), jnp.int32(0), jnp.bool_(True))
    metrics = []
    for exs in order:
        data = step_data(pack(exs))
        if objective == "simpo":
            data = data._replace(reference=reference(model, data))
        state, m = run(model_state, state, data)
        metrics.append(jax.device_get(m))
    assert bool(state.alive) and int(state.step) == len(order)
    return (state.params, np.asarray([m["loss"] for m in metrics]),
            np.asarray([m["grad_norm/direction"] for m in metrics]))


def jax_group_training(model, steering, params, order, optim: OptimConfig, updates_total):
    """The Trainer's program (`group_program`): vmap over a stack of 2 identical runs, fed from the cached prefix
    (the Trainer's default prefix_cache="device"); both runs must be identical. -> run 0's (params, losses, norms)."""
    graphdef, model_state = nnx.split(model)
    tx, group_step = group_program(graphdef, model.cfg, steering, StepConfig("lang"), optim, updates_total)
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), params)
    state = TrainState(stacked, jax.vmap(tx.init)(stacked), jnp.zeros(2, jnp.int32), jnp.ones(2, bool))
    lrs = {"factor": jnp.full(2, ETA_ALPHA), "direction": jnp.full(2, ETA_V), "other": jnp.zeros(2)}
    prefix = jax.jit(prefix_residuals, static_argnums=1)
    metrics = []
    for exs in order:
        data = step_data(pack(exs))
        data = data._replace(prefix=prefix(model, steering, data.tokens, data.valid))
        state, m = group_step(model_state, state, lrs, jax.tree.map(lambda x: jnp.stack([x, x]), data))
        metrics.append(jax.device_get(m))
    assert bool(state.alive.all()) and (np.asarray(state.step) == len(order)).all()
    losses = np.stack([m["loss"] for m in metrics])
    norms = np.stack([m["grad_norm/direction"] for m in metrics])
    for leaf in jax.tree.leaves(state.params):
        np.testing.assert_array_equal(np.asarray(leaf[0]), np.asarray(leaf[1]))
    np.testing.assert_array_equal(losses[:, 0], losses[:, 1])
    np.testing.assert_array_equal(norms[:, 0], norms[:, 1])
    return jax.tree.map(lambda x: x[0], state.params), losses[:, 0], norms[:, 0]


def test_optimizer_recipe_matches_torch_adam_loop(pair):
    """8 steps over 3 batches, no accumulation. Llama (PrOSV f2+l2): make_train_step for one run. Gemma-2 (FSSV):
    the Trainer's vmapped program. One compiled step per case (compile time)."""
    torch_model, model = pair
    gemma = model.cfg.final_softcap is not None
    spec = "all" if gemma else "f2+l2"
    kind, params = sv_params(model, seed=42, beta=2.0, c=1.0)  # v's gradient norm crosses 1
    steering = Steering.single(LAYER, kind, spec)
    batches = train_batches()
    order = [batches[i % len(batches)] for i in range(STEPS)]
    optim = OptimConfig(factor_lr=ETA_ALPHA, direction_lr=ETA_V)

    alpha_t, v_t, losses_t, norms_t = torch_training(torch_model, params[f"layer{LAYER}"], spec, order, 1, STEPS)
    train = jax_group_training if gemma else jax_training
    final, losses, norms = train(model, steering, params, order, optim, schedule_steps(optim, STEPS))

    np.testing.assert_allclose(losses, losses_t, rtol=1e-5, atol=1e-5)
    assert (norms_t > 1.0).any() and (norms_t < 1.0).any(), norms_t  # both sides of the clip
    np.testing.assert_allclose(norms, norms_t, rtol=1e-4)
    final = final[f"layer{LAYER}"]
    assert abs(float(final["alpha"]) - float(params[f"layer{LAYER}"]["alpha"])) > 0.05, "alpha must move"
    np.testing.assert_allclose(float(final["alpha"]), alpha_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(final["v"]), v_t, rtol=1e-4, atol=1e-5)


def simpo_train_batches():
    return [simpo_examples(seed=3 + 10 * i) for i in range(3)]


@pytest.mark.parametrize("pair", ["llama_gqa_untied"], indirect=True)  # one model: compile time
@pytest.mark.parametrize("objective, decay_over", [("lang", "micro_steps"), ("lang", "updates"),
                                                   ("simpo", "micro_steps")])
def test_accumulated_recipe_matches_torch_adam_loop(pair, objective, decay_over):
    """grad_accum 2 (the released Qwen2.5-32B SimPO row), 8 micro-steps over 3 batches, PrOSV f2+l2: torch backprops
    loss/2 per micro-batch and steps every 2 (the mean gradient, as optax.MultiSteps). The reference schedule
    ("micro_steps") is get_linear_schedule_with_warmup(opt, 0, 8 micro-steps) stepped once per update, so it ends at
    1 - 4/8 of the peak; "updates" decays to 0 over the 4 updates. SimPO: positives and negatives in one batch, the
    unsteered model's log-prob sums as reference (torch recomputes them)."""
    torch_model, model = pair
    grad_accum = 2
    kind, params = sv_params(model, seed=42, beta=3.0, c=1.0)  # v's gradient norm crosses 1
    steering = Steering.single(LAYER, kind, "f2+l2")
    batches = train_batches() if objective == "lang" else simpo_train_batches()
    order = [batches[i % len(batches)] for i in range(STEPS)]
    optim = OptimConfig(factor_lr=ETA_ALPHA, direction_lr=ETA_V, grad_accum=grad_accum, decay_over=decay_over)
    horizon = STEPS if decay_over == "micro_steps" else STEPS // grad_accum
    assert schedule_steps(optim, STEPS) == horizon

    alpha_t, v_t, losses_t, norms_t = torch_training(torch_model, params[f"layer{LAYER}"], "f2+l2", order, grad_accum,
                                                     horizon, objective)
    final, losses, micro_norms = jax_training(model, steering, params, order, optim, horizon, objective)

    np.testing.assert_allclose(losses, losses_t, rtol=1e-5, atol=1e-5)
    if objective == "lang":
        assert (norms_t > 1.0).any() and (norms_t < 1.0).any(), norms_t  # both sides of the clip
        assert (micro_norms > 1.0).any()
    final = final[f"layer{LAYER}"]
    assert abs(float(final["alpha"]) - float(params[f"layer{LAYER}"]["alpha"])) > 0.05, "alpha must move"
    np.testing.assert_allclose(float(final["alpha"]), alpha_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(final["v"]), v_t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pair", ["llama_gqa_untied"], indirect=True)  # one model: compile time
@pytest.mark.parametrize("pack_length", [0, 24])
def test_trainer_simpo_with_accumulation_and_a_partial_batch_matches_torch(pair, tmp_path, pack_length):
    """M8 through the Trainer itself (its cached reference log-probs, pos/neg gather, prefix cache, batch order):
    5 pairs in batches of 3 (the second batch of each epoch has 2 real pairs and one masked), 2 epochs, grad_accum 2,
    one example per row or packed two or three to a row of 24 tokens. Torch runs the reference loop on the same
    batches, the partial one simply smaller."""
    from prosv_jax.interventions import load_steering
    from prosv_jax.training.data import TrainDataset, batch_indices
    from prosv_jax.training.trainer import RunSpec, TrainConfig, Trainer

    torch_model, model = pair
    a, b = simpo_examples(3), simpo_examples(13)
    positives, negatives = a[:3] + b[:2], a[3:] + b[3:5]
    steering = Steering.single(LAYER, SteeringVector(beta=3.0, c=1.0), "f2+l2")
    optim = OptimConfig(factor_lr=ETA_ALPHA, direction_lr=ETA_V, grad_accum=2)
    trainer = Trainer(model, steering, {"d": TrainDataset.from_examples(positives, negatives)}, str(tmp_path), optim,
                      StepConfig("simpo"), TrainConfig(epochs=2, batch_size=3, runs_per_program=1, progress=False,
                                                         pack_length=pack_length))
    run = RunSpec("r", seed=7, dataset="d")
    init = trainer._init_params(run)[f"layer{LAYER}"]
    summary = trainer.train([run])["r"]
    assert summary["steps"] == 4 and not summary["diverged"]

    order = []
    for step in range(4):
        idx, mask = batch_indices(7, step, 5, 3)
        real = [int(i) for i, m in zip(idx, mask) if m]
        order.append([positives[i] for i in real] + [negatives[i] for i in real])
    assert [len(o) // 2 for o in order] == [3, 2, 3, 2]  # the partial batches are smaller on the torch side
    alpha_t, v_t, losses_t, _ = torch_training(torch_model, init, "f2+l2", order, 2, 4, "simpo")
    records = [json.loads(line) for line in open(tmp_path / "groups" / "group-0000" / "metrics.jsonl")]
    np.testing.assert_allclose([r["loss"] for r in records], losses_t, rtol=1e-5, atol=1e-5)
    _, final, _ = load_steering(tmp_path / "runs" / "r")
    final = final[f"layer{LAYER}"]
    assert abs(float(final["alpha"]) - float(init["alpha"])) > 0.05, "alpha must move"
    np.testing.assert_allclose(float(final["alpha"]), alpha_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(final["v"]), v_t, rtol=1e-4, atol=1e-5)


# --- 4. frozen-prefix caching --------------------------------------------------------------------------------------


def test_frozen_prefix_gives_the_same_loss_and_gradients(pair):
    """Sites at blocks 1 and 2; Lang on the Llama model, SimPO on Gemma-2 (one objective each: compile time)."""
    _, model = pair
    objective = "simpo" if model.cfg.final_softcap is not None else "lang"
    steering = Steering((Site(1, SteeringVector(beta=1.0, c=4.0), "f2+l2", "a"),
                         Site(2, SteeringVector(beta=1.0, c=4.0), "all", "b")))
    params = steering.init_params(jax.random.key(7), model.cfg)
    data = step_data(pack(simpo_examples(seed=20)))
    if objective == "simpo":
        data = data._replace(reference=jax.jit(reference_logprob_sums)(model, data))
    cached = data._replace(prefix=jax.jit(prefix_residuals, static_argnums=1)(model, steering, data.tokens,
                                                                                data.valid))
    assert cached.prefix.shape == (*data.tokens.shape, model.cfg.hidden_size)
    config = StepConfig(objective, vocab_chunk=37)

    @jax.jit
    def both(params, model, data, cached):
        grad = jax.value_and_grad(loss_fn)
        return grad(params, model, steering, data, config), grad(params, model, steering, cached, config)

    (loss, grads), (loss_c, grads_c) = both(params, model, data, cached)
    np.testing.assert_allclose(float(loss_c), float(loss), rtol=0, atol=1e-6)
    for site in ("a", "b"):
        for name in ("alpha", "v"):
            g, gc = np.asarray(grads[site][name]), np.asarray(grads_c[site][name])
            assert np.abs(g).max() > 1e-4
            np.testing.assert_allclose(gc, g, rtol=1e-5, atol=1e-6)


def test_last_block_on_response_rows_equals_the_full_forward(pair):
    """The loss path runs the last block on the response rows only (Decoder.run_blocks(rows=...)). Sites on the
    last two blocks (the last one edited at those rows), and a prefix cached after the last block (no block left
    to run): log-probs and gradients equal log_softmax of the steered model's full logits."""
    _, model = pair
    last = model.cfg.num_layers - 1
    data = step_data(pack(examples(*LANG_EXAMPLES, seed=4)))
    steering = Steering((Site(last - 1, SteeringVector(beta=1.0, c=4.0), "f2+l2", "a"),
                         Site(last, SteeringVector(beta=1.0, c=4.0), "all", "b")))
    only_last = Steering((Site(last, SteeringVector(beta=1.0, c=4.0), "f2+l2", "b"),))
    params = steering.init_params(jax.random.key(3), model.cfg)

    def direct(params, steering):
        logits = steered_forward(steering)(model, params, data.tokens, data.valid, data.prompt_mask).logits
        rows = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), data.target_index[..., None], 1)  # [B, R, V]
        return jnp.take_along_axis(rows, data.target_ids[..., None], -1)[..., 0]  # [B, R]

    def rows_path(params, steering, cached):
        prefix = prefix_residuals(model, steering, data.tokens, data.valid) if cached else None
        return response_logprobs(model, steering, params, data._replace(prefix=prefix), vocab_chunk=37)

    mask = np.asarray(data.target_mask)
    for steer, site_params, cached in ((steering, params, False), (only_last, {"b": params["b"]}, True)):
        total = lambda f: lambda p: (f(p) * data.target_mask).sum()  # noqa: E731
        want, want_grad = jax.jit(jax.value_and_grad(total(lambda p: direct(p, steer))))(site_params)
        got, got_grad = jax.jit(jax.value_and_grad(total(lambda p: rows_path(p, steer, cached))))(site_params)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(rows_path(site_params, steer, cached))[mask],
                                   np.asarray(direct(site_params, steer))[mask], rtol=1e-5, atol=1e-5)
        for site in site_params:
            for name in ("alpha", "v"):
                g, want_g = np.asarray(got_grad[site][name]), np.asarray(want_grad[site][name])
                assert np.abs(want_g).max() > 1e-4
                np.testing.assert_allclose(g, want_g, rtol=1e-4, atol=1e-6)


def _dots(jaxpr):
    """Every dot_general equation of a jaxpr, nested ones (jit, scan, custom rules) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _dots(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _dots(sub)


def test_bfloat16_step_multiplies_bfloat16_operands(pair):
    """In a bfloat16 model every matmul of the train step, backward pass included, multiplies two bfloat16 operands
    (XLA:CPU's bfloat16 rate; autodiff alone pairs float32 cotangents with bfloat16 weights), and the gradient stays
    within bfloat16 rounding of the float32 model's."""
    _, model = pair
    graphdef, state = nnx.split(model)
    model16 = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.bfloat16), state))
    steering = Steering.single(LAYER, SteeringVector(beta=1.0, c=4.0), "f2+l2")
    params = steering.init_params(jax.random.key(5), model.cfg)
    data = step_data(pack(examples(*LANG_EXAMPLES, seed=6)))
    grad = lambda m, p: jax.grad(loss_fn)(p, m, steering, data, StepConfig(vocab_chunk=37))  # noqa: E731
    params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    dots = list(_dots(jax.make_jaxpr(grad)(model16, params16).jaxpr))
    assert len(dots) > 20
    mixed = [str(e) for e in dots if {v.aval.dtype for v in e.invars} != {jnp.dtype(jnp.bfloat16)}]
    assert not mixed, mixed[:3]
    want, got = grad(model, params), jax.jit(grad)(model16, params16)
    for site in want:
        g16 = np.asarray(got[site]["v"], np.float32)
        g32 = np.asarray(want[site]["v"])
        assert np.linalg.norm(g16 - g32) < 0.05 * np.linalg.norm(g32)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("vocab_chunk", [10, 1000])  # 97 is prime: chunk 10 pads the head, 1000 takes it whole
def test_fused_head_value_and_gradient_equal_full_logits(tied, cap, vocab_chunk):
    """The chunked head's custom VJP (gradient accumulated in the forward pass) vs autodiff of full logits."""
    from prosv_jax.training.losses import _HeadLayout, _head_logprobs

    V, d, N = 97, 16, 11
    keys = jax.random.split(jax.random.key(3), 3)
    h = jax.random.normal(keys[0], (N, d), jnp.float32)
    head = jax.random.normal(keys[1], (V, d) if tied else (d, V), jnp.float32)
    targets = jax.random.randint(keys[2], (N,), 0, V)
    weights = jnp.linspace(0.5, 1.5, N)  # a cotangent that differs per token

    def full(h):
        logits = h @ (head.T if tied else head)  # [N, V]
        if cap is not None:
            logits = jnp.tanh(logits / cap) * cap
        logp = jax.nn.log_softmax(logits, -1)
        return (jnp.take_along_axis(logp, targets[:, None], -1)[:, 0] * weights).sum()

    layout = _HeadLayout(tied, V, vocab_chunk, cap)
    fused = lambda h: (_head_logprobs(layout, h, head, targets) * weights).sum()  # noqa: E731
    assert layout.num_chunks * layout.chunk >= V
    np.testing.assert_allclose(fused(h), full(h), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(fused)(h), jax.grad(full)(h), rtol=1e-4, atol=1e-5)
