"""`make gpu-check`: the parts that run without a GPU (the benchmark's code on the CPU, the
preflight's refusals)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu_check  # noqa: E402

no_gpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the no-GPU refusal cannot be seen")


def test_the_benchmark_runs_on_the_cpu(tmp_path, capsys):
    log = tmp_path / "pytest.log"
    log.write_text("....\n12 passed, 3 skipped, 40 deselected in 4.20s\n")
    out = tmp_path / "results.md"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "--tests-log", str(log), "--tests-rc", "0"]) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    assert "12 passed, 3 skipped, 40 deselected in 4.20s (exit status 0)" in text
    summary = printed[: printed.index("\nwrote ")].strip()
    assert summary.startswith("| case |") and summary in text, "one table, printed and written"
    data = json.loads(re.search(r"```json\n(.*)\n```", text, re.S).group(1))
    rows = data["rows"]
    expected = {f"roll_conv2d {a}" for a in gpu_check.ROLL_ALGORITHMS} | {"filter bank (torch, cpu)", "rollconv conv2d", "conv2d (torch, cpu)"}
    for precision in gpu_check.PRECISIONS:
        assert {r["candidate"] for r in rows if r["precision"] == precision} == expected
    for row in rows:
        if "error" in row:  # a candidate that does not support this precision says why
            assert row["candidate"] == "roll_conv2d fft" and row["precision"] != "float32", row
            continue
        assert row["ms"] > 0 and len(row["samples"]) == 3 and row["ratio"] > 0
        assert row["rel_err"] < (1e-5 if row["precision"] == "float32" else 2e-2), row
    auto = [r for r in rows if r["candidate"] == "roll_conv2d auto"]
    assert all(re.fullmatch(r"ran (direct|bank|fft)", r["note"]) for r in auto)
    assert data["facts"]["device"] == "cpu" and data["facts"]["torch"] == torch.__version__


def test_a_wrong_result_fails_the_benchmark(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "roll_cases", lambda quick: [(2, 4, 2, 6)])
    monkeypatch.setattr(gpu_check, "conv_cases", lambda quick: [])
    # every candidate 50% off its baseline (the baseline itself is exact)
    monkeypatch.setattr(gpu_check, "_relative_error", lambda y, ref: 0.0 if y is ref else 0.5)
    out = tmp_path / "results.md"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 1
    assert "WRONG: rel. err above" in out.read_text()
    assert "gpu-check: wrong result: roll_conv2d" in capsys.readouterr().err


def test_minimum_torch_is_pyprojects():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert f'"torch>={gpu_check.minimum_torch()}"' in f.read()
    from torch.torch_version import TorchVersion

    assert TorchVersion(torch.__version__) >= gpu_check.minimum_torch()
    with pytest.raises(SystemExit, match=r"torch .* is older than 999\.0, the oldest torch rollconv builds with"):
        gpu_check.preflight(minimum="999.0")


@no_gpu_only
def test_without_a_gpu_the_check_refuses_clearly():
    with pytest.raises(SystemExit, match="no CUDA GPU is visible"):
        gpu_check.preflight()
    assert gpu_check.main(["--device", "cuda"]) == 2
    done = subprocess.run(["bash", os.path.join(ROOT, "tests", "gpu_check.sh"), sys.executable],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "gpu-check: no CUDA GPU is visible" in done.stderr, done.stderr
    assert done.returncode == 2 and "built in" not in done.stderr, "it stops before the build"
