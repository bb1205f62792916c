#!/usr/bin/env bash
# Build the emulated CUDA variant (ROLLCONV_EMULATE_CUDA=1) into build/emulated-cuda and
# test it there. In it csrc/cuda/primitives.cu is compiled by the host compiler (launches
# emulated: csrc/cuda/host_emulation.h) and its kernels serve CPU tensors in place of the
# CPU kernels, so every op on a CPU tensor takes the CUDA code path (CUDA's primitives, no
# CPU engine, ATen GEMMs and FFTs, float16/bfloat16 with float32 accumulation). The tests
# run are those marked `cuda`, whose CUDA device is the CPU in this build: the CUDA test
# cases (float64, float32, float16, bfloat16 against float64 references), and the op tests'
# randomized configurations and opchecks.
set -euo pipefail
PY_ARG="${1:-.venv/bin/python}"
PY="$(cd "$(dirname "$PY_ARG")" && pwd)/$(basename "$PY_ARG")"  # absolute, not resolved: keep the venv
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/build/emulated-cuda"
cd "$ROOT"
ROLLCONV_EMULATE_CUDA=1 "$PY" setup.py --quiet build_ext --build-lib "$OUT/lib"
cp rollconv/*.py "$OUT/lib/rollconv/"
cd "$OUT"  # so that the source tree's rollconv (another build) is not importable
export PYTHONPATH="$OUT/lib"
"$PY" -m rollconv info
"$PY" - <<'PYEOF'
import pytest
import torch

import rollconv

assert rollconv.__file__.startswith(__import__("os").environ["PYTHONPATH"]), rollconv.__file__
assert rollconv._C.emulated_cuda and not rollconv._C.with_cuda
# CPU tensors reach CUDA's kernel table: its dtype check names it.
with pytest.raises(RuntimeError, match="CUDA kernels support float32, float64, float16 and bfloat16"):
    torch.ops.rollconv.max_pool2d_forward(torch.zeros(1, 1, 4, 4, dtype=torch.int32), [2, 2], [2, 2], [0, 0], [1, 1], False)
print("emulated CUDA build: CPU tensors run the CUDA kernels")
PYEOF
"$PY" -m pytest -q -p no:cacheprovider -m cuda "$ROOT/tests/test_cuda.py" "$ROOT/tests/test_roll_conv.py" \
  "$ROOT/tests/test_conv2d.py" "$ROOT/tests/test_transpose_pool_lrn.py"
