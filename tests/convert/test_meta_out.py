"""`--to meta`: Meta's model-parallel split (checked against an independent statement of the
rules: fairscale's even chunks, llama-models' kv-head repetition), AIME names, tied models."""

from __future__ import annotations

import json

import factory
import pytest
import torch

from llama3.checkpoint import read_checkpoint
from llama3.convert.plan import MetaShardPlan
from llama3.errors import InvalidRequestError

from .helpers import convert, hf_logits, load_pth, our_logits, wide_kv_model, write_meta_any

COLUMN = ("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")


def reshard_oracle(sd: dict, n: int, n_kv: int) -> list[dict]:
    """SEEDS §1.5 (llama-models reshard_mp): column-parallel on dim 0, row-parallel on dim 1,
    norms copied; with n > n_kv, wk/wv rows repeated n // n_kv times (per head) before splitting."""
    shards: list[dict] = [{} for _ in range(n)]
    for k, v in sd.items():
        if k.endswith(("wk.weight", "wv.weight")) and n > n_kv:
            v = v.reshape(n_kv, -1, v.shape[1]).repeat_interleave(n // n_kv, 0).flatten(0, 1)
        if k in ("tok_embeddings.weight", "output.weight") or k.endswith(COLUMN):
            parts = v.chunk(n, 0)
        elif k.endswith(("wo.weight", "w2.weight")):
            parts = v.chunk(n, 1)
        else:
            parts = [v] * n
        for r in range(n):
            shards[r][k] = parts[r]
    return shards


def assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want) or set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


def test_one_to_two_shards_is_metas_split(tiny, work):
    src = tiny.path("3.0", "meta")
    out = convert(src, "meta", work / "m30-2", shards=2)
    oracle = factory.write_meta(tiny.hf_model("3.0"), work / "m30-2-oracle", "3.0", n_shards=2)
    for r in range(2):
        assert_same(
            load_pth(out / f"consolidated.{r:02d}.pth"),
            load_pth(oracle / f"consolidated.{r:02d}.pth"),
        )
    assert json.loads((out / "params.json").read_text()) == json.loads(
        (oracle / "params.json").read_text()
    )
    assert (out / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()


def test_four_shards_repeat_kv_heads(tiny, work):
    # 4 shards, 2 kv heads: each kv head's rows on 2 consecutive shards
    src = tiny.path("3.1", "meta2")
    out = convert(src, "meta", work / "m31-4", shards=4)
    sd = factory.meta_state_dict(tiny.hf_model("3.1"))
    for r, want in enumerate(reshard_oracle(sd, 4, factory.N_KV_HEADS)):
        assert_same(load_pth(out / f"consolidated.{r:02d}.pth"), want)
    assert torch.allclose(our_logits(out), hf_logits(tiny.hf_model("3.1")), atol=1e-4)
    # ... and back to one shard, bit for bit
    back = convert(out, "meta", work / "m31-4-1")
    assert_same(load_pth(back / "consolidated.00.pth"), sd)


def test_eight_to_two_shards_with_aime_names(work):
    # AIME's 70B case: 8 shards of one kv head each, re-sharded for 2 GPUs
    model = wide_kv_model()
    src = write_meta_any(model, work / "wide8", n_shards=8)
    out = convert(src, "meta", work / "wide2", shards=2, aime_names=True)
    assert sorted(p.name for p in out.glob("*.pth")) == [
        "merged.2GPUs.00.pth",
        "merged.2GPUs.01.pth",
    ]
    oracle = write_meta_any(model, work / "wide2-oracle", n_shards=2)
    for r in range(2):
        assert_same(
            load_pth(out / f"merged.2GPUs.{r:02d}.pth"),
            load_pth(oracle / f"consolidated.{r:02d}.pth"),
        )
    ckpt = read_checkpoint(out, prefer_shards=2)
    assert [f.name for f in ckpt.files[1:]] == ["merged.2GPUs.00.pth", "merged.2GPUs.01.pth"]
    assert torch.allclose(our_logits(out), hf_logits(model), atol=1e-4)


def test_tied_model_has_no_output_weight(tiny, work):
    out = convert(tiny.path("3.2", "hf"), "meta", work / "m32")
    sd = load_pth(out / "consolidated.00.pth")
    assert "output.weight" not in sd
    assert_same(sd, factory.meta_state_dict(tiny.hf_model("3.2")))
    params = json.loads((out / "params.json").read_text())
    assert params["use_scaled_rope"] is True and params["rope_scaling_factor"] == 32.0
    assert torch.allclose(our_logits(out), hf_logits(tiny.hf_model("3.2")), atol=1e-4)


def test_default_dtype_is_the_sources(tiny, work):
    bf = convert(tiny.path("3.0", "meta"), "meta", work / "m30-bf16", dtype="bf16")
    again = convert(bf, "meta", work / "m30-bf16-2", shards=2)
    sd = load_pth(again / "consolidated.00.pth")
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "world, message",
    [
        (3, "--shards 3 does not divide n_heads 4"),
        (8, "--shards 8 does not divide n_heads 4"),
    ],
)
def test_plan_rejects_shard_counts_that_do_not_divide(tiny, world, message):
    args = read_checkpoint(tiny.path("3.0", "meta")).args
    with pytest.raises(InvalidRequestError, match=message):
        MetaShardPlan.make(args, world)


def test_plan_rejects_kv_replication_that_is_not_whole(work):
    args = read_checkpoint(tiny_args_dir(work)).args  # 12 heads, 4 kv heads
    with pytest.raises(InvalidRequestError, match="more than n_kv_heads 4 but not a multiple"):
        MetaShardPlan.make(args, 6)
    plan = MetaShardPlan.make(args, 12)
    assert plan.kv_repeats == 3
    rows = args.head_dim
    assert [
        plan.cut("layers.0.attention.wk.weight", r, (4 * rows, 96))[1:] for r in (0, 2, 3, 11)
    ] == [
        (0, rows),
        (0, rows),
        (rows, 2 * rows),
        (3 * rows, 4 * rows),
    ]


def tiny_args_dir(work):
    d = work / "args12"
    if not d.exists():
        d.mkdir()
        params = {
            "dim": 96,
            "n_layers": 1,
            "n_heads": 12,
            "n_kv_heads": 4,
            "vocab_size": 96,
            "multiple_of": 96,
            "norm_eps": 1e-5,
            "rope_theta": 500000.0,
        }
        (d / "params.json").write_text(json.dumps(params))
        torch.save({"norm.weight": torch.ones(96)}, d / "consolidated.00.pth")
    return d
