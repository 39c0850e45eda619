"""The health file ``OUT_DIR/status.json``, rewritten atomically after every file."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ..files import atomic_write_bytes

STATUS_NAME = "status.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Status:
    """Counts since ``started_at`` plus totals (``done/`` and ``failed/`` as found at start)."""

    def __init__(self, folder: Path, done_total: int, failed_total: int, **info: object):
        self.path = folder / STATUS_NAME
        self._lock = threading.Lock()
        self.data: dict = {
            "state": "starting",
            "pid": os.getpid(),
            "started_at": _now(),
            "updated_at": _now(),
            "processed": 0,
            "flagged": 0,
            "failed": 0,
            "received": 0,
            "done_total": done_total,
            "failed_total": failed_total,
            "queue_depth": 0,
            "last_file": None,
            "last_error": None,
            **info,
        }

    def record(self, name: str, ok: bool, flagged: bool = False, reason: str = "") -> None:
        with self._lock:
            d = self.data
            d["last_file"] = name
            if ok:
                d["processed"] += 1
                d["done_total"] += 1
                d["flagged"] += int(flagged)
            else:
                d["failed"] += 1
                d["failed_total"] += 1
                d["last_error"] = {"file": name, "reason": reason, "at": _now()}

    def bump(self, key: str) -> None:
        with self._lock:
            self.data[key] += 1

    def write(self, **updates: object) -> None:
        with self._lock:
            self.data.update(updates, updated_at=_now())
            text = json.dumps(self.data, indent=2) + "\n"
            atomic_write_bytes(self.path, text.encode())


def read_status(out_dir: str | os.PathLike) -> dict:
    """The status file, plus ``alive``: the recorded pid runs on this machine (and state is
    ``running``). Raises ``OSError`` / ``ValueError`` when missing or unreadable."""
    data = json.loads((Path(out_dir) / STATUS_NAME).read_text())
    alive = False
    if data.get("state") == "running" and isinstance(data.get("pid"), int):
        try:
            os.kill(data["pid"], 0)
            alive = True
        except PermissionError:
            alive = True
        except OSError:
            alive = False
    data["alive"] = alive
    return data
