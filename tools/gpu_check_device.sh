#!/usr/bin/env bash
# gpu-check on a lent GPU machine (the device tool's `run`), prepared on the CPU here.
#
# Here, first:  make gpu-pack
#               KEEP=engines/hemoseg_mnv2_v7.onnx tools/gpu_stage.sh out
# Then:         run(command="bash tools/gpu_check_device.sh", carry=[".gpu/check", ".gpu/wheels"],
#                   timeout_s=480)
#               tools/gpu_stage.sh back
# Back here: gpu_check.log.
#
# `make gpu-check` builds the project's venv, which cannot be done there (nothing can be
# fetched); the machine's Python 3.12 has numpy, OpenCV, ONNX Runtime, pytest, CuPy and nvcc,
# so tools/gpu_check.py runs on it directly with simplejpeg from .gpu/wheels and a few
# photographs in .gpu/check as HEMOSEG_DATA. It proves what CuPy can: the CUDA kernel against
# the CPU reference (the gpu tests, the kernel check on every carried photograph at 560 x 576
# and v7's 1440 x 1472) and its speed. TensorRT and pycuda are not on that machine: the trt
# check and the TensorRT tests report NOT RUN / skip, with the reason.
#
# What has run: the dry run and the GPU tests' collection under Python 3.11 on the CPU here,
# with the same packages. Not yet run on a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -f .gpu/check/hemoseg_preprocess.fatbin ] || {
    echo "gpu_check_device: no .gpu/check (make gpu-pack here first)" >&2
    exit 2
}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/hemoseg-site .gpu/wheels/simplejpeg-*.whl || exit 3
export PYTHONPATH=/tmp/hemoseg-site:$PWD PYTHONUNBUFFERED=1
export HEMOSEG_DATA=$PWD/.gpu/check HEMOSEG_CUDA_FATBIN=$PWD/.gpu/check/hemoseg_preprocess.fatbin
"$PY" tools/gpu_check.py --checks tests,kernel,speed,trt --rounds 50 ${GPU_CHECK_ARGS:-} 2>&1 |
    tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
