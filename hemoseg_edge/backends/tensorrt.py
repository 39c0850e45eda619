"""TensorRT backend: runs a hemoseg engine file, or builds (and caches) one from an ONNX model.

**Not run on a GPU here.** Written against TensorRT's documented Python API (10.x, with nothing
that TensorRT 11 removed) and type-checked against tensorrt-stubs 10.13 (``mypy.ini``); no GPU
or TensorRT was available where it was written. The ``gpu``-marked tests exercise it on the
first machine that has both.

The I/O uses the named-tensor API (``num_io_tensors``, ``get_tensor_name``/``_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), feature-detected on the
engine, never by parsing version strings. Device buffers are allocated once, host buffers are
page-locked (pycuda ``pagelocked_empty``), and everything runs on one CUDA stream in the
device's primary context (the one TensorRT's runtime API uses).

Preprocessing on the GPU (``takes_frames``): ``Segmenter`` hands ``run_frame`` the decoded uint8
frame and the FOV box; the frame is uploaded once (through a page-locked staging buffer), the
CUDA kernel (``cuda.gpu.GpuPreprocessor``) writes the model input straight into the engine's
input binding, the engine runs, and only the probabilities come back; all on the one stream and
context. The kernel writes float32, so it needs an engine with a float32 input (the shipped FP32,
FP16 and INT8 models all have float32 I/O); any other input type is refused with one line.
``gpu_preprocess=False`` (or ``HEMOSEG_GPU_PREPROCESS=0``) keeps the CPU tensor path instead.
Not run on a GPU either. What has run: the kernel's arithmetic through its host build, the
``Segmenter`` side of the wiring with a CPU stand-in backend, and ``run_frame``'s calls and their
order with stand-ins for TensorRT and pycuda (``tests/test_device_preprocess.py``).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cuda.gpu import GpuPreprocessor
from ..cuda.host import CudaKernelError
from ..errors import BackendUnavailableError, ModelError
from ..model_file import engine_header
from .base import Backend, Box, InputSpec

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt


def require_tensorrt() -> str:
    """TensorRT's version; ``BackendUnavailableError`` when its Python package is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError(
            "TensorRT is not installed: on Jetson use JetPack's python3-libnvinfer "
            "(see docs/jetson.md)"
        ) from None
    if not hasattr(trt, "Builder"):  # e.g. only type stubs on the path: a namespace package
        raise BackendUnavailableError("the 'tensorrt' module found is not TensorRT's bindings")
    return str(trt.__version__)


def require_pycuda():
    """``pycuda.driver``, initialised; ``BackendUnavailableError`` when pycuda is missing."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise BackendUnavailableError(
            "the TensorRT backend needs pycuda: CUDA_ROOT=/usr/local/cuda pip install pycuda"
        ) from None
    try:
        cuda.init()
    except cuda.Error as e:
        raise BackendUnavailableError(f"CUDA is not usable: {e}") from None
    return cuda


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability as "major.minor") of CUDA device ``device``."""
    cuda = require_pycuda()
    if device >= cuda.Device.count():
        raise BackendUnavailableError(f"no CUDA device {device} (found {cuda.Device.count()})")
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return str(dev.name()), f"{major}.{minor}"


GPU_PREPROCESS_ENV = "HEMOSEG_GPU_PREPROCESS"


