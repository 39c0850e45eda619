"""Inference backends behind one small protocol (``base.Backend``), one file each.

``load_backend`` picks one by name; "auto" takes the best available for the file. Backends are
imported lazily so that a missing optional runtime (OpenVINO, TensorRT) costs nothing.
"""

from __future__ import annotations

from typing import Literal, get_args

from ..errors import BackendUnavailableError, HemosegError, install_hint
from .base import Backend, InputSpec

BackendName = Literal["auto", "onnxruntime", "openvino", "tensorrt"]
NAMES: tuple[str, ...] = get_args(BackendName)


def available() -> list[str]:
    """Backends whose runtime can be imported on this machine."""
    import importlib.util

    found = ["onnxruntime"] if importlib.util.find_spec("onnxruntime") else []
    if importlib.util.find_spec("openvino"):
        found.append("openvino")
    if importlib.util.find_spec("tensorrt"):
        found.append("tensorrt")
    return found


X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def auto_choice(found: list[str], machine: str | None = None) -> str:
    """What "auto" means for an ONNX model: OpenVINO on x86 where it is installed (several
    times faster than ONNX Runtime's CPU provider there), else ONNX Runtime."""
    import platform

    machine = (machine if machine is not None else platform.machine()).lower()
    return "openvino" if "openvino" in found and machine in X86_MACHINES else "onnxruntime"


def load_backend(
    name: BackendName | str,
    model: bytes,
    source: str = "model",
    throughput: bool = False,
    **kw,
) -> Backend:
    """``throughput``: tune for many images at once (OpenVINO streams that run in parallel,
    ``Backend.concurrency`` > 1) rather than for the latency of one."""
    if name not in NAMES:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose from {', '.join(NAMES)}")
    if name == "auto":
        name = auto_choice(available())
        if name == "openvino":  # the fast CPU path; ONNX Runtime stays the fallback
            try:
                from .openvino import OpenVinoBackend

                return OpenVinoBackend(model, source, throughput=throughput, **kw)
            except (ImportError, HemosegError):
                name = "onnxruntime"
                kw = {k: v for k, v in kw.items() if k in ("providers", "threads")}
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, source, **kw)
    if name == "openvino":
        try:
            from .openvino import OpenVinoBackend
        except ImportError:
            raise BackendUnavailableError(
                f"OpenVINO backend needs the [openvino] extra: {install_hint('openvino')}"
            ) from None
        return OpenVinoBackend(model, source, throughput=throughput, **kw)
    try:
        from .tensorrt import TensorRtBackend
    except ImportError:
        raise BackendUnavailableError(
            "TensorRT backend needs JetPack's TensorRT python package (not pip-installable here)"
        ) from None
    return TensorRtBackend(model, source, **kw)


__all__ = [
    "Backend",
    "BackendName",
    "InputSpec",
    "NAMES",
    "auto_choice",
    "available",
    "load_backend",
]
