"""OpenVINO backend (CPU): reads the same ONNX bytes as ONNX Runtime, including Q/DQ INT8 models
(OpenVINO's low-precision transformations run them as int8).

Precision: ``"auto"`` asks for bf16 where the CPU computes it natively (AMX or AVX512-BF16),
else f32; ``providers`` reports what ran, e.g. ``["CPU:bf16"]``. Compiled models are cached
under ``~/.cache/hemoseg-edge/ov_cache`` (or ``$HEMOSEG_OV_CACHE``; ``cache_dir=""`` or an
empty ``$HEMOSEG_OV_CACHE`` turns caching off).

Latency (default): one inference request using every core. ``throughput=True``: OpenVINO's
THROUGHPUT hint (on 2 cores: 2 streams of 1 thread) and one request per stream; ``run`` may then
be called from that many threads at once (``concurrency``). Streams need no barrier between
cores, so other work (decoding, postprocessing) slows one stream instead of stalling both.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..cpu import BF16_FLAGS, cpu_flags
from ..errors import BackendUnavailableError, ModelError, install_hint
from .base import Backend, InputSpec, raise_if_allocation_failure

_ALIASES = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}


def choose_precision(
    requested: str = "auto",
    flags: Iterable[str] | None = None,
    capabilities: Iterable[str] = (),
) -> str:
    """OpenVINO ``INFERENCE_PRECISION_HINT`` ("f32", "bf16" or "f16") for ``requested``.

    ``"auto"``: bf16 when ``flags`` (``/proc/cpuinfo``) show AMX-BF16 or AVX512-BF16, else f32;
    without flags, bf16 when OpenVINO's ``OPTIMIZATION_CAPABILITIES`` list it, else f32.
    """
    req = requested.lower()
    if req == "auto":
        if flags is not None:
            return "bf16" if BF16_FLAGS & set(flags) else "f32"
        return "bf16" if "BF16" in set(capabilities) else "f32"
    if req not in _ALIASES:
        raise ValueError(f"unknown precision {requested!r}; use auto, fp32, bf16 or fp16")
    return _ALIASES[req]


CACHE_ENV = "HEMOSEG_OV_CACHE"


def default_cache_dir() -> Path | None:
    """``$HEMOSEG_OV_CACHE`` (empty: no cache), else ``~/.cache/hemoseg-edge/ov_cache``."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hemoseg-edge" / "ov_cache"


def _usable_dir(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path) if os.access(path, os.W_OK) else None


def _precision_name(compiled) -> str:
    """The precision as compiled ("bf16", "f32", "f16"); "int8+<that>" for int8 convolutions."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    conv = set()
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) == "Convolution":
                conv.add(info["runtimePrecision"].astype(str))
    except (RuntimeError, KeyError, AttributeError):  # pragma: no cover - older OpenVINO
        pass
    return f"int8+{name}" if conv & {"u8", "i8"} else name


def _init_numpy_bindings(ov) -> None:
    """Make OpenVINO's bindings initialise their numpy API on this thread, now.

    pybind11 initialises it lazily, in a ``std::call_once`` that waits for the GIL; when two
    inference threads make the first numpy conversion at once, one holds the GIL and waits for
    the guard while the other holds the guard and waits for the GIL: ``segment`` with several
    images hung for ever (seen 1 in 12 runs with two throughput streams, py-spy native dump).
    One conversion each way here, before any worker thread exists, takes the race away.
    """
    tensor = ov.Tensor(np.zeros((1,), np.float32))
    _ = tensor.data


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        model: bytes,
        source: str = "model",
        precision: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        threads: int = 0,
        throughput: bool = False,
        **_ignored,
    ):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError(
                f"OpenVINO backend needs the [openvino] extra: {install_hint('openvino')}"
            ) from None
        core = ov.Core()
        try:
            caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except RuntimeError:  # pragma: no cover - no CPU plugin
            raise BackendUnavailableError("OpenVINO has no CPU device on this machine") from None
        try:
            hint = choose_precision(precision, cpu_flags(), caps)
        except ValueError as e:
            raise BackendUnavailableError(str(e)) from None
        cache = default_cache_dir() if cache_dir is None else Path(cache_dir) if cache_dir else None
        cache_str = _usable_dir(cache) if cache is not None else None
        if cache_str:
            core.set_property({"CACHE_DIR": cache_str})
        mode = "THROUGHPUT" if throughput else "LATENCY"
        config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": mode}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            ov_model = core.read_model(bytes(model))
            self._compiled = core.compile_model(ov_model, "CPU", config)
        except (RuntimeError, ValueError, TypeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"{source}: OpenVINO cannot load the model ({msg[:200]})") from None
        self._spec = self._check_io(ov_model, source)
        self._precision = _precision_name(self._compiled)
        n = self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS") if throughput else 1
        self.concurrency = max(1, int(n))
        self._requests: queue.Queue = queue.Queue()
        for _ in range(self.concurrency):
            self._requests.put(self._compiled.create_infer_request())
        _init_numpy_bindings(ov)

    @staticmethod
    def _check_io(ov_model, source: str) -> InputSpec:
        if len(ov_model.inputs) != 1 or len(ov_model.outputs) != 1:
            raise ModelError(f"{source}: expected one input and one output")
        inp = ov_model.inputs[0]
        pshape = inp.get_partial_shape()
        shape = tuple(d.get_length() if d.is_static else -1 for d in pshape)
        if len(shape) != 4 or shape[1] != 1:
            raise ModelError(f"{source}: input shape {pshape} is not (N, 1, H, W)")
        if inp.get_element_type().get_type_name() != "f32":
            raise ModelError(f"{source}: input type {inp.get_element_type()} is not float32")
        return InputSpec(inp.get_any_name(), shape)

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def precision(self) -> str:
        """The inference precision OpenVINO reports ("f32", "bf16", "f16")."""
        return self._precision

    @property
    def providers(self) -> list[str]:
        streams = f":{self.concurrency}streams" if self.concurrency > 1 else ""
        return [f"CPU:{self._precision}{streams}"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = self._spec.shape[0]
        if n > 0 and batch.shape[0] != n:  # static batch: run image by image
            return np.concatenate([self.run(batch[i : i + 1]) for i in range(batch.shape[0])])
        if self._compiled is None:
            raise BackendUnavailableError("OpenVINO backend used after close()")
        request = self._requests.get()  # a free one; waits while all are busy
        try:
            request.infer({0: batch}, share_inputs=True)
            return request.get_output_tensor(0).data.copy()
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own
            raise_if_allocation_failure(e, self.name)
            raise
        finally:
            self._requests.put(request)

    def close(self) -> None:
        """Release the model; calls in flight finish, later ``run`` calls raise."""
        self._compiled = None
        self._requests = queue.Queue()
