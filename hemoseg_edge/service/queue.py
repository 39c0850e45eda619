"""The one bounded processing queue and the processor that owns the (once loaded) model."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import HemosegError
from ..outputs import DicomOutputUnavailable, render_dicom_outputs, render_outputs
from .folders import result_stem
from .log import log


class WorkQueue:
    """Bounded FIFO of input names, each at most once (queued or in progress).

    The folder is the source of truth: when the queue is full an offer is refused and the name
    stays in ``IN_DIR``, where the next check or rescan offers it again.
    """

    def __init__(self, maxsize: int = 32):
        self.maxsize = max(1, maxsize)
        self._items: deque[str] = deque()
        self._members: set[str] = set()
        self._cond = threading.Condition()

    def offer(self, name: str) -> bool:
        with self._cond:
            if name in self._members:
                return True
            if len(self._items) >= self.maxsize:
                return False
            self._items.append(name)
            self._members.add(name)
            self._cond.notify()
            return True

    def get(self, timeout: float) -> str | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def done(self, name: str) -> None:
        with self._cond:
            self._members.discard(name)

    def __contains__(self, name: str) -> bool:
        with self._cond:
            return name in self._members

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass
class Outcome:
    """What one file gave: output files (name -> bytes) or a one-line reason; ``forward``:
    the DICOM objects among ``files`` (for the outbox)."""

    ok: bool
    files: dict[str, bytes] = field(default_factory=dict)
    forward: dict[str, bytes] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    reason: str = ""
    error_type: str = ""
    ms: float = 0.0


class Processor:
    """Runs decode -> segment -> render for one file in a worker thread, with a timeout.

    Python cannot kill a thread: a file that exceeds ``timeout`` is reported as failed
    ("timeout") and its thread is abandoned (a daemon; its late result is discarded). ``stuck``
    counts abandoned threads still running, so the service can exit for a supervisor restart.
    """

    def __init__(
        self,
        segmenter,
        timeout: float = 120.0,
        overlay_max_side: int = 2048,
        dicom_outputs: bool = True,
    ):
        self.seg = segmenter
        self.timeout = timeout
        self.overlay_max_side = overlay_max_side
        self.dicom_outputs = dicom_outputs
        self._abandoned: list[threading.Thread] = []
        self._dicom_unavailable_logged = False

    @property
    def stuck(self) -> int:
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        return len(self._abandoned)

    def run(self, path: Path, name: str) -> Outcome:
        box: list[Outcome] = []
        finished = threading.Event()

        def target() -> None:
            box.append(self.work(path, name))
            finished.set()

        t = threading.Thread(target=target, name=f"hemoseg-work:{name}", daemon=True)
        t0 = time.perf_counter()
        t.start()
        if finished.wait(self.timeout):
            return box[0]
        self._abandoned.append(t)
        return Outcome(
            ok=False,
            reason=f"timeout: {name} not processed within {self.timeout:g} s",
            error_type="Timeout",
            ms=1000 * (time.perf_counter() - t0),
        )

    def work(self, path: Path, name: str) -> Outcome:
        """Never raises: every problem becomes a failed ``Outcome`` with a one-line reason."""
        t0 = time.perf_counter()
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                reason = f"{name}: not a regular file"
                return Outcome(ok=False, reason=reason, error_type="InputImageError")
        except FileNotFoundError:
            pass  # the loader words it ("no such file", e.g. a dangling symlink)
        except OSError as e:  # symlink loop, I/O error
            reason = f"{name}: cannot read ({e.strerror or e})"
            return Outcome(ok=False, reason=reason, error_type="InputImageError")
        try:
            loaded = self.seg.load(path)
            t1 = time.perf_counter()
            result = self.seg.segment(loaded)
            result.timings_ms["decode"] = 1000 * (t1 - t0)
            extra: dict = {"input": name, "source": name}
            if loaded.metadata:
                extra["dicom"] = dict(loaded.metadata)
            stem = result_stem(name)  # photo.jpg -> photo.json, as ``segment`` names it
            files = render_outputs(result, path, stem, self.overlay_max_side, extra)
            dicom: dict[str, bytes] = {}
            if self.dicom_outputs and loaded.format == "dicom":
                files, dicom = self._with_dicom(result, path, stem, files)
            ms = 1000 * (time.perf_counter() - t0)
            return Outcome(ok=True, files=files, forward=dicom, flags=list(result.flags), ms=ms)
        except HemosegError as e:
            reason, kind = str(e).replace(str(path), name), type(e).__name__
        except MemoryError:
            reason, kind = f"{name}: out of memory", "MemoryError"
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the service
            reason, kind = f"{name}: internal error: {type(e).__name__}: {e}", type(e).__name__
        reason = " ".join(reason.split())  # one line
        ms = 1000 * (time.perf_counter() - t0)
        return Outcome(ok=False, reason=reason, error_type=kind, ms=ms)

    def _with_dicom(
        self, result, path: Path, stem: str, files: dict[str, bytes]
    ) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Add the SEG, SR and SC (before the JSON, which stays last and lists them). A DICOM
        output that cannot be built is noted in the JSON and logged; the result still counts."""
        json_name = next(n for n in files if n == f"{stem}.json")
        overlay_name = next(n for n in files if n == f"{stem}_overlay.jpg")
        overlay = np.frombuffer(files[overlay_name], np.uint8)
        overlay_bgr = cv2.imdecode(overlay, cv2.IMREAD_COLOR)
        assert overlay_bgr is not None  # we encoded it a moment ago
        d = json.loads(files[json_name])
        dicom: dict[str, bytes] = {}
        try:
            dicom = render_dicom_outputs(result, path, stem, overlay_bgr)
        except DicomOutputUnavailable as e:
            if not self._dicom_unavailable_logged:
                log("dicom_output_unavailable", "warning", msg=e)
                self._dicom_unavailable_logged = True
            d["dicom_output_error"] = str(e)
        except Exception as e:  # noqa: BLE001 - e.g. a source header highdicom cannot use
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            log("dicom_output_error", "warning", file=path.name, reason=reason)
            d["dicom_output_error"] = reason
        if dicom:
            import pydicom

            d["dicom_outputs"] = {}
            for fname, data in dicom.items():
                hdr = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                d["dicom_outputs"][fname.rsplit("_", 1)[1].removesuffix(".dcm")] = {
                    "file": fname,
                    "sop_class_uid": str(hdr.SOPClassUID),
                    "sop_instance_uid": str(hdr.SOPInstanceUID),
                }
        out = {n: data for n, data in files.items() if n != json_name}
        out.update(dicom)
        out[json_name] = (json.dumps(d, indent=2) + "\n").encode()  # still last
        return out, dicom
