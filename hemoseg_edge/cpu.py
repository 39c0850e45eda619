"""What the host CPU can do, read once from ``/proc/cpuinfo`` (the only place that says it)."""

from __future__ import annotations

import functools

# native bf16 dot products: OpenVINO's bf16 hint and Keras' mixed_bfloat16 pay only with these
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# native int8 dot products: OpenVINO runs the INT8 Q/DQ model faster than FP32 only with these
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU feature flags (x86 ``flags``, Arm ``Features``); None where they cannot be read."""
    if path == "/proc/cpuinfo":
        return _host_flags()
    return _read_flags(path)


@functools.cache
def _host_flags() -> frozenset[str] | None:
    return _read_flags("/proc/cpuinfo")


def _read_flags(path: str) -> frozenset[str] | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    return bool(BF16_FLAGS & (flags if flags is not None else cpu_flags() or frozenset()))


def has_native_int8(flags: frozenset[str] | None = None) -> bool:
    return bool(INT8_FLAGS & (flags if flags is not None else cpu_flags() or frozenset()))
