"""Fixtures for the server tests: one real `llama3 serve` on SmolLM2 shared by the module files,
and the in-process `smollm2` model (from tests/conftest.py) as the oracle for its outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def server():
    """The default server: no API key, 16 sequences per batch, SmolLM2 (the built-in default)."""
    s = ServerProcess(max_num_seqs=16).start()
    yield s
    s.stop()


@pytest.fixture
def new_server(request):
    """Build-your-own server, stopped after the test: `new_server(api_keys=[...]).start()`."""
    started: list[ServerProcess] = []

    def make(**kw) -> ServerProcess:
        s = ServerProcess(**kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
