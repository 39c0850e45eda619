"""Structured logging: one ``key=value`` line per event on stderr, never a traceback."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings

_LOCK = threading.Lock()


def _value(v: object) -> str:
    s = str(v)
    if s and not any(c in ' "=\\' or ord(c) < 32 or c == "\x7f" for c in s):
        return s
    return json.dumps(s, ensure_ascii=False)


def log(event: str, level: str = "info", **fields: object) -> None:
    """Write ``ts=... level=... event=... k=v ...`` as one line (values quoted when needed)."""
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    parts = [f"ts={ts}", f"level={level}", f"event={event}"]
    parts += [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
    data = (" ".join(parts) + "\n").encode("utf-8", "backslashreplace")
    with _LOCK:
        buf = getattr(sys.stderr, "buffer", None)
        if buf is not None:
            sys.stderr.flush()
            buf.write(data)
            buf.flush()
        else:
            sys.stderr.write(data.decode("utf-8"))
            sys.stderr.flush()


class _Handler(logging.Handler):
    """Library log records (pynetdicom, watchdog) as one line each, without tracebacks."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must not take the service down
            msg = str(record.msg)
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        log("library", record.levelname.lower(), logger=record.name, msg=msg, error_type=exc)


def install_hooks() -> None:
    """Route warnings, uncaught thread exceptions and library logging through ``log``."""

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        log("warning", "warning", category=category.__name__, msg=message)

    def excepthook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        log(
            "thread_error",
            "error",
            thread=name,
            error_type=args.exc_type.__name__,
            msg=args.exc_value,
        )

    warnings.showwarning = showwarning
    threading.excepthook = excepthook
    # pydicom logs decoder failures that our own event=failed line already reports
    for name, level in (
        ("pynetdicom", "WARNING"),
        ("watchdog", "WARNING"),
        ("pydicom", "CRITICAL"),
    ):
        lg = logging.getLogger(name)
        lg.handlers[:] = [_Handler()]
        lg.setLevel(level)
        lg.propagate = False
