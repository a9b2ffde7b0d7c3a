"""`llama3 quantize --to … --out DIR`: the directory loads back as the same quantized model
(bit-identical logits), with its tokenizer, from every source format; bad input changes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from llama3 import Llama
from llama3.cli import main
from llama3.errors import ConfigError
from llama3.quant.int4 import Int4Linear
from llama3.quant.int8 import Int8Linear

PROMPT = "Quantized weights, written once and loaded many times."


def _logits(llm: Llama) -> torch.Tensor:
    ids = torch.tensor([llm.tokenizer.encode(PROMPT, bos=True, eos=False)])
    with torch.inference_mode():
        return llm.model(ids)[0]


@pytest.mark.parametrize(
    ("variant", "fmt", "scheme"),
    [
        ("3.0", "meta", "int8"),
        ("3.2", "hf", "int4-g32"),  # tied embeddings: the head is stored quantized on its own
        ("3.1", "gguf-q4", "int4"),  # Q4_0 blocks run as they are, 3.1 RoPE factors kept
    ],
)
def test_round_trip_is_bit_identical(tiny, tmp_path, capsys, variant, fmt, scheme):
    src = tiny.path(variant, fmt)
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--to", scheme, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scheme"] == scheme and report["out"] == str(out)
    assert json.loads((out / "quantization.json").read_text())["scheme"].startswith(scheme)

    direct = Llama.load(src, quantize=scheme, max_seq_len=64)
    again = Llama.load(out, max_seq_len=64)  # no --quantize: the directory says what it is
    kind = Int8Linear if scheme == "int8" else Int4Linear
    assert isinstance(again.model.layers[1].feed_forward.w13, kind)
    assert isinstance(again.model.output, Int8Linear)  # the head is int8 under int4 too
    assert again.tokenizer.encode(PROMPT, bos=True, eos=False) == direct.tokenizer.encode(
        PROMPT, bos=True, eos=False
    )
    assert again.tokenizer.stop_tokens == direct.tokenizer.stop_tokens
    assert torch.equal(_logits(again), _logits(direct))
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0  # the doctor reads it too
    assert "llama3 quantize output" in capsys.readouterr().out


def test_gguf_q4_as_int4_holds_the_files_exact_weights(tiny):
    """Q4_0 blocks are not requantized: the int4 layers hold the weights the float path reads."""
    src = tiny.path("3.0", "gguf-q4")
    q = Llama.load(src, quantize="int4", max_seq_len=64).model
    f = Llama.load(src, max_seq_len=64, quantize="none").model
    for ql, fl in zip(q.layers, f.layers, strict=True):
        att, ff = fl.attention, fl.feed_forward
        qkv = torch.cat([att.wq.weight, att.wk.weight, att.wv.weight])
        assert torch.equal(ql.attention.wqkv.dequantize(), qkv)
        assert torch.equal(ql.attention.wo.dequantize(), att.wo.weight)
        assert torch.equal(
            ql.feed_forward.w13.dequantize(), torch.cat([ff.w1.weight, ff.w3.weight])
        )
        assert torch.equal(ql.feed_forward.w2.dequantize(), ff.w2.weight)


def test_bad_input_writes_nothing(tiny, tmp_path, capsys):
    src = tiny.path("3.0", "hf")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["quantize", str(src), "--to", "int8", "--out", str(busy)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    # the tiny model's FFN width (224) is not a multiple of 64
    assert main(["quantize", str(src), "--to", "int4-g64", "--out", str(tmp_path / "x")]) == 2
    assert "multiple of the int4 group size 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", str(src), "--to", "int5", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()

    out = tmp_path / "q8"
    assert main(["quantize", str(src), "--to", "int8", "--out", str(out)]) == 0
    with pytest.raises(ConfigError, match="holds int8 weights, not int4-g32"):
        Llama.load(out, quantize="int4", max_seq_len=64)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_requantizing_gguf_q4_to_another_group_warns(tiny, caplog):
    from llama3.checkpoint import read_checkpoint
    from llama3.quant.apply import LoadQuantizer, QuantSpec

    ckpt = read_checkpoint(tiny.path("3.0", "gguf-q4"))
    src = ckpt.tensors["layers.0.attention.wq.weight"]
    assert LoadQuantizer(QuantSpec(4, 32)).take("layers.0.attention.wq.weight", src)
    with caplog.at_level("WARNING"):
        assert not LoadQuantizer(QuantSpec(4, 64)).take("layers.0.attention.wq.weight", src)
    assert "--quantize int4 (group 32) runs the file's blocks" in caplog.text
