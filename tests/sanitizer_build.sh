#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer (gcc -fsanitize=address,undefined, every
# report fatal): the C++ tests, and a representative subset of the Python op tests against a
# sanitized CPU-only build of the extension in build/sanitize (not the installed package).
# Python is not instrumented: libasan is preloaded, leak detection is off (CPython and torch
# keep allocations alive at exit by design).
set -euo pipefail
PY_ARG="${1:-.venv/bin/python}"
PY="$(cd "$(dirname "$PY_ARG")" && pwd)/$(basename "$PY_ARG")"  # absolute, not resolved: keep the venv
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV_BIN="$(dirname "$PY")"
OUT="$ROOT/build/sanitize"
cd "$ROOT"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

# One sanitized build (CMake) of every source: the C++ tests, and the extension module
# linked from the same objects (ROLLCONV_PYTHON_MODULE).
"$VENV_BIN/cmake" -S . -B "$OUT/cmake" -G Ninja -DCMAKE_MAKE_PROGRAM="$VENV_BIN/ninja" -DROLLCONV_SANITIZE=ON \
  -DROLLCONV_PYTHON_MODULE=ON -DPython_EXECUTABLE="$PY" \
  -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" >/dev/null
"$VENV_BIN/cmake" --build "$OUT/cmake"
(cd "$OUT/cmake" && "$VENV_BIN/ctest" --output-on-failure)

# The package: the Python sources and that module (it finds librollconv_ops.so by its
# build-tree RUNPATH).
rm -rf "$OUT/lib" && mkdir -p "$OUT/lib/rollconv"
cp rollconv/*.py "$OUT/lib/rollconv/"
cp "$OUT"/cmake/_C.*.so "$OUT/lib/rollconv/"
cd "$OUT"  # so that the source tree's rollconv is not importable
export PYTHONPATH="$OUT/lib:$ROOT/tests"
# libstdc++ is preloaded too: ASan intercepts __cxa_throw only if it is loaded when ASan starts
# (Python itself does not link it), else the first C++ exception aborts.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ROLLCONV_PROPERTY_EXAMPLES=15
"$PY" -c 'import rollconv, os; assert rollconv.__file__.startswith(os.environ["PYTHONPATH"].split(":")[0]), rollconv.__file__'
"$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" \
  "$ROOT/tests/test_edge_inputs.py" "$ROOT/tests/test_properties.py" \
  "$ROOT/tests/test_transpose_pool_lrn.py" \
  "$ROOT/tests/test_roll_conv.py" \
  "$ROOT/tests/test_engine.py" -k "not compile and not export"
