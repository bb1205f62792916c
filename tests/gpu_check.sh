#!/usr/bin/env bash
# `make gpu-check PYTHON=python3`: on a machine with a CUDA GPU, with the Python that already
# has torch there (no virtual environment, no downloads):
#   1. preflight: torch new enough (pyproject.toml's torch>=X), a CUDA build of torch, a GPU
#      visible, the tests' modules importable, a CUDA toolkit (nvcc) and Python headers;
#   2. build rollconv for the visible GPUs' architectures only (TORCH_CUDA_ARCH_LIST from
#      torch.cuda.get_device_capability) into build/gpu-check/lib, leaving the source tree's
#      and any installed rollconv alone;
#   3. every CUDA test (pytest -m cuda: tests/test_cuda.py, the cuda parameter of the op
#      tests, the GPU tests of rollconv.backends) against that build;
#   4. the short GPU benchmark, bench/gpu_check.py: one summary table, and everything in
#      bench/results/gpu_check.md (the tests' summary included).
# Exits non-zero when a step fails (after the benchmark, if only the tests failed).
# Limits (seconds): GPU_CHECK_TEST_TIMEOUT (270), GPU_CHECK_BENCH_BUDGET (150).
set -uo pipefail
PY="${1:-python3}"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/build/gpu-check"
RESULTS="$ROOT/bench/results/gpu_check.md"
say() { echo "gpu-check: $*" >&2; }

command -v "$PY" >/dev/null 2>&1 || { say "no Python '$PY' (select one with: make gpu-check PYTHON=/path/to/python)"; exit 2; }
say "$("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>&1)"

# 1. Preflight (needs only torch: bench/gpu_check.py imports rollconv later).
ARCHS=$(cd "$ROOT" && "$PY" bench/gpu_check.py --preflight) || exit 2
# The build's and the test modules' imports (setuptools, pytest; numpy, hypothesis where a
# test module imports them).
MISSING=""
for mod in setuptools pytest numpy hypothesis; do
  if [ "$mod" = setuptools ] || [ "$mod" = pytest ] || grep -qE "^(import|from) $mod\b" "$ROOT"/tests/*.py; then
    "$PY" -c "import $mod" 2>/dev/null || MISSING="$MISSING $mod"
  fi
done
[ -z "$MISSING" ] || { say "not installed for $PY, needed to build or test:$MISSING"; exit 2; }
"$PY" -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
  || { say "Python.h is missing for $PY: install its development headers (e.g. python3-dev)"; exit 2; }
if [ -z "${CUDA_HOME:-}" ] && [ ! -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null 2>&1; then
  say "no CUDA toolkit found (no nvcc on PATH, no /usr/local/cuda): set CUDA_HOME to the toolkit's directory"
  exit 2
fi
"$PY" -c "import ninja" 2>/dev/null || command -v ninja >/dev/null 2>&1 || say "ninja not found: the build runs serially (slower)"
say "torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'), GPU architectures $ARCHS"

# 2. Build for these architectures only, into build/gpu-check/lib.
START=$SECONDS
rm -rf "$OUT/lib"
mkdir -p "$OUT"
(cd "$ROOT" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" setup.py --quiet build_ext --build-lib "$OUT/lib") > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log" >&2; say "the build failed (full log: $OUT/build.log)"; exit 1; }
cp "$ROOT"/rollconv/*.py "$OUT/lib/rollconv/"
say "built in $((SECONDS - START)) s"

cd "$OUT"  # so that the source tree's rollconv is not importable
export PYTHONPATH="$OUT/lib${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - "$OUT/lib" "$ARCHS" <<'PYEOF' || exit 1
import sys
import rollconv
lib, archs = sys.argv[1:]
assert rollconv.__file__.startswith(lib), f"imported {rollconv.__file__}, not the build in {lib}"
assert rollconv._C.with_cuda and rollconv._C.cuda_archs == archs, (rollconv._C.with_cuda, rollconv._C.cuda_archs)
rollconv.info(file=sys.stderr)
PYEOF

# 3. Every CUDA test.
START=$SECONDS
timeout "${GPU_CHECK_TEST_TIMEOUT:-270}" "$PY" -m pytest -q -p no:cacheprovider -m cuda -rfE "$ROOT/tests" 2>&1 | tee "$OUT/pytest.log"
TESTS_RC=${PIPESTATUS[0]}
say "CUDA tests: exit status $TESTS_RC in $((SECONDS - START)) s"

# 4. The benchmark.
START=$SECONDS
rm -f "$RESULTS"
"$PY" "$ROOT/bench/gpu_check.py" --device cuda --budget-s "${GPU_CHECK_BENCH_BUDGET:-150}" \
  --tests-log "$OUT/pytest.log" --tests-rc "$TESTS_RC" --out "$RESULTS"
BENCH_RC=$?
say "benchmark: exit status $BENCH_RC in $((SECONDS - START)) s"
[ -f "$RESULTS" ] && say "results (tests' summary, table, every sample): $RESULTS"
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
