"""The preprocessing kernel (``preprocess_kernel.cu``) and its runners.

``preprocess_kernel.cu`` mirrors :mod:`hemoseg_edge.preprocess` (crop box, green channel, exact
area resampling, /255) for one frame. It is built by the top-level ``CMakeLists.txt``:

* ``build/libhemoseg_preprocess_host.so``: the same source compiled as C++; :mod:`.host` loads it
  with ctypes (tests compare it with the NumPy reference on every shared image).
* ``build/hemoseg_preprocess.fatbin``: sm_87 (Jetson Orin), sm_90 and compute_90 PTX, when nvcc
  exists; :mod:`.gpu` (pycuda) runs it, writing straight into a TensorRT input binding (the
  TensorRT backend's ``run_frame``); :mod:`.cupy_gpu` runs the same kernel through CuPy, for
  checks on machines where pycuda cannot be built (``tools/gpu_check.py``, the ``gpu`` tests).

No submodule is imported here: ``host`` needs the built library, ``gpu`` pycuda, ``cupy_gpu``
CuPy (each imports its runtime only when used).
"""

from __future__ import annotations

from pathlib import Path

CUDA_DIR = Path(__file__).resolve().parent
KERNEL_SOURCE = CUDA_DIR / "preprocess_kernel.cu"
REPO_ROOT = CUDA_DIR.parent.parent
BUILD_DIR = REPO_ROOT / "build"
KERNEL_NAME = "hemoseg_preprocess"
ABI_VERSION = 1  # must equal HEMOSEG_PREPROCESS_ABI in preprocess_kernel.cu

__all__ = ["ABI_VERSION", "BUILD_DIR", "CUDA_DIR", "KERNEL_NAME", "KERNEL_SOURCE", "REPO_ROOT"]
