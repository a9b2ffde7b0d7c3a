"""The GPU int8 one-row product's cases (gpu_int8_cases.py), in a child process: on CUDA where there
is one, else on the CPU under Triton's interpreter, which must be switched on before Triton is first
imported (this process may have imported it already)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = Path(__file__).with_name("gpu_int8_cases.py")


def test_the_kernel_cases_pass():
    pytest.importorskip("triton", reason="Triton is a test dependency (pip install -e '.[test]')")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=-q", "-p", "no:cacheprovider", str(CASES)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout and "failed" not in done.stdout
