"""From text prompts to left-padded token batches (chat template optional) and back to text."""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Sequence

import numpy as np

# End-of-turn markers of the supported chat formats; generation stops at whichever the tokenizer knows.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>")


class PromptBatch(NamedTuple):
    tokens: np.ndarray  # [B, T] int32, left-padded
    valid: np.ndarray  # [B, T] bool, False on padding
    lengths: np.ndarray  # [B] real prompt lengths


def prompt_ids(tokenizer, prompt: str | Sequence[dict], chat: bool) -> list[int]:
    """Token ids of one prompt: the chat template with a generation prompt (BOS included), or plain encoding.

    A prompt is one user message, or a list of chat messages ({"role", "content"}; e.g. few-shot turns), which needs
    the chat template."""
    if not isinstance(prompt, str):
        if not chat:
            raise ValueError("a prompt given as chat messages needs the chat template (chat=True)")
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
    else:
        ids = tokenizer(prompt)["input_ids"]
    return list(ids)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, multiple: int = 8) -> PromptBatch:
    """Left-pads id lists to a common length, rounded up to `multiple` so jit sees few distinct shapes."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt must have at least one token")
    lengths = np.asarray([len(s) for s in sequences], np.int32)
    width = -(-int(lengths.max()) // multiple) * multiple
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    valid = np.zeros((len(sequences), width), bool)
    for row, ids in enumerate(sequences):
        tokens[row, width - len(ids):] = ids
        valid[row, width - len(ids):] = True
    return PromptBatch(tokens, valid, lengths)


def encode_prompts(tokenizer, prompts: Sequence[str], *, chat: bool, multiple: int = 8) -> PromptBatch:
    """Left-padded batch of prompts, ready for `generate`."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return left_pad([prompt_ids(tokenizer, p, chat) for p in prompts], pad_id, multiple)


def stop_token_ids(model_dir: str | os.PathLike, tokenizer, model_eos: Sequence[int] = ()) -> tuple[int, ...]:
    """Ids that end an answer: the model's EOS, generation_config.json's, the tokenizer's and end-of-turn markers."""
    ids = set(model_eos)
    path = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            eos = json.load(f).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return tuple(sorted(int(i) for i in ids))


def decode_answers(tokenizer, tokens: np.ndarray, lengths: np.ndarray, stop_ids: Sequence[int]) -> list[str]:
    """Text of each generated row, cut before its stop token."""
    texts = []
    for row, n in zip(np.asarray(tokens), np.asarray(lengths)):
        ids = [int(t) for t in row[:n]]
        if ids and ids[-1] in stop_ids:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts
