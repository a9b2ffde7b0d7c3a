"""Fixtures for the AIME worker tests: the real AIME API Server and one `llama3 aime-worker` on
SmolLM2 shared by the module, and the in-process `smollm2` model (tests/conftest.py) as the
oracle for what the worker returns."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from aime_harness import AimeClient, AimeServer, Worker  # noqa: E402


@pytest.fixture(scope="module")
def aime_server(tmp_path_factory):
    s = AimeServer(run_dir=tmp_path_factory.mktemp("aime-run")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def worker(aime_server, smollm2_path):
    """Two slots, so five concurrent jobs must queue and join the batch as slots free up."""
    w = Worker(aime_server.url, smollm2_path, max_batch=2).start()
    yield w
    w.stop()


@pytest.fixture
def client(aime_server):
    c = AimeClient(aime_server.url)
    yield c
    c.close()
