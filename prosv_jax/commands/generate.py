"""`prosv-jax generate`: answers to prompts from any model source (HF folder, GGUF file, known or built-in name)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from prosv_jax.models.sources import model_names_help


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate answers to prompts",
        description="Generate with a local model (a HF folder, a GGUF file, a known model name or the built-in "
                    "tiny model). Temperature 0 is greedy.")
    parser.add_argument("--model", default="builtin", help=f"{model_names_help()} (default: builtin)")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.add_argument("--steer", metavar="PATH", help="a saved steering folder (steering.json + params) to apply")
    parser.add_argument("--steer-factor", type=float, metavar="X",
                        help="override every steering vector's factor alpha with X (needs --steer)")
    parser.set_defaults(run=run)


def generate_texts(model_dir: str, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int = 0, dtype: str = "float32", chat: bool = False,
                   steer: str | None = None, steer_factor: float | None = None) -> list[dict]:
    """One dict per prompt: prompt, token_ids (generated only, up to the stop token) and text.

    With `steer`, the saved steering is applied (prompt-only steerings edit the prefill alone).
    """
    import jax
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from prosv_jax.inference.generate import generate
    from prosv_jax.inference.prompts import decode_answers, encode_prompts, stop_token_ids
    from prosv_jax.inference.sampling import SamplingConfig
    from prosv_jax.interventions import load_steering, steering_hooks
    from prosv_jax.models.loading import load_model
    from prosv_jax.models.sources import resolve_model_dir

    if steer_factor is not None and steer is None:
        raise ValueError("--steer-factor needs --steer PATH (a saved steering to rescale)")
    if steer_factor is not None and not math.isfinite(steer_factor):
        raise ValueError(f"--steer-factor must be a finite number, not {steer_factor}")
    model_dir = resolve_model_dir(model_dir)
    model = load_model(model_dir, getattr(jnp, dtype))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = encode_prompts(tokenizer, prompts, chat=chat)
    stops = stop_token_ids(model_dir, tokenizer, model.cfg.eos_token_ids)
    hooks = {}
    if steer is not None:
        steering, params, _ = load_steering(steer, model.cfg)
        if steer_factor is not None:
            params = steering.with_factor(params, steer_factor)
        params = jax.tree.map(lambda p: p.astype(model.dtype), params)
        hooks = dict(zip(("prefill_hook", "decode_hook"), steering_hooks(steering, params, batch.valid)))
    out = generate(model, batch.tokens, batch.valid, max_new_tokens=max_new_tokens,
                   sampling=SamplingConfig(temperature=temperature, top_p=top_p), key=jax.random.key(seed),
                   stop_ids=stops, pad_id=tokenizer.pad_token_id, **hooks)
    tokens, lengths = jax.device_get((out.tokens, out.lengths))
    texts = decode_answers(tokenizer, tokens, lengths, stops)
    return [{"prompt": p, "token_ids": [int(t) for t in row[:n]], "text": text}
            for p, row, n, text in zip(prompts, tokens, lengths, texts)]


def run(args: argparse.Namespace) -> int:
    results = generate_texts(args.model, args.prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed, dtype=args.dtype,
                             chat=args.chat, steer=args.steer, steer_factor=args.steer_factor)
    for result in results:
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print(f"### {result['prompt']}\n{result['text']}\n")
    sys.stdout.flush()
    return 0
