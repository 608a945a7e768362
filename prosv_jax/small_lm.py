"""A small pretrained chat model for offline work, trained once on the bundled text in a few CPU minutes.

`train_small_lm` trains a byte-level BPE tokenizer (Llama-3 special tokens and chat template) and a small
Llama-style decoder on chat-formatted conversations from the bundled corpus: the 805 AlpacaEval instructions with
GPT-4's answers and the 936 AxBench concept10 training pairs (Apache-2.0; see `assets/PROVENANCE.md`). The result
is an ordinary HF model directory (config.json, model.safetensors, tokenizer files) plus `training_log.json`.
Its answers are English-like but mostly wrong: it exists so that steering visibly changes real (learned) text.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import json
import math
import os
import shutil
import tempfile
import time
from typing import Callable

import numpy as np

__all__ = [
    "SmallLMSettings",
    "alpaca_gpt4_pairs",
    "axbench_concept10_rows",
    "chat_conversations",
    "estimated_minutes",
    "train_small_lm",
]

FAMILY = "llama3"


@dataclasses.dataclass(frozen=True)
class SmallLMSettings:
    """Every knob of `train_small_lm` (the defaults are the cached offline model's).

    The defaults were picked by loss at a fixed CPU budget on 2 cores: in a few minutes, many small steps of a narrow
    model beat fewer large ones (d=128 with 1024-token batches reached a held-out loss of 4.6 where d=256 with
    4096-token batches was at 6.2 for the same CPU time); lr 3e-3 beat 2e-3, 5e-3 and 1e-2; 4x256 tokens matched
    8x128 and gives a longer trained context for generation.
    """

    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    seq_len: int = 256
    batch_size: int = 4
    steps: int = 1100
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    eval_conversations: int = 40  # held out (at most a tenth of the corpus) for the held-out loss in the log
    # "float32", or "bfloat16": bfloat16 forward/backward matmuls (float32 accumulation) over float32 master
    # weights and optimizer state: 1.5x faster on CPU at d=256, no faster at d=128. Saved weights are float32.
    compute_dtype: str = "float32"
    max_conversations: int | None = None  # None = the whole corpus (tests use a few hundred)


def _asset_json_gz(name: str):
    resource = importlib.resources.files("prosv_jax") / "assets" / name
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return json.load(f)


def alpaca_gpt4_pairs() -> list[dict]:
    """The 805 AlpacaEval instructions with GPT-4's reference answers: [{"instruction", "output"}] (bundled)."""
    return _asset_json_gz("alpaca_eval_gpt4_outputs.json.gz")


def axbench_concept10_rows() -> list[dict]:
    """AxBench concept10 (prod_2b_l10_v1) training rows: [{"input", "output", "output_concept", "concept_id"}].

    216 shared negatives first (concept_id -1, output_concept "EEEEE"), then 72 positives per concept 0..9.
    """
    return _asset_json_gz("axbench_concept10_2b_l10_train.json.gz")


def chat_conversations() -> list[tuple[str, str]]:
    """(user, assistant) pairs of the whole bundled corpus: AlpacaEval + GPT-4, then AxBench concept10."""
    pairs = [(row["instruction"], row["output"]) for row in alpaca_gpt4_pairs()]
    pairs += [(row["input"], row["output"]) for row in axbench_concept10_rows()]
    return pairs


def _encode_conversations(tokenizer, pairs: list[tuple[str, str]]) -> list[np.ndarray]:
    """Token ids of each conversation: the chat template over [user, assistant], ending with the end-of-turn token."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": user},
                                            {"role": "assistant", "content": answer}], tokenize=False)
             for user, answer in pairs]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    out = []
    for seq in ids:
        if not seq or seq[-1] != eot:  # the template closes every turn with <|eot_id|>; make sure
            seq = list(seq) + [eot]
        out.append(np.asarray(seq, np.int32))
    return out


def _windows(docs: list[np.ndarray], seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch: shuffled documents packed into a stream, cut into [N, seq_len + 1] windows (overlap of one)."""
    stream = np.concatenate([docs[i] for i in rng.permutation(len(docs))])
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError(f"the corpus has {len(stream)} tokens, too few for one window of {seq_len + 1}")
    index = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return stream[index]


def _batches(docs, seq_len: int, batch_size: int, seed: int):
    """Endless [batch, seq_len + 1] batches, epoch after epoch, reshuffled each epoch."""
    rng = np.random.default_rng(seed)
    while True:
        windows = _windows(docs, seq_len, rng)
        windows = windows[rng.permutation(len(windows))]
        for start in range(0, len(windows) - batch_size + 1, batch_size):
            yield windows[start:start + batch_size]
        if len(windows) < batch_size:  # a tiny corpus: sample with replacement
            yield windows[rng.integers(0, len(windows), batch_size)]


def llama_config(settings: SmallLMSettings, tokenizer):
    """The transformers LlamaConfig of the small model (tied embeddings, rope_theta 10000)."""
    import transformers

    if settings.hidden_size % settings.num_heads:
        raise ValueError(f"hidden_size={settings.hidden_size} is not a multiple of num_heads={settings.num_heads}")
    return transformers.LlamaConfig(
        vocab_size=settings.vocab_size, hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size, num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads, num_key_value_heads=settings.num_kv_heads,
        head_dim=settings.hidden_size // settings.num_heads, max_position_embeddings=settings.seq_len,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def approx_parameters(settings: SmallLMSettings) -> int:
    """Parameter count of the model that `settings` describe (tied embeddings)."""
    d, f, k = settings.hidden_size, settings.intermediate_size, settings.num_kv_heads
    head_dim = d // settings.num_heads
    per_layer = 2 * d * d + 2 * d * k * head_dim + 3 * d * f + 2 * d
    return settings.vocab_size * d + settings.num_layers * per_layer + d


# Seconds per (token x parameter) of a float32 training step, measured on the development CPU (2 cores; XLA
# ran these small matmuls on about one core), plus a fixed cost for the tokenizer, compilation and saving.
_SECONDS_PER_TOKEN_PARAM = 1.5e-10
_FIXED_SECONDS = 25


def estimated_minutes(settings: SmallLMSettings) -> int:
    """A rough wall-clock estimate (whole minutes, at least 1) of `train_small_lm` on a CPU like the development one."""
    work = settings.steps * settings.batch_size * settings.seq_len * approx_parameters(settings)
    seconds = work * _SECONDS_PER_TOKEN_PARAM
    if settings.compute_dtype == "bfloat16" and settings.hidden_size >= 256:
        seconds /= 1.5
    return max(1, round((_FIXED_SECONDS + seconds) / 60))


def _make_step(graphdef, optimizer, seq_len: int, compute_dtype: str = "float32"):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    positions = jnp.arange(seq_len, dtype=jnp.int32)[None, :]

    dtype = jnp.dtype(compute_dtype)

    def loss_fn(params, batch):
        if dtype != jnp.float32:
            params = jax.tree.map(lambda x: x.astype(dtype), params)
        model = nnx.merge(graphdef, params)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        pos = jnp.broadcast_to(positions, inputs.shape)
        logits = model(inputs, pos, jnp.ones(inputs.shape, bool)).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), jax.jit(loss_fn)


def _held_out_loss(loss_fn, params, docs, settings: SmallLMSettings, max_batches: int = 8) -> float | None:
    """Mean next-token loss over up to `max_batches` full batches of windows of the held-out conversations."""
    import jax.numpy as jnp

    stream = np.concatenate(docs)
    n = (len(stream) - 1) // settings.seq_len
    if n < 1:
        return None
    windows = stream[np.arange(n)[:, None] * settings.seq_len + np.arange(settings.seq_len + 1)[None, :]]
    if n < settings.batch_size:  # repeat to one full batch (the step function's shape)
        windows = windows[np.arange(settings.batch_size) % n]
    batches = [windows[i:i + settings.batch_size]
               for i in range(0, len(windows) - settings.batch_size + 1, settings.batch_size)][:max_batches]
    return float(np.mean([float(loss_fn(params, jnp.asarray(b))) for b in batches]))


def _prepare_target(out_dir: str) -> None:
    """Refuses to overwrite a non-empty directory that is not an earlier model of ours."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "config.json")):
        raise ValueError(f"{out_dir} exists, is not empty and holds no model: refusing to replace it")


def train_small_lm(out_dir: str | os.PathLike, *, progress: bool = True,
                   callback: Callable[[int, float], None] | None = None, **overrides) -> str:
    """Trains the small chat model (tokenizer + Llama decoder) and saves it in HF format at `out_dir`.

    Keyword overrides are `SmallLMSettings` fields (vocab_size, hidden_size, num_layers, num_heads, num_kv_heads,
    intermediate_size, seq_len, batch_size, steps, lr, warmup_steps, seed, ...). `callback(step, loss)` runs after
    every step (an exception from it aborts the build). Everything is written to a temporary sibling directory and
    renamed onto `out_dir` at the end, so an interrupted run never leaves a half model. Returns `out_dir`.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tqdm.auto import tqdm

    from prosv_jax.models.config import ModelConfig
    from prosv_jax.models.decoder import Decoder
    from prosv_jax.models.loading import save_model
    from prosv_jax.tokenization import build_bpe_tokenizer

    settings = SmallLMSettings(**overrides)
    if settings.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', not {settings.compute_dtype!r}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    _prepare_target(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    start = time.perf_counter()

    pairs = chat_conversations()
    if settings.max_conversations is not None:
        order = np.random.default_rng(settings.seed).permutation(len(pairs))[:settings.max_conversations]
        pairs = [pairs[i] for i in sorted(order)]
    texts = [text for pair in pairs for text in pair]
    tokenizer = build_bpe_tokenizer(texts, settings.vocab_size, FAMILY)
    docs = _encode_conversations(tokenizer, pairs)
    held = set(np.random.default_rng(settings.seed + 1).permutation(len(docs))[
        :min(settings.eval_conversations, len(docs) // 10)].tolist())
    eval_docs = [doc for i, doc in enumerate(docs) if i in held]
    docs = [doc for i, doc in enumerate(docs) if i not in held]
    num_tokens = int(sum(len(d) for d in docs))
    counts = np.bincount(np.concatenate(docs), minlength=settings.vocab_size).astype(np.float64)
    probs = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(probs * np.log(probs)).sum())

    hf_config = llama_config(settings, tokenizer)
    cfg = ModelConfig.from_hf(hf_config)
    model = Decoder(cfg, jnp.float32, rngs=nnx.Rngs(settings.seed))
    graphdef, params = nnx.split(model)
    del model

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.lr, min(settings.warmup_steps, max(settings.steps - 1, 0)), max(settings.steps, 1),
        end_value=settings.lr * settings.min_lr_ratio)
    decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)  # weight decay on matrices only, not norm scales
    optimizer = optax.chain(
        optax.clip_by_global_norm(settings.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=settings.weight_decay, mask=decay_mask))
    opt_state = optimizer.init(params)
    step_fn, loss_fn = _make_step(graphdef, optimizer, settings.seq_len, settings.compute_dtype)

    losses: list[float] = []
    batches = _batches(docs, settings.seq_len, settings.batch_size, settings.seed)
    train_start = time.perf_counter()
    bar = tqdm(range(settings.steps), desc="training the small model", disable=not progress, unit="step")
    for step in bar:
        params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(next(batches)))
        loss = float(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the small model's loss is {loss} at step {step}")
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
        if callback is not None:
            callback(step, loss)
    bar.close()
    train_time = time.perf_counter() - train_start
    eval_loss = _held_out_loss(loss_fn, params, eval_docs, settings) if eval_docs else None

    model = nnx.merge(graphdef, params)
    staging = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp.", dir=parent)
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the model is an ordinary directory
        save_model(model, hf_config, staging)
        tokenizer.save_pretrained(staging)
        tail = losses[-max(1, min(20, len(losses) // 10)):]
        log = {
            "format": "prosv-jax small_lm v1",
            "settings": dataclasses.asdict(settings),
            "family": FAMILY,
            "conversations": len(pairs),
            "corpus_tokens": num_tokens,
            "unigram_entropy": unigram_entropy,
            "log_vocab": math.log(settings.vocab_size),
            "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
            "tokens_seen": settings.steps * settings.batch_size * settings.seq_len,
            "epochs": settings.steps * settings.batch_size * settings.seq_len / max(num_tokens, 1),
            "loss": losses,
            "first_loss": losses[0] if losses else None,
            "final_loss": float(np.mean(tail)) if losses else None,
            "eval_conversations": len(eval_docs),
            "eval_loss": eval_loss,
            "train_seconds": train_time,
            "wall_seconds": time.perf_counter() - start,
            "jax_backend": jax.default_backend(),
        }
        with open(os.path.join(staging, "training_log.json"), "w") as f:
            json.dump(log, f, indent=1)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)  # an earlier model (checked by _prepare_target)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
