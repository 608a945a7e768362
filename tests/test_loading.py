"""Loading HF checkpoints: errors a user can act on for bad inputs; sharded, bfloat16 and round-tripped checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import hf_models
from prosv_jax.models.config import UnsupportedConfigError
from prosv_jax.models.decoder import positions_from_valid
from prosv_jax.models.loading import hf_tensors, load_model, save_model
from prosv_jax.models.safetensors_io import CheckpointError

LLAMA = "llama_gqa_untied"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(torch model, pristine directory) of a tiny untied Llama; tests copy the directory before editing it."""
    directory = tmp_path_factory.mktemp("reference")
    return hf_models.build(LLAMA, directory, with_tokenizer=False), directory


@pytest.fixture
def model_dir(reference, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(reference[1], directory)
    return directory


def batch(seed: int = 0):
    rng = np.random.RandomState(seed)
    lengths = (9, 4, 6)
    tokens = rng.randint(5, hf_models.VOCAB, (len(lengths), max(lengths)))
    valid = np.zeros(tokens.shape, bool)
    for row, n in enumerate(lengths):
        valid[row, tokens.shape[1] - n:] = True
    return tokens, valid, np.asarray(positions_from_valid(jnp.asarray(valid)))


def jax_logits(model, tokens, valid, positions):
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)).logits)


def edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def edit_weights(directory, edit):
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------------- bad inputs


def test_missing_config_json(model_dir):
    os.remove(model_dir / "config.json")
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_model(model_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        load_model(tmp_path / "nowhere")


def test_config_without_weights(model_dir):
    os.remove(model_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"no weights in .*model\.safetensors"):
        load_model(model_dir)


def test_missing_tensor(model_dir):
    edit_weights(model_dir, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(CheckpointError, match=re.escape("missing tensors ['model.layers.1.mlp.down_proj.weight']")):
        load_model(model_dir)


def test_missing_lm_head_of_untied_model(model_dir):
    edit_weights(model_dir, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=re.escape("missing tensors ['lm_head.weight']")):
        load_model(model_dir)


def test_unexpected_tensor(model_dir):
    edit_weights(model_dir, lambda t: t.update({"model.layers.0.mlp.extra_proj.weight": np.zeros((4, 4), np.float32)}))
    with pytest.raises(CheckpointError, match=re.escape("unexpected tensors ['model.layers.0.mlp.extra_proj.weight']")):
        load_model(model_dir)


def test_config_with_more_layers_than_checkpoint(model_dir):
    edit_config(model_dir, num_hidden_layers=4)
    with pytest.raises(CheckpointError, match=r"missing tensors \['model\.layers\.3\..*same model"):
        load_model(model_dir)


def test_shape_mismatch_from_config(model_dir):
    edit_config(model_dir, intermediate_size=128)
    with pytest.raises(CheckpointError,
                       match=re.escape("'model.layers.0.mlp.down_proj.weight' has shape (64, 96) but config.json "
                                       "implies (64, 128)")):
        load_model(model_dir)


def test_shape_mismatch_from_reshaped_tensor(model_dir):
    name = "model.layers.2.self_attn.q_proj.weight"
    edit_weights(model_dir, lambda t: t.update({name: t[name].reshape(32, 128)}))
    with pytest.raises(CheckpointError, match=re.escape(f"'{name}' has shape (32, 128) but config.json implies (64, 64)")):
        load_model(model_dir)


@pytest.mark.parametrize("model_type", ["mistral", "gpt2"])
def test_unsupported_architecture(model_dir, model_type):
    edit_config(model_dir, model_type=model_type)
    with pytest.raises(UnsupportedConfigError, match=f"unsupported architecture: model_type '{model_type}'.*llama"):
        load_model(model_dir)


def test_unknown_config_field_refused_unless_ignored(reference, model_dir):
    edit_config(model_dir, my_new_flag=True)
    with pytest.raises(UnsupportedConfigError, match=r"\['my_new_flag'\].*ignore_fields"):
        load_model(model_dir)
    model = load_model(model_dir, ignore_fields=("my_new_flag",))
    tokens, valid, positions = batch()
    expected = hf_models.hf_logits(reference[0], tokens, valid, positions)
    np.testing.assert_allclose(jax_logits(model, tokens, valid, positions)[valid], expected[valid], rtol=0, atol=1e-4)


def test_unknown_rope_type(model_dir):
    edit_config(model_dir, rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=2.0,
                                                original_max_position_embeddings=1024))
    with pytest.raises(UnsupportedConfigError, match=r"rope_type 'yarn' is not implemented"):
        load_model(model_dir)


def test_unimplemented_fixed_field(model_dir):
    edit_config(model_dir, hidden_act="gelu")
    with pytest.raises(UnsupportedConfigError, match=r"hidden_act='gelu' is not implemented"):
        load_model(model_dir)


def test_index_naming_a_missing_shard(reference, tmp_path):
    reference[0].save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))[0]
    os.remove(tmp_path / shard)
    with pytest.raises(CheckpointError, match=re.escape(f"{shard} is named in model.safetensors.index.json but missing")):
        load_model(tmp_path)


