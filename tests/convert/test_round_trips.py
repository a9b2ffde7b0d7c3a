"""Every source format to every target: the output loads in this project with the source's logits;
and round trips are exact (Meta -> HF -> Meta, Meta -> GGUF -> Meta, HF -> Meta -> HF bit for bit,
bfloat16 included), whatever the shard counts on the way."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from .helpers import convert, converted, hf_logits, load_pth, our_logits

SOURCES = ("meta", "meta2", "hf", "gguf")
TARGETS = ("meta", "hf", "gguf")
VARIANTS = ("3.0", "3.1", "3.2")


@pytest.mark.parametrize(
    "src, to",
    [(s, t) for s in SOURCES for t in TARGETS],
)
def test_every_pair_keeps_the_logits(tiny, work, src, to):
    # one variant per pair, in turn, so 3.0, 3.1 scaling and 3.2 tied embeddings all pass each way
    i = SOURCES.index(src) * len(TARGETS) + TARGETS.index(to)
    variant = VARIANTS[i % len(VARIANTS)]
    out = converted(tiny, work, variant, src, to)
    want = hf_logits(tiny.hf_model(variant))
    assert torch.allclose(our_logits(out), want, atol=1e-4)
    assert torch.equal(our_logits(out), our_logits(tiny.path(variant, src)))


def _meta_shards(path) -> list[dict[str, torch.Tensor]]:
    return [load_pth(f) for f in sorted(path.glob("*.pth"))]


def _assert_identical(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)  # (the factory's key order is not Meta's module order)
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("variant, src, shards", [("3.0", "meta2", 2), ("3.2", "meta", 1)])
def test_meta_hf_meta_is_bit_identical(tiny, work, variant, src, shards):
    hf = converted(tiny, work, variant, src, "hf")
    back = convert(hf, "meta", work / f"rt-{variant}-{src}-hf-meta", shards=shards)
    _assert_identical(_meta_shards(back), _meta_shards(tiny.path(variant, src)))
    assert (back / "params.json").read_text() == converted(
        tiny, work, variant, src, "meta", shards=shards
    ).joinpath("params.json").read_text()


def test_meta_gguf_meta_is_bit_identical(tiny, work):
    gguf = converted(tiny, work, "3.1", "meta2", "gguf")
    back = convert(gguf, "meta", work / "rt-31-gguf-meta", shards=2)
    _assert_identical(_meta_shards(back), _meta_shards(tiny.path("3.1", "meta2")))


def test_bf16_round_trip_through_every_format(tiny, work):
    bf = converted(tiny, work, "3.0", "meta", "meta", dtype="bf16", shards=4)
    hf = convert(bf, "hf", work / "rt-bf16-hf")
    gguf = convert(hf, "gguf", work / "rt-bf16.gguf")
    back = convert(gguf, "meta", work / "rt-bf16-back", shards=4)
    _assert_identical(_meta_shards(back), _meta_shards(bf))
    assert {t.dtype for t in load_file(hf / "model.safetensors").values()} == {torch.bfloat16}


def test_hf_meta_hf_is_bit_identical(tiny, work):
    meta = converted(tiny, work, "3.1", "hf", "meta", shards=4)
    back = convert(meta, "hf", work / "rt-31-hf-meta4-hf")
    src = tiny.path("3.1", "hf")
    a, b = load_file(src / "model.safetensors"), load_file(back / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_meta_shard_counts_read_back_as_the_model(tiny, work, shards):
    out = converted(tiny, work, "3.0", "hf", "meta", shards=shards)
    assert len(list(out.glob("consolidated.*.pth"))) == shards
    assert torch.equal(our_logits(out), our_logits(tiny.path("3.0", "hf")))
