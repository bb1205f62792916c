"""The package as a user gets it: what an isolated `pip install .` says, the release
build's size (no debug info), and `python -m rollconv bench`."""
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import venv

import pytest

import rollconv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_isolated_build_without_torch_says_what_to_do(tmp_path):
    """pip's isolated build runs setup.py (through the PEP 517 hook get_requires_for_build_wheel)
    in an environment that has setuptools but no torch: it must stop with one line telling to
    install torch first and to build with --no-build-isolation, not a traceback."""
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # setuptools alone (what the isolated environment holds), taken from this interpreter.
    tools = tmp_path / "build-requirements"
    tools.mkdir()
    for name in ("setuptools", "pkg_resources", "_distutils_hack"):
        spec = importlib.util.find_spec(name)
        if spec is not None:
            os.symlink(os.path.dirname(spec.origin), tools / name)
    with open(os.path.join(site, "build-requirements.pth"), "w") as f:
        f.write(f"{tools}\n")
    hook = "from setuptools import build_meta; build_meta.get_requires_for_build_wheel()"
    result = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert result.returncode != 0, "the environment must lack torch"
    result = subprocess.run([python, "-c", hook], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert "install torch first" in lines[0] and "pip install --no-build-isolation ." in lines[0]


@pytest.mark.slow
def test_pip_install_with_build_isolation_says_what_to_do(tmp_path):
    """The real command, `pip install .` with pip's default build isolation, on a copy of the
    sources (pip fetches setuptools into the isolated environment: needs its package index)."""
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), tmp_path)
    for name in ("rollconv", "csrc"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--dry-run", "."], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    if "Installing build dependencies: finished with status 'error'" in output:
        pytest.skip("pip could not install setuptools into the isolated build environment (no package index)")
    assert result.returncode != 0
    assert "install torch first, then build against it with `pip install --no-build-isolation .`" in output, output
    assert "Traceback" not in output and "ModuleNotFoundError" not in output, output


def test_release_build_carries_no_debug_info():
    """Release builds compile with -g0 and link with --strip-debug (DEBUG=1 keeps -g)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("needs readelf (binutils)")
    if rollconv._C.debug:
        pytest.skip("this is a DEBUG=1 build")
    sections = subprocess.run([readelf, "-S", "-W", rollconv._C.__file__], capture_output=True, text=True, check=True)
    assert ".debug_info" not in sections.stdout
    assert ".dynsym" in sections.stdout


def test_bench_command_runs_tiny_cases():
    """`python -m rollconv bench` end to end, with every case shrunk to one 8x8 image."""
    result = subprocess.run(
        [sys.executable, "-m", "rollconv", "bench", "--quick", "--batch", "1", "--size", "8", "--rounds", "1",
         "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ratio = baseline time / rollconv time" in out
    for case in ("conv2d N=1 64->64 3x3 s1 p1 @8x8", "roll_conv2d C=4 F=64", "roll_conv2d C=64 F=4"):
        assert case in out, out
    assert out.count("forward+backward: rollconv") == 3
    if platform.libc_ver()[0] == "glibc":  # the run fixes glibc malloc's thresholds (benchmark.fix_malloc_thresholds)
        assert "malloc: glibc, mmap threshold 32 MiB and trim threshold 1 GiB, fixed" in out, out


def test_bench_options_select_cases(capsys):
    from rollconv import __main__ as cli

    # (--malloc adaptive: the fixed thresholds would stay set in this test process)
    assert cli.main(["rollconv", "bench", "--only", "max_pool2d", "--batch", "1", "--size", "6", "--rounds", "1",
                     "--malloc", "adaptive"]) == 0
    out = capsys.readouterr().out
    assert "max_pool2d N=1 C=64 @6x6" in out and "roll_conv2d" not in out
    assert "malloc: adaptive (the C library's defaults)" in out
    assert cli.main(["rollconv", "frobnicate"]) == 2
