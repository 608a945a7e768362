"""A planted steering vector: a steering task whose answer is known, on any model (pretrained or random).

A teacher is the model plus a known edit alpha* v* at block L and positions P (FSSV "all" or PrOSV "f2+l2"). The
teacher samples continuations of prompts (random token sequences, or given token lists) at temperature 1; a
student steering vector learns from that text with the Lang loss through the ordinary `Trainer`. Because the
teacher is known, every run can be checked: its loss against the floor (the teacher's own per-token entropy on
its samples), its KL to the teacher on held-out samples, cos(alpha v, alpha* v*) and |alpha v| against
|alpha* v*|, the steps it needed to reach a loss threshold, and whether it diverged.

`random_llama` builds the random-weight Llama-style family used by the width sweeps: weights are drawn at the
standard 1/sqrt(fan-in) scale with unit-variance embeddings, so the residual stream has Theta(1) entries per
coordinate and the logits are Theta(1) at every width, as in a trained model (the decoder's own initialiser draws
everything at std 0.02, which leaves the residual at 0.02 per coordinate and the logits near zero).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prosv_jax.interventions.generation import steered_generate
from prosv_jax.interventions.io import load_steering
from prosv_jax.interventions.kinds import SteeringVector
from prosv_jax.interventions.transform import Steering, SteeringParams, response_hooks
from prosv_jax.models.config import ModelConfig
from prosv_jax.models.decoder import Decoder, positions_from_valid
from prosv_jax.models.loading import abstract_model
from prosv_jax.inference.prompts import left_pad
from prosv_jax.inference.sampling import SamplingConfig
from prosv_jax.training.batch import TrainBatch, make_batch
from prosv_jax.training.data import TrainDataset
from prosv_jax.training.optim import OptimConfig
from prosv_jax.training.step import StepConfig
from prosv_jax.training.trainer import RunSpec, TrainConfig, Trainer

__all__ = ["PlantedTask", "StudentMetrics", "curve", "make_planted_task", "random_llama", "run_metrics",
           "select_factor", "steps_to_threshold", "train_students"]


# --- a random-weight model family -----------------------------------------------------------------------------

def random_llama(width: int, *, depth: int = 3, head_dim: int = 32, vocab: int = 512, ffn_mult: int = 2,
                 seed: int = 0, logit_scale: float = 1.0, dtype=jnp.float32) -> Decoder:
    """A Llama-style decoder with random weights: heads = width / head_dim, intermediate = ffn_mult * width.

    Embeddings ~ N(0, 1); every projection ~ N(0, 1/fan_in); the LM head ~ N(0, logit_scale^2 / width), so the
    logits of a normalised residual have std about `logit_scale` at any width. No file and no tokenizer needed.
    """
    import transformers

    if width % head_dim:
        raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
    heads = width // head_dim
    hf = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=ffn_mult * width, num_hidden_layers=depth,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim, tie_word_embeddings=False,
        rope_theta=10000.0, bos_token_id=None, eos_token_id=None, pad_token_id=None, max_position_embeddings=4096)
    cfg = ModelConfig.from_hf(hf)
    keys = iter(jax.random.split(jax.random.key(seed + 1_000_003), 4 + 8 * depth))
    d, F = width, cfg.intermediate_size
    stds = {"embedding": 1.0, "lm_head": logit_scale / math.sqrt(d), "q": 1 / math.sqrt(d), "k": 1 / math.sqrt(d),
            "v": 1 / math.sqrt(d), "gate": 1 / math.sqrt(d), "up": 1 / math.sqrt(d),
            "o": 1 / math.sqrt(cfg.num_heads * head_dim), "down": 1 / math.sqrt(F)}
    # Draw order (fixed, so a seed always gives the same weights): embedding; per block q, k, v, gate, up, o,
    # down; the LM head. Norm scales are ones.
    order = [("embedding",)] + [("layers", i, part, name) for i in range(depth) for part, name in (
        ("attn", "q"), ("attn", "k"), ("attn", "v"), ("mlp", "gate"), ("mlp", "up"), ("attn", "o"),
        ("mlp", "down"))] + [("lm_head",)]
    graphdef, flat = abstract_model(cfg, dtype)
    shapes = {path: tuple(abstract.shape) for path, abstract in flat}
    values = {path: (stds[path[-1]] * jax.random.normal(next(keys), shapes[path], jnp.float32)).astype(dtype)
              for path in order}
    leaves = [(path, abstract.replace(values[path] if path in values else jnp.ones(abstract.shape, dtype)))
              for path, abstract in flat]
    if any(path[-1] != "scale" for path, _ in flat if path not in values):
        raise AssertionError("random_llama: a weight of the decoder has no initialiser")
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


# --- the planted task -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PlantedTask:
    """A teacher (model + alpha* v* at `layer`, `positions`) and the text it sampled.

    `train` is the student's training set (teacher continuations of the training prompts); `eval_batch` holds
    held-out teacher samples on which a student is scored. `floor` is the teacher's mean per-token entropy on its
    own training samples (the Lang loss of a perfect student, in expectation); `stats` also holds the plain model's
    loss on those samples and the teacher-to-plain KL, which say how strong the planted effect is.
    """

    model: Decoder
    layer: int
    positions: str
    alpha_star: float
    v_star: np.ndarray  # [d]
    train: TrainDataset
    train_examples: list
    eval_batch: TrainBatch
    floor: float
    stats: dict
    _select: tuple | None = None  # (batch, teacher log-probs) of the training prompts factor selection uses

    @property
    def width(self) -> int:
        return self.model.cfg.hidden_size

    def teacher(self) -> tuple[Steering, SteeringParams]:
        steering = Steering.single(self.layer, SteeringVector(), self.positions)
        site = steering.sites[0].name
        return steering, {site: {"alpha": jnp.asarray(self.alpha_star, jnp.float32),
                                 "v": jnp.asarray(self.v_star, jnp.float32)}}

    def student_steering(self, **kind_fields) -> Steering:
        """The student's steering spec: a steering vector at the teacher's site (fields of SteeringVector)."""
        return Steering.single(self.layer, SteeringVector(**kind_fields), self.positions)


def sample_continuations(model: Decoder, steering: Steering | None, params: SteeringParams | None,
                         prompts: Sequence[Sequence[int]], response_len: int, seed: int, chunk: int = 64
                         ) -> list[list[int]]:
    """Continuations of `response_len` tokens at temperature 1 (no stop token), steered when `steering` is given.

    Prompts go in chunks of `chunk` rows (the last one padded by repetition), so one program serves them all.
    """
    from prosv_jax.inference.generate import generate

    out = []
    for start in range(0, len(prompts), chunk):
        part = list(prompts[start:start + chunk])
        tokens, valid, _ = left_pad(part + [part[-1]] * (chunk - len(part)), pad_id=0, multiple=1)
        kwargs = dict(max_new_tokens=response_len, sampling=SamplingConfig(temperature=1.0),
                      key=jax.random.key(seed + start), stop_ids=(-1,), pad_id=0)
        if steering is None:
            gen = generate(model, tokens, valid, **kwargs)
        else:
            gen = steered_generate(model, steering, params, tokens, valid, **kwargs)
        out.extend(np.asarray(gen.tokens)[:len(part)].tolist())
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "steering"))
def _response_logprobs(graphdef, state, steering, params, batch: TrainBatch):
    """Full next-token log-distributions [B, R, V] at the response positions (steered when params is given)."""
    model = nnx.merge(graphdef, state)
    hook = rows_hook = None
    if steering is not None:
        hook, rows_hook = response_hooks(steering, params, batch.prompt_mask, batch.valid, batch.target_index)
    rows, _, _ = model.run_blocks(model.embed(batch.tokens), positions_from_valid(batch.valid), batch.valid,
                                  hook=hook, rows=batch.target_index, rows_hook=rows_hook)  # [B, R, d]
    return jax.nn.log_softmax(model.head(rows), axis=-1)


def response_distributions(model: Decoder, steering: Steering | None, params: SteeringParams | None,
                           batch: TrainBatch, chunk: int = 64) -> np.ndarray:
    """log p(. | prefix) [N, R, V] (float32, host) at every response position of `batch`, in row chunks."""
    graphdef, state = nnx.split(model)
    out = []
    total = batch.tokens.shape[0]
    for start in range(0, total, chunk):
        take = np.minimum(np.arange(start, start + chunk), total - 1)  # the last chunk padded: one program
        part = TrainBatch(*(jnp.asarray(np.asarray(a)[take]) for a in batch))
        out.append(np.asarray(_response_logprobs(graphdef, state, steering, params, part))[:min(chunk, total - start)])
    return np.concatenate(out)


def _token_stats(teacher_lp: np.ndarray, other_lp: np.ndarray, batch: TrainBatch) -> dict:
    """Per-token means over response tokens: teacher entropy, NLL of the sampled tokens under `other`, KL."""
    mask = batch.target_mask.astype(np.float64)
    p = np.exp(teacher_lp)
    entropy = -(p * teacher_lp).sum(-1)
    kl = (p * (teacher_lp - other_lp)).sum(-1)
    nll = -np.take_along_axis(other_lp, batch.target_ids[..., None], axis=-1)[..., 0]
    mean = lambda x: float((x * mask).sum() / mask.sum())  # noqa: E731
    return {"entropy": mean(entropy), "kl": mean(kl), "nll": mean(nll)}


def make_planted_task(model: Decoder, *, layer: int, positions: str = "all", strength: float = 2.0,
                      prompts: Sequence[Sequence[int]] | None = None, n_train: int = 64, n_eval: int = 64,
                      prompt_len: int = 6, response_len: int = 12, seed: int = 0, low_token: int = 0,
                      stats_examples: int = 512) -> PlantedTask:
    """Plants alpha* v* (v* a random unit vector, alpha* = strength * sqrt(d): |z*| per coordinate = strength).

    Prompts: the given token lists (the first n_train train, the next n_eval are held out), or random token
    sequences of `prompt_len` tokens from [low_token, vocab). The teacher samples `response_len` tokens per
    prompt at temperature 1. The training-side statistics (the floor, the plain model's loss, the teacher-to-plain
    KL and token difference) are means over the first `stats_examples` training examples: estimates of the same
    expectations that cost a fixed amount however large the training set grows.
    """
    cfg = model.cfg
    d = cfg.hidden_size
    rng = np.random.default_rng(seed)
    v_star = rng.standard_normal(d)
    v_star /= np.linalg.norm(v_star)
    alpha_star = float(strength * math.sqrt(d))
    if prompts is None:
        prompts = rng.integers(low_token, cfg.vocab_size, (n_train + n_eval, prompt_len)).tolist()
    prompts = [list(map(int, p)) for p in prompts]
    if len(prompts) < n_train + n_eval:
        raise ValueError(f"need {n_train + n_eval} prompts (n_train + n_eval), got {len(prompts)}")
    task = PlantedTask(model, layer, positions, alpha_star, v_star.astype(np.float32), None, [], None, 0.0, {})
    steering, params = task.teacher()
    responses = sample_continuations(model, steering, params, prompts[:n_train + n_eval], response_len, seed + 17)
    examples = list(zip(prompts, responses))
    train_examples, eval_examples = examples[:n_train], examples[n_train:n_train + n_eval]
    task.train = TrainDataset.from_examples(train_examples, max_response=response_len)
    task.train_examples = train_examples
    task.eval_batch = make_batch(eval_examples, max_response=response_len)
    n_stats = min(n_train, stats_examples)
    stats_batch = make_batch(train_examples[:n_stats], max_response=response_len)
    teacher_lp = response_distributions(model, steering, params, stats_batch)
    plain_lp = response_distributions(model, None, None, stats_batch)
    train_stats = _token_stats(teacher_lp, plain_lp, stats_batch)
    eval_teacher = response_distributions(model, steering, params, task.eval_batch)
    eval_plain = _token_stats(eval_teacher, response_distributions(model, None, None, task.eval_batch),
                              task.eval_batch)
    plain_samples = sample_continuations(model, None, None, prompts[:n_stats], response_len, seed + 17)
    task.floor = train_stats["entropy"]
    task.stats = {
        "teacher_entropy": train_stats["entropy"],  # the loss floor on the training samples
        "plain_nll": train_stats["nll"],  # the loss of the unsteered model on them (a zero edit)
        "teacher_plain_kl": train_stats["kl"],  # how far the planted edit moves the model
        "eval_teacher_entropy": eval_plain["entropy"], "eval_plain_kl": eval_plain["kl"],
        "log_vocab": math.log(cfg.vocab_size),
        # The share of sampled tokens that differ between teacher and plain model (same prompts, same keys).
        "teacher_vs_plain_token_diff": float(np.mean(np.asarray(responses[:n_stats]) != np.asarray(plain_samples))),
        "alpha_star": alpha_star, "edit_star_norm": alpha_star, "width": d, "layer": layer, "positions": positions,
        "strength": strength, "n_train": n_train, "n_eval": n_eval, "response_len": response_len,
        "stats_examples": n_stats,
    }
    task._eval_teacher_lp = eval_teacher  # cached: every student is scored against it
    return task


# --- scoring students -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class StudentMetrics:
    eval_kl: float  # KL(teacher || student) per response token on held-out teacher samples
    eval_nll: float  # the student's Lang loss on them
    eval_excess: float  # eval_nll minus the teacher's entropy there
    cos_v: float  # cos(v, v*)
    cos_edit: float  # cos(alpha v, alpha* v*) (the sign of alpha included)
    alpha: float
    v_norm: float
    edit_norm: float  # |alpha| |v|
    edit_norm_star: float  # |alpha*| |v*|


def score_student(task: PlantedTask, steering: Steering, params: SteeringParams) -> StudentMetrics:
    student_lp = response_distributions(task.model, steering, params, task.eval_batch)
    stats = _token_stats(task._eval_teacher_lp, student_lp, task.eval_batch)
    site = params[steering.sites[0].name]
    alpha = float(np.asarray(site["alpha"], np.float64))
    v = np.asarray(steering.sites[0].kind.direction(site), np.float64)
    v_norm = float(np.linalg.norm(v))
    cos_v = float(v @ task.v_star / max(v_norm * np.linalg.norm(task.v_star), 1e-30))
    return StudentMetrics(eval_kl=stats["kl"], eval_nll=stats["nll"],
                          eval_excess=stats["nll"] - task.stats["eval_teacher_entropy"], cos_v=cos_v,
                          cos_edit=cos_v * float(np.sign(alpha * task.alpha_star) or 1.0), alpha=alpha,
                          v_norm=v_norm, edit_norm=abs(alpha) * v_norm,
                          edit_norm_star=abs(task.alpha_star) * float(np.linalg.norm(task.v_star)))


def select_factor(task: PlantedTask, steering: Steering, params: SteeringParams, factors: Sequence[float]
                  ) -> tuple[float, list[float]]:
    """AxBench's post-hoc factor selection: the factor (scaling the learned alpha) whose edit has the lowest KL to
    the teacher on training prompts (the first n_eval of them; the evaluation's prompts stay unseen). Returns
    (factor, KL per factor)."""
    if task._select is None:
        examples = task.train_examples[:len(task.eval_batch.tokens)]
        batch = make_batch(examples, max_response=task.stats["response_len"])
        teacher, params_star = task.teacher()
        task._select = (batch, response_distributions(task.model, teacher, params_star, batch))
    batch, teacher_lp = task._select
    site = steering.sites[0].name
    kls = []
    for factor in factors:
        scaled = {**params, site: {**params[site], "alpha": params[site]["alpha"] * factor}}
        kls.append(_token_stats(teacher_lp, response_distributions(task.model, steering, scaled, batch), batch)["kl"])
    best = int(np.nanargmin(np.where(np.isfinite(kls), kls, np.inf)))
    return float(factors[best]), [float(k) for k in kls]


def curve(metrics_path: str, run: str) -> dict[str, np.ndarray]:
    """One run's per-step metrics from a group's metrics JSONL: {"step", "loss", "alive", ...} as arrays."""
    rows = []
    with open(metrics_path) as f:
        for line in f:
            record = json.loads(line)
            if record["run"] == run:
                rows.append(record)
    rows.sort(key=lambda r: r["step"])
    keys = [k for k in rows[0] if k != "run"] if rows else ["step", "loss"]
    return {k: np.asarray([r.get(k, np.nan) for r in rows], np.float64) for k in keys}


def steps_to_threshold(losses: np.ndarray, threshold: float, window: int = 1) -> int | None:
    """First micro-step (1-based count of steps taken) at which the `window`-step running mean of the loss is
    at or below `threshold`; None if never."""
    losses = np.asarray(losses, np.float64)
    if window > 1 and losses.size >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        offset = window - 1
    else:
        smooth, offset = losses, 0
    hits = np.flatnonzero(np.isfinite(smooth) & (smooth <= threshold))
    return int(hits[0] + offset + 1) if hits.size else None


def train_students(task: PlantedTask, runs: Sequence[RunSpec], out_dir: str, *, optim: OptimConfig = OptimConfig(),
                   train: TrainConfig = TrainConfig(epochs=4, batch_size=8, runs_per_program=4, progress=False),
                   kind_fields: dict | None = None, metadata: dict | None = None) -> dict[str, dict]:
    """Trains student steering vectors on the teacher's samples with the Lang loss (resumable, like any Trainer
    run); returns the Trainer's summaries {run name: summary}."""
    steering = task.student_steering(**(kind_fields or {}))
    trainer = Trainer(task.model, steering, {"default": task.train}, out_dir, optim, StepConfig(objective="lang"),
                      train, metadata=metadata)
    return trainer.train(list(runs))