@pytest.mark.parametrize("layer", [3, -1])
def test_capture_layer_out_of_range(reference, layer):
    model = load_model(reference[1])
    tokens, valid, positions = batch()
    with pytest.raises(ValueError, match=rf"capture layer\(s\) \[{layer}\] out of range.*0\.\.2"):
        model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid), capture=(0, layer))


# ------------------------------------------------------------------------------------------------ good inputs


def test_sharded_checkpoint_matches_single_file(reference, tmp_path):
    torch_model, single_dir = reference
    reference[0].save_pretrained(tmp_path, max_shard_size="20KB")
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert os.path.isfile(tmp_path / "model.safetensors.index.json") and len(shards) >= 3
    assert not os.path.exists(tmp_path / "model.safetensors")
    tokens, valid, positions = batch()
    single = jax_logits(load_model(single_dir), tokens, valid, positions)
    sharded = jax_logits(load_model(tmp_path), tokens, valid, positions)
    np.testing.assert_array_equal(sharded, single)
    expected = hf_models.hf_logits(torch_model, tokens, valid, positions)
    np.testing.assert_allclose(sharded[valid], expected[valid], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", [LLAMA, "gemma2_window"])  # untied, and tied (no lm_head written)
def test_save_model_round_trip_through_transformers(name, tmp_path):
    source, out = tmp_path / "source", tmp_path / "saved"
    torch_model = hf_models.build(name, source, with_tokenizer=False)
    model = load_model(source)
    save_model(model, transformers.AutoConfig.from_pretrained(source), out)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(torch_model)
    tokens, valid, positions = batch(1)
    expected = hf_models.hf_logits(torch_model, tokens, valid, positions)
    got = hf_models.hf_logits(reloaded, tokens, valid, positions)
    assert expected[valid].std() > 0.3
    np.testing.assert_allclose(got[valid], expected[valid], rtol=0, atol=1e-5)
    # and the saved directory loads back into the same prosv-jax model
    np.testing.assert_array_equal(jax_logits(load_model(out), tokens, valid, positions),
                                  jax_logits(model, tokens, valid, positions))


def test_save_model_with_ignored_field(model_dir, tmp_path):
    edit_config(model_dir, my_new_flag=True)
    model = load_model(model_dir, ignore_fields=("my_new_flag",))
    hf_config = transformers.AutoConfig.from_pretrained(model_dir)
    with pytest.raises(UnsupportedConfigError, match="my_new_flag"):
        save_model(model, hf_config, tmp_path / "refused")
    save_model(model, hf_config, tmp_path / "out", ignore_fields=("my_new_flag",))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["my_new_flag"] is True
    tokens, valid, positions = batch()
    np.testing.assert_array_equal(jax_logits(load_model(tmp_path / "out", ignore_fields=("my_new_flag",)),
                                             tokens, valid, positions), jax_logits(model, tokens, valid, positions))


def test_save_model_refuses_a_foreign_config(reference, tmp_path):
    model = load_model(reference[1])
    other = transformers.AutoConfig.from_pretrained(reference[1])
    other.intermediate_size = 128
    with pytest.raises(ValueError, match="does not describe this model"):
        save_model(model, other, tmp_path / "out")


def test_bfloat16_checkpoint(tmp_path):
    torch_model = hf_models.build(LLAMA, tmp_path / "f32", with_tokenizer=False).to(torch.bfloat16)
    torch_model.save_pretrained(tmp_path / "bf16")
    expected = {k: v.float().numpy() for k, v in torch_model.state_dict().items()}
    assert all(v.dtype == torch.bfloat16 for v in torch_model.state_dict().values())
    as_f32 = load_model(tmp_path / "bf16", jnp.float32)
    as_bf16 = load_model(tmp_path / "bf16", jnp.bfloat16)
    assert as_f32.layers[0].attn.q[...].dtype == jnp.float32 and as_bf16.layers[0].attn.q[...].dtype == jnp.bfloat16
    for model in (as_f32, as_bf16):
        got = hf_tensors(model)
        assert set(got) == set(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(np.asarray(got[name], np.float32), value, err_msg=name)
    # float32 load of the bf16 checkpoint computes like transformers' float32 load of it (torch_model.float() would
    # keep the bf16-rounded RoPE inv_freq buffer)
    upcast = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    tokens, valid, positions = batch(2)
    reference_logits = hf_models.hf_logits(upcast, tokens, valid, positions)
    np.testing.assert_allclose(jax_logits(as_f32, tokens, valid, positions)[valid], reference_logits[valid],
                               rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------- real-checkpoint metadata


def test_metadata_fields_of_real_checkpoints_are_accepted(reference, model_dir):
    """Names, versions, special token ids, caching and dtype cannot change the math: a config carrying them (as
    transformers' own GGUF conversion writes) loads, and gives the reference logits."""
    edit_config(model_dir, _model_name_or_path="Smollm2 135M", unk_token_id=0, sep_token_id=None, use_cache=False,
                torch_dtype="bfloat16", transformers_version="4.57.1")
    tokens, valid, positions = batch()
    expected = hf_models.hf_logits(reference[0], tokens, valid, positions)
    np.testing.assert_allclose(jax_logits(load_model(model_dir), tokens, valid, positions)[valid], expected[valid],
                               rtol=0, atol=1e-4)


def test_cli_accepts_a_named_config_field_knowingly(tmp_path, capsys):
    from prosv_jax import cli

    directory = tmp_path / "model"
    hf_models.build(LLAMA, directory, with_tokenizer=True)
    edit_config(directory, my_new_flag=True)
    capsys.readouterr()  # the build's own progress lines
    args = ["generate", "--model", str(directory), "--prompt", "hi", "--max-new-tokens", "2"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "my_new_flag" in err and "--accept-config-field" in err and len(err.strip().splitlines()) == 1
    assert cli.main(args + ["--accept-config-field", "my_new_flag"]) == 0
    capsys.readouterr()
    assert cli.main(args) == 2  # accepted for that command only, not for the rest of the process


def test_saved_folders_carry_what_transformers_4_reads(tmp_path):
    """transformers 4.x reads rope_theta (and Gemma-3's rope_local_base_freq, sliding_window_pattern) instead of
    rope_parameters, and knows no `TokenizersBackend` class: the folders prosv-jax writes carry the 4.x spellings
    with the same values, field by field."""
    from prosv_jax.models.hf_folder import TOKENIZER_CLASS

    for name in ("gemma3_qknorm_ropes", LLAMA):
        source, out = tmp_path / name, tmp_path / f"{name}-saved"
        hf_models.build(name, source, with_tokenizer=False)
        save_model(load_model(source), transformers.AutoConfig.from_pretrained(source), out)
        with open(out / "config.json") as f:
            config = json.load(f)
        params = config["rope_parameters"]
        if name.startswith("gemma3"):
            assert config["rope_theta"] == params["full_attention"]["rope_theta"]
            assert config["rope_local_base_freq"] == params["sliding_attention"]["rope_theta"]
            types = config["layer_types"]
            if config.get("sliding_window_pattern") is not None:
                period = config["sliding_window_pattern"]
                assert all((t == "full_attention") == ((i + 1) % period == 0) for i, t in enumerate(types))
        else:
            assert config["rope_theta"] == params["rope_theta"]
        assert load_model(out).cfg == load_model(source).cfg
    from prosv_jax.models.tiny import builtin_model_dir

    with open(os.path.join(builtin_model_dir(), "tokenizer_config.json")) as f:
        assert json.load(f)["tokenizer_class"] == TOKENIZER_CLASS == "PreTrainedTokenizerFast"
