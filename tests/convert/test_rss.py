"""Conversions stream: peak RSS of a converting process (bench/convert_rss.py, a fresh process per
conversion) stays near one output shard (Meta) or a tensor or two (HF, GGUF), far below the model."""

from __future__ import annotations

import json
import subprocess
import sys

from .helpers import REPO

MIB = 2**20


def test_peak_rss_is_a_shard_not_the_model():
    cmd = [sys.executable, str(REPO / "bench" / "convert_rss.py"), "--dim", "1024", "--layers", "4",
           "--vocab", "16000", "--cases", "meta4,hf,gguf-f32,meta4-to-hf", "--max-shard-size",
           "100MB", "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    model, tensor = res["model_bytes"], res["largest_tensor"]
    assert model > 250 * MIB
    cases = res["cases"]
    margin = 40 * MIB  # allocator slack, page tables, the tensor table and metadata
    # Meta: torch.save takes a whole shard; the shard is a quarter of the model
    meta4 = cases["meta4"]
    assert meta4["peak_minus_before"] < meta4["largest_file"] + tensor + margin, cases
    for name in ("hf", "gguf-f32"):  # one tensor at a time
        assert cases[name]["peak_minus_before"] < tensor + margin, (name, cases)
    # from 4 shards: a tensor's parts are concatenated (its source pages + the copy)
    assert cases["meta4-to-hf"]["peak_minus_before"] < 2 * tensor + margin, cases
    assert all(c["peak_minus_before"] < model / 2 for c in cases.values()), cases
