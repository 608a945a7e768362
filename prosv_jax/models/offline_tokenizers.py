"""Offline tokenizers with the real chat templates of Gemma, Llama-3 and Qwen2.

No tokenizer can be downloaded on the project's machines, so tests and the offline demo train a small byte-level BPE
with the `tokenizers` library and give it the family's special tokens, BOS behaviour and chat template. Chat
templating and prompt positions are then exercised for real, with deterministic special-token ids (0..k-1).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATES",
    "FAMILIES",
    "FAMILY_SPECIAL_TOKENS",
    "FamilyTokens",
    "build_bpe_tokenizer",
    "builtin_corpus",
    "builtin_tokenizer",
    "family_tokens",
]

# Gemma-2 instruct template (as shipped by google/gemma-2-*-it): no system role, assistant is called "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Llama-3 instruct template (meta-llama/Meta-Llama-3-8B-Instruct): BOS once, header/eot framing per message.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2 instruct template (Qwen/Qwen2-*-Instruct): ChatML, default system message when none is given, no BOS.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class FamilyTokens:
    """Special tokens of one model family; `special_tokens` get ids 0..k-1 in this order."""

    family: str
    special_tokens: tuple[str, ...]
    bos: str | None  # prepended to plain-text encodings when not None
    eos: str
    pad: str
    end_of_turn: str  # generation of an assistant turn stops here
    chat_template: str

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Tokens at which generation should stop (end of turn, then EOS if different)."""
        return tuple(dict.fromkeys((self.end_of_turn, self.eos)))


FAMILY_SPECIAL_TOKENS: dict[str, FamilyTokens] = {
    "gemma": FamilyTokens(
        family="gemma",
        special_tokens=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        end_of_turn="<end_of_turn>",
        chat_template=GEMMA_CHAT_TEMPLATE,
    ),
    "llama3": FamilyTokens(
        family="llama3",
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",  # as in the Llama-3.x instruct tokenizers
        pad="<|end_of_text|>",  # Llama-3 has no pad token; the usual choice
        end_of_turn="<|eot_id|>",
        chat_template=LLAMA3_CHAT_TEMPLATE,
    ),
    "qwen2": FamilyTokens(
        family="qwen2",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",  # as in the Qwen2/2.5 instruct tokenizers
        pad="<|endoftext|>",
        end_of_turn="<|im_end|>",
        chat_template=QWEN2_CHAT_TEMPLATE,
    ),
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_SPECIAL_TOKENS)
CHAT_TEMPLATES: dict[str, str] = {name: spec.chat_template for name, spec in FAMILY_SPECIAL_TOKENS.items()}

_BYTE_ALPHABET_SIZE = 256


def family_tokens(family: str) -> FamilyTokens:
    """Return the special-token spec of `family` ('gemma', 'llama3' or 'qwen2'); raise ValueError otherwise."""
    try:
        return FAMILY_SPECIAL_TOKENS[family]
    except KeyError:
        raise ValueError(f"unknown tokenizer family {family!r}; expected one of {FAMILIES}") from None


# The chat templates' filler words, made whole tokens as in the real vocabularies: PrOSV's f2+l2 steers them
# (e.g. Gemma's `model`, `\n`), so an offline tokenizer that split them would steer other tokens than the paper.
ROLE_WORDS = ("user", "model", "assistant", "system", "\n\n")


def _role_word_lines(repeats: int = 2000) -> Iterable[str]:
    """Training lines that make each role word frequent enough for BPE to merge it into one token."""
    for word in ROLE_WORDS:
        for _ in range(repeats):
            yield word + ("" if word.endswith("\n") else "\n")


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int, family: str) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and dress it as a `family` tokenizer (special tokens, BOS, chat template).

    Special tokens take ids 0..k-1 in `FAMILY_SPECIAL_TOKENS[family].special_tokens` order, then the 256 byte
    symbols, then merges. The result round-trips through `save_pretrained` / `AutoTokenizer.from_pretrained`.
    """
    spec = family_tokens(family)
    min_size = len(spec.special_tokens) + _BYTE_ALPHABET_SIZE
    if vocab_size < min_size:
        raise ValueError(f"vocab_size={vocab_size} is below the minimum {min_size} (special tokens + 256 bytes)")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(itertools.chain(texts, _role_word_lines()), trainer=trainer)

    post = [processors.ByteLevel(trim_offsets=False)]
    if spec.bos is not None:
        bos_id = backend.token_to_id(spec.bos)
        post.append(
            processors.TemplateProcessing(
                single=f"{spec.bos}:0 $A:0",
                pair=f"{spec.bos}:0 $A:0 {spec.bos}:1 $B:1",
                special_tokens=[(spec.bos, bos_id)],
            )
        )
    backend.post_processor = processors.Sequence(post)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        chat_template=spec.chat_template,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )


def builtin_corpus() -> list[str]:
    """The bundled AlpacaEval instructions (805 strings, Apache-2.0) used to train the built-in demo tokenizer."""
    resource = importlib.resources.files("prosv_jax") / "assets" / "alpaca_eval_instructions.json"
    data = json.loads(resource.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise ValueError(f"{resource} must hold a JSON list of strings")
    return data


def builtin_tokenizer(family: str = "gemma", vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """The offline demo tokenizer: `build_bpe_tokenizer` on `builtin_corpus()`."""
    return build_bpe_tokenizer(builtin_corpus(), vocab_size=vocab_size, family=family)