def gpu_preprocess_default() -> bool:
    """``$HEMOSEG_GPU_PREPROCESS``: "0" / "false" / "no" / "off" keep the CPU tensor path."""
    value = os.environ.get(GPU_PREPROCESS_ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def frame_input_problem(dtype: np.dtype) -> str | None:
    """Why the CUDA kernel (which writes float32) cannot fill an input binding of ``dtype``;
    None when it can."""
    if np.dtype(dtype) == np.float32:
        return None
    return (
        f"engine input is {np.dtype(dtype).name}, but the CUDA preprocessing kernel writes "
        f"float32: build the engine from an ONNX model with a float32 input, or set "
        f"{GPU_PREPROCESS_ENV}=0 (gpu_preprocess=False) to preprocess on the CPU"
    )


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def dims(d: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (indexing, which every TensorRT version supports)."""
    return tuple(int(d[i]) for i in range(len(d)))


class TensorRtBackend(Backend):
    """One engine, one execution context, one stream; static batch 1 (larger batches run image
    by image). ``model`` is an engine file's bytes (header + plan); ``Segmenter.from_engine``
    builds (and caches) one from an ONNX model with ``build.trt_engine.cached_engine``.

    ``gpu_preprocess`` (default: ``$HEMOSEG_GPU_PREPROCESS``, else True): load the CUDA
    preprocessing kernel and take frames (``run_frame``); a kernel that cannot load, or an
    engine input that is not float32, then fails here with one line. False: ``takes_frames`` is
    False and ``Segmenter`` feeds CPU-made tensors to ``run``. ``run`` works either way."""

    name = "tensorrt"
    takes_frames = True

    def __init__(
        self,
        model: bytes,
        source: str = "model",
        *,
        device: int = 0,
        gpu_preprocess: bool | None = None,
        **_: Any,
    ) -> None:
        trt_version = require_tensorrt()
        cuda = require_pycuda()
        gpu_name, cc = gpu_identity(device)
        if not engine_header.is_engine(model):
            raise ModelError(f"{source}: not a hemoseg engine file (build one: build-engine)")
        header, plan = engine_header.split(model, source)
        engine_header.check_compatible(header, trt_version, gpu_name, cc, source)
        self._cuda = cuda
        self._lock = threading.Lock()  # one stream, one set of buffers: one call at a time
        self._kernel: GpuPreprocessor | None = None
        self._ctx = cuda.Device(device).retain_primary_context()
        self._ctx.push()
        try:
            self._load(plan, source)
            self.version = f"TensorRT {trt_version} on {gpu_name} (sm {cc})"
            if gpu_preprocess is None:
                gpu_preprocess = gpu_preprocess_default()
            if gpu_preprocess:
                self._kernel = self._load_kernel(source)
            else:
                self.takes_frames = False
        except BaseException:
            self._ctx.pop()
            self.close()
            raise
        else:
            self._ctx.pop()

    def _load(self, plan: bytes, source: str) -> None:
        import tensorrt as trt

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelError(f"{source}: TensorRT cannot deserialize the engine plan")
        if not hasattr(engine, "num_io_tensors"):  # the pre-8.5 binding API is not supported
            raise ModelError(f"{source}: this TensorRT lacks the named-tensor API (need >= 8.5)")
        self._engine: trt.ICudaEngine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{source}: expected one input and one output, got {names}")
        self._in, self._out = inputs[0], outputs[0]
        in_shape = dims(engine.get_tensor_shape(self._in))
        if len(in_shape) != 4 or in_shape[1] != 1 or min(in_shape[2:]) <= 0:
            raise ModelError(f"{source}: input shape {in_shape} is not (N, 1, H, W)")
        shape = (1, 1, int(in_shape[2]), int(in_shape[3]))
        context = engine.create_execution_context()
        if context is None:
            raise ModelError(f"{source}: cannot create a TensorRT execution context")
        self._context: trt.IExecutionContext = context
        if not context.set_input_shape(self._in, shape):
            raise ModelError(f"{source}: engine does not accept input shape {shape}")
        out_shape = dims(context.get_tensor_shape(self._out))
        cuda = self._cuda
        self._host_in = cuda.pagelocked_empty(shape, self._dtype(self._in))
        self._host_out = cuda.pagelocked_empty(out_shape, self._dtype(self._out))
        self._dev_in = cuda.mem_alloc(self._host_in.nbytes)
        self._dev_out = cuda.mem_alloc(self._host_out.nbytes)
        self._stream = cuda.Stream()
        for name, buf in ((self._in, self._dev_in), (self._out, self._dev_out)):
            if not context.set_tensor_address(name, int(buf)):
                raise ModelError(f"{source}: cannot bind tensor {name!r}")
        self._spec = InputSpec(self._in, shape)
        self._source = source

    def _load_kernel(self, source: str) -> GpuPreprocessor:
        """The preprocessing kernel in this context (call with it pushed), after checking that
        it can fill the input binding."""
        problem = frame_input_problem(self._host_in.dtype)
        if problem:
            raise ModelError(f"{source}: {problem}")
        try:
            return GpuPreprocessor()
        except CudaKernelError as e:
            raise BackendUnavailableError(
                f"CUDA preprocessing kernel unavailable ({_one_line(e)}); build it with "
                f"'make build', or set {GPU_PREPROCESS_ENV}=0 to preprocess on the CPU"
            ) from None

    def _dtype(self, name: str) -> np.dtype:
        import tensorrt as trt

        return np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def providers(self) -> list[str]:
        kernel = self._kernel
        if kernel is None:
            return [self.version, "preprocess: CPU"]
        return [self.version, f"preprocess: CUDA kernel ({kernel.source.split(':', 1)[0]})"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self._spec.shape[1:]:
            raise ModelError(f"{self._source}: batch {batch.shape} != (N, *{self._spec.shape[1:]})")
        cuda, stream = self._cuda, self._stream
        out = []
        with self._lock:
            self._ctx.push()
            try:
                for i in range(batch.shape[0]):
                    np.copyto(self._host_in, batch[i : i + 1], casting="same_kind")
                    cuda.memcpy_htod_async(self._dev_in, self._host_in, stream)
                    out.append(self._execute())
            finally:
                self._ctx.pop()
        return np.concatenate(out)

    def run_frame(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """Frame + FOV box -> probabilities, preprocessing on the GPU: upload the frame once,
        the kernel writes the input binding (``self._dev_in``), execute, copy the output back.
        Not run on a GPU here (see the module docstring)."""
        kernel = self._kernel
        if kernel is None:
            raise ModelError(f"{self._source}: GPU preprocessing is off; use run(tensor)")
        problem = frame_input_problem(self._host_in.dtype)
        if problem:  # checked at load; kept here so a half buffer is never written as float32
            raise ModelError(f"{self._source}: {problem}")
        _, _, h, w = self._spec.shape
        with self._lock:
            self._ctx.push()
            try:
                kernel.run(frame, box, int(self._dev_in), (h, w), stream=self._stream)
                return self._execute()
            finally:
                self._ctx.pop()

    def _execute(self) -> np.ndarray:
        """Run the engine on the input binding as it stands (after this stream's earlier
        work), copy the output back, wait; a float32 copy of it (call with the context
        pushed and the lock held)."""
        stream = self._stream
        if not self._context.execute_async_v3(stream.handle):
            raise ModelError(f"{self._source}: TensorRT execution failed")
        self._cuda.memcpy_dtoh_async(self._host_out, self._dev_out, stream)
        stream.synchronize()
        return self._host_out.astype(np.float32)

    def close(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        ctx.push()
        try:
            kernel = self.__dict__.pop("_kernel", None)
            if kernel is not None:
                kernel.close()
            self._kernel = None
            for attr in ("_context", "_engine", "_runtime"):
                self.__dict__.pop(attr, None)
            for attr in ("_dev_in", "_dev_out"):
                buf = self.__dict__.pop(attr, None)
                if buf is not None:
                    buf.free()
        finally:
            ctx.pop()
            ctx.detach()
            self._ctx = None
