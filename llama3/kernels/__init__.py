"""Native CPU kernels (cpu_kernels.cpp, amx_attention.cpp), built on first use: weight-only
int8/int4 products, decode-time attention (contiguous cache and paged pool), whole int8 decoder
layers and prompts' attention on AMX tiles.

The source is compiled once per (source, torch version, compiler flags, CPU) with the system C++
compiler against PyTorch's headers, for the CPU at hand (AVX2 + FMA; the int8 products use
AVX-512 VNNI where the CPU has it), into `$LLAMA3_KERNEL_CACHE` (default
`~/.cache/llama3/kernels`), then loaded as the torch ops `llama3_kernels::int8_mm`, `int4_mm`,
`decode_attention`, `paged_decode_attention`, `decode_layers`, `paged_decode_layers` (a whole
decode step: every layer and the head); for prompts' bfloat16 products (`quant.bf16_rows`)
`scale_columns` (outputs widened and scaled per column), `swiglu_bf16` (a fused w1/w3's SwiGLU in
bfloat16), `int8_rows_bf16` / `int4_rows_bf16` (int8 codes, int4 rows to bfloat16),
`rms_norm_bf16` (a residual add and RMSNorm whose bfloat16 output feeds them) and, on CPUs with
AMX tiles, `amx_attention` (amx_attention.cpp: their causal attention); and `rms_norm`, `rope`
and `argmax_rows` for float32 rows.
Every failure falls back to the portable PyTorch paths with one logged reason: no AVX2/FMA, no
compiler, a failed build. `LLAMA3_KERNELS=0` turns the kernels off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: compiled together into one library: the int8/int4 products, decode steps and passes, and the
#: prompts' attention on AMX tiles (empty where the build has no AMX)
SOURCES = [Path(__file__).with_name(name) for name in ("cpu_kernels.cpp", "amx_attention.cpp")]
#: what they include: part of the build's cache key
HEADERS = [Path(__file__).with_name("simd512.h")]
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-shared", "-std=c++20", "-w"]


def _march() -> str:
    """The target: by default the machine that builds them, so AVX-512 VNNI paths switch on where
    present; `LLAMA3_KERNELS_MARCH=haswell` builds the AVX2-only kernels anywhere (tests use it)."""
    return "-march=" + os.environ.get("LLAMA3_KERNELS_MARCH", "native")


def cache_dir() -> Path:
    base = os.environ.get("LLAMA3_KERNEL_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "llama3" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


def _why_not() -> str | None:
    """Why the kernels cannot run here, or None."""
    if os.environ.get("LLAMA3_KERNELS", "1") == "0":
        return "LLAMA3_KERNELS=0"
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"they are written for x86-64 Linux, not {sys.platform} {platform.machine()}"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "this CPU lacks AVX2/FMA"
    if _compiler() is None:
        return "no C++ compiler found (install g++)"
    return None


def _build(target: Path) -> None:
    torch_dir = Path(torch.__file__).parent
    from torch.utils.cpp_extension import include_paths

    cmd = [_compiler(), *_FLAGS, _march(), *map(str, SOURCES)]
    cmd += [f"-I{p}" for p in include_paths()]
    cmd += [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    lib = torch_dir / "lib"
    cmd += [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu"]
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: processes building at once (tensor-parallel
    # ranks) never load a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        # a warning, not info: the CLI shows warnings, and a silent 15 s pause looks like a hang
        log.warning(
            "building native kernels for this CPU (%s; once, ~15-60 s) in %s", isa(), target.parent
        )
        done = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr.strip()[-2000:] or f"{cmd[0]} failed")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def cpu_flags() -> str:
    """The CPU's feature flags (`/proc/cpuinfo`'s flags line; empty where there is none). Part of
    the build's cache key: a cache shared by machines of different CPUs (a network home) keeps one
    build per instruction set, since -march=native ties a build to its CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return ""


def _library_path() -> Path:
    key = hashlib.sha256()
    for source in SOURCES + HEADERS:
        key.update(source.read_bytes())
    key.update(" ".join([torch.__version__, *_FLAGS, _march(), cpu_flags()]).encode())
    return cache_dir() / f"llama3_kernels-{key.hexdigest()[:16]}.so"


_lock = threading.Lock()
_UNSET = object()
#: None once loaded, the reason they are off, or _UNSET before the first `_load`
_state: object = _UNSET


def _load() -> str | None:
    """Build (if needed) and load the kernels, once per process; None on success, else why not.
    Thread-safe: a load's background build (`prepare`) and a layer asking meanwhile share one
    build."""
    global _state
    if _state is not _UNSET:
        return _state  # type: ignore[return-value]
    with _lock:
        if _state is _UNSET:
            _state = _build_and_load()
    return _state  # type: ignore[return-value]


def _build_and_load() -> str | None:
    why = _why_not()
    if why is not None:
        # said once, as a warning unless the user turned them off themselves
        say = log.info if why.startswith("LLAMA3_KERNELS=0") else log.warning
        say("native CPU kernels off (%s): the portable PyTorch paths run instead", why)
        return why
    try:
        path = _library_path()
        if not path.exists():
            _build(path)
        torch.ops.load_library(str(path))
        _register_fakes()
    except Exception as e:  # any failure leaves the portable path, never a broken run
        why = f"building them failed: {e}"
        log.warning("native CPU kernels off (%s): int8/int4 products run slower paths", why)
        return why
    return None


def prepare() -> threading.Thread | None:
    """Build and load the kernels on a background thread (a model load overlaps it); None when
    they are loaded or known to be off. Join the thread before the first product."""
    if _state is not _UNSET:
        return None
    t = threading.Thread(target=_load, name="llama3-kernels-build", daemon=True)
    t.start()
    return t


