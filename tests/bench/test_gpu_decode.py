"""bench/gpu_decode.py (the GPU decode benchmark) runs its code paths on the CPU too: a tiny
model of the same construction, compiled against eager, both modes reported."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_decode.py"


def test_gpu_decode_bench_runs_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_decode", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    argv = ["--device", "cpu", "--shape", "tiny", "--steps", "4", "--runs", "1"]
    argv += ["--new-tokens", "8", "--bandwidth-gib", "0.05", "--float32-check"]
    assert mod.main([*argv, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    full, int8 = r["bfloat16"], r["int8"]  # (float32 on the CPU; the mode keeps its GPU name)
    assert full["max_rel_diff"] < 1e-5 and full["same_argmax"]  # compiled step == eager step
    assert full["eager_rel_err_vs_float32"] == 0.0
    assert int8["weight_bytes"] < full["weight_bytes"] / 3
    assert 0 < int8["eager_rel_err_vs_float32"] < 0.1
    for mode in (full, int8):
        assert mode["decode_tok_s"] > 0 and mode["bound_tok_s"] > 0
