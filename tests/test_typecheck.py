"""mypy over the GPU-only modules against tensorrt-stubs (``mypy.ini``): they cannot run here, so
the type check is what guards their use of the TensorRT API."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO

STUBS = REPO / ".typings" / "tensorrt" / "__init__.pyi"
CHECKED = (
    "hemoseg_edge/backends/tensorrt.py",
    "hemoseg_edge/build/trt_engine.py",
    "hemoseg_edge/cuda/gpu.py",
)


def _mypy(*files: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy not installed (the [dev] extra)")
    if not STUBS.is_file():
        pytest.skip("tensorrt-stubs not installed: python tools/install_trt_stubs.py")
    cmd = [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", *files]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_tensorrt_modules_type_check_clean():
    p = _mypy(*CHECKED)
    assert p.returncode == 0, p.stdout + p.stderr


def test_misspelt_tensorrt_call_is_reported(tmp_path):
    """The check is not vacuous: the stubs are found and a wrong API name fails."""
    bad = tmp_path / "bad_trt.py"
    bad.write_text(
        "import tensorrt as trt\n\n\n"
        "def run(context: trt.IExecutionContext, stream: int) -> None:\n"
        "    context.execute_async_v4(stream)\n"
    )
    p = _mypy(str(bad))
    assert p.returncode == 1
    assert 'has no attribute "execute_async_v4"' in p.stdout
