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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, ModelError
from ..model_file import engine_header
from .base import Backend, InputSpec

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


def dims(d: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (indexing, which every TensorRT version supports)."""
    return tuple(int(d[i]) for i in range(len(d)))


class TensorRtBackend(Backend):
    """One engine, one execution context, one stream; static batch 1 (larger batches run image
    by image). ``model`` is an engine file's bytes (header + plan); ``Segmenter.from_engine``
    builds (and caches) one from an ONNX model with ``build.trt_engine.cached_engine``."""

    name = "tensorrt"

    def __init__(
        self,
        model: bytes,
        source: str = "model",
        *,
        device: int = 0,
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
        self._ctx = cuda.Device(device).retain_primary_context()
        self._ctx.push()
        try:
            self._load(plan, source)
            self.version = f"TensorRT {trt_version} on {gpu_name} (sm {cc})"
        finally:
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

    def _dtype(self, name: str) -> np.dtype:
        import tensorrt as trt

        return np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def providers(self) -> list[str]:
        return [self.version]

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self._spec.shape[1:]:
            raise ModelError(f"{self._source}: batch {batch.shape} != (N, *{self._spec.shape[1:]})")
        cuda, stream = self._cuda, self._stream
        out = []
        self._ctx.push()
        try:
            for i in range(batch.shape[0]):
                np.copyto(self._host_in, batch[i : i + 1], casting="same_kind")
                cuda.memcpy_htod_async(self._dev_in, self._host_in, stream)
                if not self._context.execute_async_v3(stream.handle):
                    raise ModelError(f"{self._source}: TensorRT execution failed")
                cuda.memcpy_dtoh_async(self._host_out, self._dev_out, stream)
                stream.synchronize()
                out.append(self._host_out.astype(np.float32))
        finally:
            self._ctx.pop()
        return np.concatenate(out)

    def close(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        ctx.push()
        try:
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
