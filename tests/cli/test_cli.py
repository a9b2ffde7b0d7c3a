"""The `llama3` command as a user runs it: a real subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama3", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_json_greedy(tiny):
    r = run(
        "generate",
        "--model",
        str(tiny.path("3.0", "hf")),
        "Hello",
        "--temperature",
        "0",
        "--max-tokens",
        "4",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["tokens"]) <= 4 and out["finish_reason"] in ("stop", "length")


def test_chat_pipe_mode_with_default_model():
    r = run(
        "chat", "--temperature", "0", "--max-tokens", "24", stdin="What is the capital of France?\n"
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and ">" not in r.stdout  # answers only, no prompts


def test_missing_model_is_one_line_error():
    r = run("generate", "--model", "/no/such/model", "hi")
    assert r.returncode == 1
    assert r.stderr.startswith("error: no such file or directory: /no/such/model (hint:")
    assert "Traceback" not in r.stderr


def test_bad_flag_value_is_usage_error(tiny):
    r = run("generate", "--model", str(tiny.path("3.0", "hf")), "hi", "--temperature", "-3")
    assert r.returncode == 2 and r.stderr.startswith("error: temperature must be between 0 and 100")


def test_hub_id_resolves_from_the_local_cache_only(tiny, tmp_path, monkeypatch):
    """`--model org/name` uses a snapshot already in the HF cache and never downloads."""
    import os
    import shutil

    cache = tmp_path / "hub"
    snap = cache / "models--meta-llama--Tiny-Llama-3" / "snapshots" / "abc123"
    shutil.copytree(tiny.path("3.0", "hf"), snap)
    (cache / "models--meta-llama--Tiny-Llama-3" / "refs").mkdir()
    (cache / "models--meta-llama--Tiny-Llama-3" / "refs" / "main").write_text("abc123")
    env = {**os.environ, "HF_HUB_CACHE": str(cache)}
    args = [
        "generate",
        "--model",
        "meta-llama/Tiny-Llama-3",
        "Hello",
        "--temperature",
        "0",
        "--max-tokens",
        "3",
        "--json",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "llama3", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prompt_tokens"][0] == 128000
    args[2] = "meta-llama/Not-Downloaded"
    r = subprocess.run(
        [sys.executable, "-m", "llama3", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 1
    assert "neither a local path nor in the Hugging Face cache" in r.stderr
    assert "llama3 download meta-llama/Not-Downloaded" in r.stderr
