"""Session-wide fixtures: paths to the real reference files and the real SmolLM2 GGUF.

Tiny random-weight Llama 3 checkpoints in every format are written by `tests/checkpoint_factory.py`
fixtures registered below; the real SmolLM2 model is loaded once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_LLAMA3 = (REPO.parent / "shared" / "llama3").resolve()
TOKENIZER_MODEL = SHARED_LLAMA3 / "tokenizer.model"
HF_TOKENIZER_JSON = SHARED_LLAMA3 / "hf-llama3-tokenizer.json"
HF_TOKENIZER_CONFIG_30 = SHARED_LLAMA3 / "hf-llama3-tokenizer_config.json"
HF_TOKENIZER_CONFIG_31 = SHARED_LLAMA3 / "hf-llama3.1-tokenizer_config.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def smollm2_gguf() -> Path:
    from llama3.registry import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def shared_llama3() -> Path:
    if not TOKENIZER_MODEL.is_file():
        raise RuntimeError(f"reference files missing: {SHARED_LLAMA3} (CI runs with ../shared beside the repo)")
    return SHARED_LLAMA3


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return smollm2_gguf()
