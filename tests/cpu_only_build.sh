#!/usr/bin/env bash
# Build the CPU-only variant (FORCE_ONLY_CPU=1) into build/cpu-only, next to the
# installed (CUDA) build, and test it there: the package must import and work, CPU
# tensors use the CPU kernels, and CUDA tensors get the "built without CUDA" error.
set -euo pipefail
PY_ARG="${1:-.venv/bin/python}"
PY="$(cd "$(dirname "$PY_ARG")" && pwd)/$(basename "$PY_ARG")"  # absolute, not resolved: keep the venv
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/build/cpu-only"
cd "$ROOT"
FORCE_ONLY_CPU=1 "$PY" setup.py --quiet build_ext --build-lib "$OUT/lib"
cp rollconv/*.py "$OUT/lib/rollconv/"
cd "$OUT"  # so that the source tree's rollconv (the CUDA build) is not importable
export PYTHONPATH="$OUT/lib"
"$PY" - <<'PYEOF'
import pytest
import torch

import rollconv
import rollconv.functional as RF

assert rollconv.__file__.startswith(__import__("os").environ["PYTHONPATH"]), rollconv.__file__
assert not rollconv._C.with_cuda and rollconv._C.cuda_archs == ""
x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
torch.testing.assert_close(RF.conv2d(x, w), torch.nn.functional.conv2d(x, w))
# Call the CUDA kernel directly (no GPU needed): the stub must say how to rebuild.
op = torch.ops.rollconv.conv2d_forward.default
with pytest.raises(RuntimeError, match="built without CUDA kernels.*FORCE_CUDA=1"):
    op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), x, w, None, [1, 1], [0, 0], [1, 1], 1)
print("CPU-only build: imports, computes on CPU, explains CUDA")
PYEOF
"$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_roll_conv.py" "$ROOT/tests/test_cuda.py" -k "not random_configs"
