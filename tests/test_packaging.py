"""Packaging: triton_kernels/ ships as fasttx.triton_kernels and never as a top-level package."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_import_names(tmp_path):
    code = (
        "import importlib.util, fasttx.triton_kernels.layer_norm, fasttx.benchmarks.norms;"
        "assert importlib.util.find_spec('triton_kernels') is None, 'top-level triton_kernels is visible'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_wheel_contents(tmp_path):
    env = dict(os.environ, FASTTX_BUILD_CUDA="0")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path), ROOT],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "fasttx/triton_kernels/layer_norm.py" in names
    assert "fasttx/benchmarks/norms.py" in names
    assert "fasttx/reference/layer_norm.py" in names
    assert "fasttx/_build.py" in names and "fasttx/_attention_kernels.py" in names  # the first-use build's
    assert not [n for n in names if n.startswith(("triton_kernels/", "benchmarks/", "tests/"))]


def _setup_py(**env):
    # CUDA_HOME pointing nowhere hides nvcc from torch.utils.cpp_extension and from setup.py.
    env = dict(os.environ, CUDA_HOME=str(env.pop("cuda_home")), **env)
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_without_nvcc_install_says_so_and_goes_on(tmp_path):
    result = _setup_py(cuda_home=tmp_path, FASTTX_BUILD_CUDA="auto")
    assert result.returncode == 0, result.stderr
    assert "fasttx: not building the CUDA extension fasttx._C: nvcc was not found" in result.stderr


def test_forced_cuda_build_without_nvcc_fails_loudly(tmp_path):
    result = _setup_py(cuda_home=tmp_path, FASTTX_BUILD_CUDA="1")
    assert result.returncode != 0
    assert "FASTTX_BUILD_CUDA=1 but the CUDA extension cannot be built: nvcc was not found" in result.stderr
