"""ONNX Runtime backend: CPU execution provider everywhere; CUDA/TensorRT EPs when the installed
ONNX Runtime build offers them (``providers="auto"``)."""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError, ModelError
from .base import Backend, InputSpec, raise_if_allocation_failure

_GPU_EPS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        model: bytes,
        source: str = "model",
        providers: str | list[str] = "cpu",
        threads: int = 0,
    ):
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - base dependency
            raise BackendUnavailableError("onnxruntime is not installed") from None
        available = ort.get_available_providers()
        if providers == "auto":
            chosen = [p for p in _GPU_EPS if p in available] + ["CPUExecutionProvider"]
        elif providers == "cpu":
            chosen = ["CPUExecutionProvider"]
        else:
            chosen = list(providers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(model, sess_options=opts, providers=chosen)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(
                f"{source}: ONNX Runtime cannot load the model ({msg[:200]})"
            ) from None
        inp = self._session.get_inputs()
        if len(inp) != 1 or len(self._session.get_outputs()) != 1:
            raise ModelError(f"{source}: expected one input and one output")
        shape = tuple(d if isinstance(d, int) else -1 for d in inp[0].shape)
        if len(shape) != 4 or shape[1] != 1:
            raise ModelError(f"{source}: input shape {inp[0].shape} is not (N, 1, H, W)")
        if inp[0].type != "tensor(float)":
            raise ModelError(f"{source}: input type {inp[0].type} is not float32")
        self._spec = InputSpec(inp[0].name, shape)
        self._out = self._session.get_outputs()[0].name

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = self._spec.shape[0]
        if n > 0 and batch.shape[0] != n:  # static batch: run image by image
            return np.concatenate([self.run(batch[i : i + 1]) for i in range(batch.shape[0])])
        try:
            return self._session.run([self._out], {self._spec.name: batch})[0]
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise_if_allocation_failure(e, self.name)
            raise
