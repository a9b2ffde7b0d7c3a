"""A conversion that fails or is interrupted leaves nothing that looks finished: the output is
written under `OUT.partial-PID` and renamed at the end; on an error the partial output is removed.
An existing output is refused and left as it was."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

import llama3.convert.source as source_module
from llama3.convert import ConvertOptions, convert
from llama3.convert.atomic import PARTIAL
from llama3.errors import CheckpointError, InvalidRequestError


def _out(work, name: str, to: str):
    d = work / f"fail-{name}"
    d.mkdir()
    return d / ("model.gguf" if to == "gguf" else "model")


def _nothing_left(out) -> None:
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())


@pytest.mark.parametrize("to", ["meta", "hf", "gguf"])
def test_only_a_partial_name_exists_while_writing(tiny, work, to):
    out = _out(work, f"while-{to}", to)
    seen = []

    def tick(label: str) -> None:
        seen.append((out.exists(), sorted(p.name for p in out.parent.iterdir())))

    convert(tiny.path("3.0", "hf"), ConvertOptions.make(to, out), on_tensor=tick)
    partial = f"{out.name}{PARTIAL}{os.getpid()}"
    assert seen and all(state == (False, [partial]) for state in seen)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


@pytest.mark.parametrize("to", ["meta", "hf", "gguf"])
def test_interrupted_conversion_leaves_nothing(tiny, work, to):
    out = _out(work, f"interrupt-{to}", to)
    count = 0

    def tick(label: str) -> None:
        nonlocal count
        count += 1
        if count == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(tiny.path("3.1", "meta2"), ConvertOptions.make(to, out), on_tensor=tick)
    _nothing_left(out)


def test_disk_full_leaves_nothing(tiny, work, monkeypatch):
    from llama3.convert.safetensors_stream import SafetensorsStream

    real = SafetensorsStream.write
    calls = 0

    def write(self, name, tensor):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, name, tensor)

    monkeypatch.setattr(SafetensorsStream, "write", write)
    out = _out(work, "enospc", "hf")
    with pytest.raises(CheckpointError, match="No space left on device") as e:
        convert(tiny.path("3.0", "meta"), ConvertOptions.make("hf", out, max_shard_size="10MB"))
    assert "free space" in e.value.hint
    _nothing_left(out)


@pytest.mark.parametrize("to", ["meta", "hf", "gguf"])
def test_source_tensor_error_leaves_nothing(tiny, work, monkeypatch, to):
    real = source_module.read_checkpoint

    def broken(path, **kw):
        ckpt = real(path, **kw)
        bad = ckpt.tensors["layers.1.feed_forward.w2.weight"]

        def load(dtype):
            raise RuntimeError("short read")  # what a truncated mapped file gives

        bad.load, bad.narrow = load, None
        return ckpt

    monkeypatch.setattr(source_module, "read_checkpoint", broken)
    out = _out(work, f"source-{to}", to)
    with pytest.raises(CheckpointError, match="cannot read tensor .*w2.*short read"):
        convert(
            tiny.path("3.0", "meta"),
            ConvertOptions.make(to, out, **({"shards": 2} if to == "meta" else {})),
        )
    _nothing_left(out)


def test_truncated_source_is_refused_before_writing(tiny, work):
    src = work / "truncated.gguf"
    shutil.copyfile(tiny.path("3.0", "gguf"), src)
    with open(src, "r+b") as f:
        f.truncate(src.stat().st_size - 1000)
    out = _out(work, "truncated", "hf")
    with pytest.raises(CheckpointError, match="truncated"):
        convert(src, ConvertOptions.make("hf", out))
    _nothing_left(out)


@pytest.mark.parametrize("to", ["meta", "gguf"])
def test_existing_output_is_refused_and_kept(tiny, work, to):
    out = _out(work, f"exists-{to}", to)
    if to == "gguf":
        out.write_bytes(b"mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    with pytest.raises(InvalidRequestError, match="already exists"):
        convert(tiny.path("3.0", "meta"), ConvertOptions.make(to, out))
    kept = out.read_bytes() if to == "gguf" else (out / "notes.txt").read_bytes()
    assert kept == b"mine" and len(list(out.parent.iterdir())) == 1


def test_an_empty_output_directory_is_used(tiny, work):
    out = _out(work, "empty", "hf")
    out.mkdir()
    convert(tiny.path("3.0", "meta"), ConvertOptions.make("hf", out))
    assert (out / "config.json").is_file() and len(list(out.parent.iterdir())) == 1