def int4_q8() -> bool:
    """Whether group-32 int4 products (GGUF Q4_0/Q4_1/Q4_K) quantize activations to int8 per
    32-element block (llama.cpp's Q8_1; error half a step of each block's int8 grid): the build
    without AVX-512 VNNI does with `LLAMA3_INT4_Q8=1`; by default every row keeps its int16 grid.
    Mirrors the kernel's own choice, which it reads once per process."""
    return "VNNI" not in isa() and os.environ.get("LLAMA3_INT4_Q8") == "1"


def isa() -> str:
    """The instruction sets a build here uses (from the target and this CPU's flags)."""
    flags = set(cpu_flags().split())
    if os.environ.get("LLAMA3_KERNELS_MARCH", "native") != "native":
        march = os.environ["LLAMA3_KERNELS_MARCH"]
        return f"AVX2 + FMA (-march={march})" if march == "haswell" else f"-march={march}"
    parts = ["AVX2 + FMA"]
    if {"avx512f", "avx512bw", "avx512dq", "avx512_vnni"} <= flags:
        parts = ["AVX-512 + VNNI"]
    elif "avx512f" in flags:
        parts = ["AVX-512"]
    if "avx512_bf16" in flags:
        parts.append("bf16")
    if {"amx_tile", "amx_bf16"} <= flags:
        parts.append("AMX")
    return " + ".join(parts)


def status() -> dict[str, object]:
    """Whether the kernels are built (without building them): for `llama3 inspect`."""
    why = _state if isinstance(_state, str) else _why_not()
    if why is not None:
        return {"state": "off", "reason": why, "isa": None, "path": None}
    path = _library_path()
    built = _state is None or path.exists()
    return {
        "state": "built" if built else "not built",
        "reason": None,
        "isa": isa(),
        "path": str(path),
    }


def _register_fakes() -> None:
    """Output shapes for torch.compile's tracing."""

    @torch.library.register_fake("llama3_kernels::int8_mm")
    def _(x, codes, scale):
        return x.new_empty(x.shape[0], codes.shape[0])

    @torch.library.register_fake("llama3_kernels::int4_mm")
    def _(x, packed, scale, zero, group):
        return x.new_empty(x.shape[0], packed.shape[0])

    @torch.library.register_fake("llama3_kernels::decode_attention")
    def _(q, k, v, pos, scale):
        return q.new_empty(q.shape)

    @torch.library.register_fake("llama3_kernels::paged_decode_attention")
    def _(q, k, v, slots, lengths, scale):
        return q.new_empty(q.shape)

    def stack_out(tokens, embedding, head):  # hidden states, or logits ending in the head
        width = head[1].shape[0] if head else embedding[0].shape[1]
        return torch.empty(tokens.numel(), width, dtype=torch.float32, device=tokens.device)

    @torch.library.register_fake("llama3_kernels::decode_layers")
    def _(tokens, embedding, *args):
        return stack_out(tokens, embedding, args[-1])

    @torch.library.register_fake("llama3_kernels::paged_decode_layers")
    def _(tokens, embedding, *args):
        return stack_out(tokens, embedding, args[-1])

    @torch.library.register_fake("llama3_kernels::rms_norm")
    def _(x, weight, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("llama3_kernels::rms_norm_bf16")
    def _(x, residual, weight, eps):
        return torch.empty_like(x), torch.empty_like(x, dtype=torch.bfloat16)

    @torch.library.register_fake("llama3_kernels::rope")
    def _(x, cos, sin):
        return x.new_empty(x.shape)

    @torch.library.register_fake("llama3_kernels::amx_attention")
    def _(q, k, v, scale):
        b, h, lq, d = q.shape
        return q.new_empty(b, lq, h, d, dtype=torch.float32)

    @torch.library.register_fake("llama3_kernels::argmax_rows")
    def _(x):
        return x.new_empty(x.shape[0], dtype=torch.long)


def native_elementwise(*tensors: torch.Tensor) -> bool:
    """Whether `rms_norm`, `rope` and `argmax_rows` can take these tensors: float32 on the CPU,
    nothing that autograd must follow (the ops have no backward), not while torch.compile traces (Inductor
    fuses the PyTorch version itself), the kernels loaded."""
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32:
            return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not torch.compiler.is_compiling() and available()


@functools.cache
def has_amx() -> bool:
    """Whether the kernels run on AMX tiles here: built for a CPU with them (not the AVX2-only
    build) and granted the tiles' state by the kernel (Linux 5.16+)."""
    return available() and bool(torch.ops.llama3_kernels.has_amx())


def amx_attention_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether bfloat16 queries `q` (B, H, Lq, hd) over keys `k` and values `v` can take
    `llama3_kernels::amx_attention`: CPU tensors with contiguous rows, head_dim 64/128/192/256,
    nothing that autograd must follow (the op has no backward), not while torch.compile traces,
    AMX here."""
    if q.dtype != torch.bfloat16 or any(t.device.type != "cpu" for t in (q, k, v)):
        return False
    if q.shape[-1] % 64 or q.shape[-1] > 256 or any(t.stride(-1) != 1 for t in (q, k, v)):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return False
    return not torch.compiler.is_compiling() and has_amx()


def native_attention(cache: torch.Tensor) -> bool:
    """Whether attention over `cache` (a key cache or pool tensor) can run natively: float32
    on the CPU, head_dim a multiple of 8, the kernels loaded."""
    if cache.device.type != "cpu" or cache.dtype != torch.float32 or cache.shape[-1] % 8:
        return False
    return available()


def available() -> bool:
    """Whether the native kernels are loaded (building them on the first call)."""
    return _load() is None


def unavailable_reason() -> str | None:
    return _load()
