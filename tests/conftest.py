"""Session-wide fixtures: paths to the real reference files and the real SmolLM2 GGUF.

Tiny random-weight Llama 3 checkpoints in every format are written by `tests/checkpoint_factory.py`
fixtures registered below; the real SmolLM2 model is loaded once per session.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_LLAMA3 = Path(os.environ.get("LLAMA3_SHARED", REPO.parent / "shared" / "llama3")).resolve()
TOKENIZER_MODEL = SHARED_LLAMA3 / "tokenizer.model"
HF_TOKENIZER_JSON = SHARED_LLAMA3 / "hf-llama3-tokenizer.json"
HF_TOKENIZER_CONFIG_30 = SHARED_LLAMA3 / "hf-llama3-tokenizer_config.json"
HF_TOKENIZER_CONFIG_31 = SHARED_LLAMA3 / "hf-llama3.1-tokenizer_config.json"

# Meta's split pattern (meta-llama/llama3 llama/tokenizer.py, SEEDS §1.6), written out here so the
# oracles below share no code with the package.
META_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3.1 special-token names by id offset from 128000 (llama-models; SEEDS §1.6 table).
NAMES_31 = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(2, 247)]
SPECIALS_31 = {name: 128000 + i for i, name in enumerate(NAMES_31)}


@functools.cache
def _bpe_ranks() -> dict[bytes, int]:
    from tiktoken.load import load_tiktoken_bpe

    return load_tiktoken_bpe(str(TOKENIZER_MODEL))


def tiktoken_oracle(special_tokens: dict[str, int] | None = None):
    """Plain tiktoken over the real tokenizer.model with Meta's pattern (the file is read once)."""
    import tiktoken

    return tiktoken.Encoding(
        "llama3-oracle",
        pat_str=META_PAT_STR,
        mergeable_ranks=_bpe_ranks(),
        special_tokens=special_tokens or {},
    )


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def smollm2_gguf() -> Path:
    from llama3.registry import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def shared_llama3() -> Path:
    if not TOKENIZER_MODEL.is_file():
        raise RuntimeError(
            f"reference files missing: {SHARED_LLAMA3} (CI runs with ../shared beside the repo)"
        )
    return SHARED_LLAMA3


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return smollm2_gguf()


class TinyModels:
    """One random-weight Llama 3 model per variant, written lazily in every format (session-wide)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple[str, str], object] = {}

    def hf_model(self, variant: str):
        key = (variant, "hf_model")
        if key not in self._cache:
            import factory

            self._cache[key] = factory.hf_model(variant)
        return self._cache[key]

    def path(self, variant: str, fmt: str) -> Path:
        """fmt: 'hf', 'meta' (1 shard), 'meta2' (2 shards), 'gguf' (F32), 'gguf-q8' (Q8_0),
        'gguf-q4' (Q4_0)."""
        key = (variant, fmt)
        if key not in self._cache:
            import factory

            m = self.hf_model(variant)
            out = self.root / f"llama{variant.replace('.', '')}-{fmt}"  # no dot: with_suffix below
            if fmt == "hf":
                p = factory.write_hf(m, out, variant)
            elif fmt.startswith("meta"):
                p = factory.write_meta(m, out, variant, n_shards=2 if fmt == "meta2" else 1)
            elif fmt == "gguf":
                p = factory.write_gguf(m, out.with_suffix(".gguf"), variant)
            elif fmt == "gguf-q8":
                p = factory.write_gguf(m, out.with_suffix(".gguf"), variant, qtype="Q8_0")
            elif fmt == "gguf-q4":
                p = factory.write_gguf(m, out.with_suffix(".gguf"), variant, qtype="Q4_0")
            else:
                raise ValueError(fmt)
            self._cache[key] = p
        return self._cache[key]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, shared_llama3) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """The real SmolLM2-135M-Instruct GGUF loaded once per session as users get it by default
    (its Q4_1 blocks as int4, CPU): what `llama3 chat` / `serve` subprocesses run too."""
    from llama3 import Llama

    return Llama.load(
        smollm2_path, device="cpu", dtype="float32", max_seq_len=2048, max_batch_size=4
    )


@pytest.fixture(scope="session")
def smollm2_float(smollm2_path):
    """The same file on the exact float path (`quantize="none"`): what transformers computes."""
    from llama3 import Llama

    return Llama.load(
        smollm2_path,
        device="cpu",
        dtype="float32",
        max_seq_len=2048,
        max_batch_size=4,
        quantize="none",
    )


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path):
    """transformers loading the same GGUF file (its own dequantization and conversion)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32
    ).eval()
