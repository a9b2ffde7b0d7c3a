"""What a load runs as without `quantize`: a quantized GGUF as its quant, float as float unless it
would not fit, "none" as the exact float path; the reason is one line in the load and in inspect."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from llama3 import Llama
from llama3.checkpoint import read_checkpoint
from llama3.errors import ConfigError
from llama3.quant.default import choose
from llama3.quant.int4 import Int4Linear
from llama3.quant.int8 import Int8Linear

CPU = torch.device("cpu")


def choice(path, requested=None, **kw):
    return choose(read_checkpoint(path), requested, CPU, torch.float32, **kw)


def test_gguf_q4_blocks_run_as_int4_and_q8_as_int8(tiny):
    q4 = choice(tiny.path("3.1", "gguf-q4"))
    assert q4.scheme == "int4" and "Q4_0 blocks run as they are" in q4.reason
    q8 = choice(tiny.path("3.1", "gguf-q8"))
    assert q8.scheme == "int8" and "Q8_0" in q8.reason
    assert choice(tiny.path("3.1", "gguf")).scheme is None  # F32 GGUF: float as stored


def test_none_and_named_schemes_are_taken_as_asked(tiny):
    q4 = tiny.path("3.1", "gguf-q4")
    assert choice(q4, "none").scheme is None
    assert choice(q4, "int8").scheme == "int8"
    assert choice(q4, auto=False).scheme is None  # Meta's Llama.build: as stored
    on_gpu = choose(read_checkpoint(q4), None, torch.device("cuda"), torch.bfloat16)
    assert on_gpu.scheme is None and "cuda" in on_gpu.reason


def test_a_float_model_that_would_not_fit_loads_quantized(tiny):
    hf = tiny.path("3.1", "hf")
    n = sum(t.numel() for t in Llama.load(hf, quantize="none").model.state_dict().values())
    assert choice(hf, free_bytes=100 * n * 4).scheme is None
    small = choice(hf, free_bytes=int(n * 4 * 0.6))  # float32 is over 80 % of it, int8 is not
    assert small.scheme == "int8" and "would not fit" in small.reason
    assert choice(hf, free_bytes=int(n * 1.0)).scheme == "int4"
    with pytest.raises(ConfigError, match="even as int4"):
        choice(hf, free_bytes=n // 4)


def test_default_load_of_a_q4_gguf_is_int4_and_none_is_the_float_path(tiny):
    path = tiny.path("3.1", "gguf-q4")
    quant = Llama.load(path, max_seq_len=64, max_batch_size=1)
    flt = Llama.load(path, max_seq_len=64, max_batch_size=1, quantize="none")
    asked = Llama.load(path, max_seq_len=64, max_batch_size=1, quantize="int4")
    assert isinstance(quant.model.layers[0].attention.wqkv, Int4Linear)
    assert isinstance(quant.model.output, Int8Linear)  # the head at 8 bits (QuantSpec.head)
    assert not isinstance(flt.model.layers[0].attention.wq, Int4Linear | Int8Linear)
    assert quant.loaded.weights_note.startswith("int4:")
    assert flt.loaded.weights_note == "float32 weights (--quantize none)"
    tokens = torch.tensor([[1, 5, 9, 200, 7]])
    # the default is exactly --quantize int4 (the same blocks), and close to the float path
    torch.testing.assert_close(quant.model(tokens), asked.model(tokens), rtol=0, atol=0)
    ref = flt.model(tokens)
    assert (quant.model(tokens) - ref).abs().max() < 0.05 * ref.abs().max()


def test_the_cli_says_what_the_weights_run_as(tiny):
    path = tiny.path("3.1", "gguf-q8")
    for extra, want in (
        ([], "weights: int8: the file's Q8_0 blocks"),
        (["--quantize", "none"], "weights: float32 weights (--quantize none)"),
    ):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "llama3",
                "generate",
                "--model",
                str(path),
                "--max-tokens",
                "2",
                "--temperature",
                "0",
                *extra,
                "Hello",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert want in out.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "llama3", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "runs as         int8: the file's Q8_0 blocks" in shown.stdout
