"""The native CPU kernels build from source on a machine with a compiler, load in a fresh process,
and every way they can be missing leaves the portable paths with a reason instead of an error."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

PROBE = (
    "import logging; logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
    "from llama3 import kernels; from llama3.quant.int8 import Int8Linear; import torch\n"
    "print(kernels.available(), kernels.unavailable_reason())\n"
    "lin = Int8Linear.from_float(torch.randn(8, 64))\n"
    "print(lin(torch.randn(2, 64)).shape, lin._key is None)\n"
)


def _env(cache, **env: str) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if k not in ("LLAMA3_KERNELS", "CXX")}
    full.update(LLAMA3_KERNEL_CACHE=str(cache), **env)
    return full


def probe(cache, **env: str) -> tuple[list[str], str]:
    """PROBE in a fresh process whose kernel cache is `cache`."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=_env(cache, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines(), out.stderr


def skip_unless_buildable() -> None:
    from llama3 import kernels

    why = kernels.unavailable_reason()
    if why and "failed" not in why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory, tiny):
    """One build from an empty cache, shared by the two tests below (a build takes 15-60 s):
    `llama3 generate` on a float model (whose layers never ask for the kernels while loading)
    in a fresh process. Returns the cache and the finished process."""
    skip_unless_buildable()
    cache = tmp_path_factory.mktemp("fresh-kernels") / "cache"
    argv = [sys.executable, "-m", "llama3", "generate", "--model", str(tiny.path("3.1", "hf"))]
    out = subprocess.run(
        [*argv, "--max-tokens", "2", "--temperature", "0", "Hello"],
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return cache, out


def test_build_from_scratch_then_load_from_the_cache(fresh_build):
    cache, out = fresh_build
    assert out.returncode == 0, out.stderr
    assert "building native kernels for this CPU" in out.stderr
    assert len(list(cache.glob("llama3_kernels-*.so"))) == 1
    assert not [p for p in cache.iterdir() if not p.name.startswith("llama3_")]
    lines, err = probe(cache)  # built once: a fresh process only loads it, and uses it
    assert lines == ["True None", "torch.Size([2, 8]) True"]
    assert "building" not in err


def test_a_load_builds_them_before_the_first_prompt(fresh_build, tiny):
    """A fresh cache: `llama3 generate` on a float model builds them during the load, says so
    once, and answers after."""
    cache, out = fresh_build
    assert out.returncode == 0, out.stderr
    err = out.stderr.splitlines()
    built = [i for i, ln in enumerate(err) if ln.startswith("building native kernels")]
    loaded = [i for i, ln in enumerate(err) if ln.startswith("weights: ")]
    assert len(built) == 1 and len(loaded) == 1 and built[0] < loaded[0], out.stderr
    assert len(list(cache.glob("llama3_kernels-*.so"))) == 1
    shown = subprocess.run(
        [sys.executable, "-m", "llama3", "inspect", str(tiny.path("3.1", "hf"))],
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "native kernels: built, " in shown.stdout, shown.stdout


def test_turned_off_by_the_environment(tmp_path):
    lines, _ = probe(tmp_path / "cache", LLAMA3_KERNELS="0")
    assert lines == ["False LLAMA3_KERNELS=0", "torch.Size([2, 8]) False"]


def test_a_failing_compiler_falls_back_with_a_warning(tmp_path):
    from llama3 import kernels

    why = kernels.unavailable_reason()
    if why and "failed" not in why and "compiler" not in why:
        pytest.skip(why)
    lines, err = probe(tmp_path / "cache", CXX="false")
    assert lines[0].startswith("False building them failed")
    assert lines[1] == "torch.Size([2, 8]) False"
    assert "native CPU kernels off" in err and "Traceback" not in err
    assert not list((tmp_path / "cache").glob("*.so"))  # no half-written library left behind


def _target_macros(march: str) -> set[str]:
    """The instruction-set macros the kernels' sources branch on (`#if defined(__AVX512F__)`
    ...) that the compiler defines for `-march=<march>` with the build's own -m flags."""
    from llama3 import kernels

    branched: set[str] = set()
    for src in kernels.SOURCES + kernels.HEADERS:
        for line in src.read_text().splitlines():
            if re.match(r"\s*#\s*(el)?if", line):
                branched |= set(re.findall(r"\b__[A-Z0-9_]+__\b", line))
    flags = [f for f in kernels._FLAGS if f.startswith("-m")]
    cmd = [kernels._compiler(), *flags, f"-march={march}", "-dM", "-E", "-x", "c++", os.devnull]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    defined = {ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("#define ")}
    return branched & defined


def test_the_avx2_build_passes_the_kernel_tests(tmp_path):
    """The kernels are built for the CPU at hand, so on an AVX-512 machine the AVX2 code (what
    Zen 3 and older Intel CPUs run) is not what the other tests exercise: build it explicitly and
    rerun the kernels' correctness tests against it. Where the native build compiles the same
    code (an AVX2-only CPU: the sources branch on no macro the two targets set differently),
    the rest of the suite has just run exactly that code, and the rerun is skipped as such."""
    skip_unless_buildable()
    native = _target_macros("native")
    if native == _target_macros("haswell"):
        pytest.skip(
            "the native build here is the AVX2 code (of the macros the kernels branch on, "
            f"-march=native and haswell both define {sorted(native) or 'none'}): the suite ran it"
        )
    env = _env(tmp_path / "cache", LLAMA3_KERNELS_MARCH="haswell")
    files = [
        "tests/quant/test_int8.py",
        "tests/quant/test_int4.py",
        "tests/quant/test_int4_q8.py",
        "tests/model/test_native_decode.py",
        "tests/model/test_decode_attention.py",
        "tests/model/test_native_elementwise.py",
        "tests/quant/test_bf16_rows.py",
    ]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", *files],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary
    built = list((tmp_path / "cache").glob("llama3_kernels-*.so"))
    assert len(built) == 1  # the kernels were on (built for haswell), not the fallback
    # that build has no AMX tiles: prompts' bfloat16 attention falls back to SDPA (bfloat16 out)
    probe = (
        "import torch; from llama3 import kernels; from llama3.model.attention import "
        "causal_attention as a\n"
        "q, k = torch.randn(1, 2, 40, 64).bfloat16(), torch.randn(1, 1, 40, 64)\n"
        "print(kernels.has_amx(), a(q, k, k).dtype)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.stdout.split() == ["False", "torch.bfloat16"], out.stdout + out.stderr[-2000:]