def run_metrics(task: PlantedTask, out_dir: str, summaries: dict[str, dict], run_order: Sequence[str], *,
                runs_per_program: int, window: int, threshold_fraction: float = 0.25,
                factor_search: Sequence[float] = ()) -> dict[str, dict]:
    """Per-run planted metrics of a finished Trainer directory (`run_order`: the runs in the order trained).

    With `factor_search`, each run's edit is first scaled by the factor `select_factor` picks (the learned
    edit's KL and cos are kept as eval_kl_learned and cos_edit_learned).

    The loss threshold is floor + threshold_fraction * (plain-model loss - floor); the smoothed final loss and
    the steps to reach the threshold use a running mean of the batch losses over `window` steps (e.g. an
    epoch). The curve of run i is in the metrics JSONL of group i // runs_per_program.
    """
    threshold = task.floor + threshold_fraction * (task.stats["plain_nll"] - task.floor)
    out = {}
    for index, name in enumerate(run_order):
        summary = summaries[name]
        metrics_path = os.path.join(out_dir, "groups", f"group-{index // runs_per_program:04d}", "metrics.jsonl")
        history = curve(metrics_path, name)
        loss = history["loss"]
        alive = history.get("alive", np.ones_like(loss)).astype(bool)
        loss = np.where(alive, loss, np.nan)
        tail = loss[-window:]
        steering, params, _ = load_steering(summary["steering"], task.model.cfg)
        searched = {}
        if factor_search:
            learned = dataclasses.asdict(score_student(task, steering, params))
            factor, kls = select_factor(task, steering, params, factor_search)
            site = steering.sites[0].name
            params = {**params, site: {**params[site], "alpha": params[site]["alpha"] * factor}}
            searched = {"search_factor": factor, "eval_kl_learned": learned["eval_kl"],
                        "cos_edit_learned": learned["cos_edit"], "select_kl": min(kls)}
        scored = score_student(task, steering, params)
        out[name] = {
            **dataclasses.asdict(scored), **searched,
            "final_loss": summary["final_loss"], "best_loss": summary["best_loss"],
            "final_loss_smooth": float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan"),
            "diverged": summary["diverged"], "steps": summary["steps"], "floor": task.floor,
            "threshold": threshold, "steps_to_threshold": steps_to_threshold(loss, threshold, window),
            "curve": metrics_path, "steering": summary["steering"],
        }
    return out
