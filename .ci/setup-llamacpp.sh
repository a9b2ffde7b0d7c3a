#!/usr/bin/env bash
# llama-cpp-python for tests/convert: the GGUF files `llama3 convert` writes must load in llama.cpp
# itself. pip builds llama.cpp from source the first time (~10 min on 2 cores) and keeps the wheel
# in ~/.cache/pip, so later installs take seconds. An installed copy is left alone.
set -euo pipefail
version="0.3.36"
if python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
  exit 0
fi
log=$(mktemp)
# Portable CPU flags (no -march=native), so the cached wheel runs on any x86-64 with AVX2.
if ! CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}" \
  pip install -q --disable-pip-version-check "llama-cpp-python==$version" >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
