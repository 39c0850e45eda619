"""``--forward AE@host:port``: a durable outbox of DICOM objects and the C-STORE SCU draining it.

State is the location of a file, moved only by atomic renames (as for the inputs):

``OUT/outbox/<SOPInstanceUID>.dcm``
    waiting to be sent. Written atomically (fsynced) by ``enqueue`` *before* the input moves
    to ``done/``, so a processed input always has its objects either here or in ``sent/``.
``OUT/sent/<SOPInstanceUID>.dcm``
    the destination answered the C-STORE with Success (or a Warning: stored). Renamed from the
    outbox only after that answer. An object already in ``sent/`` is not enqueued again.
``OUT/outbox/failed/<SOPInstanceUID>.dcm`` + ``.reason.txt``
    the destination refused it ``max_attempts`` times (a failure status, or its SOP class
    refused at negotiation). Move it back into ``outbox/`` to retry it.

An unreachable destination (connection refused, association rejected or aborted, no
answer) is not the object's fault: those objects stay in the outbox, retried with exponential
backoff (``backoff`` doubling up to ``max_backoff`` seconds) for as long as it takes, and are
sent when the destination returns. Refusals of the object itself count against
``max_attempts`` (persisted beside it in ``<name>.attempts``, so a restart does not reset them).

Exactly once: a crash after the destination's Success and before the rename to ``sent/``
resends that object after the restart. The SOP Instance UID is the same (the objects are
renamed, never rebuilt, and a rebuilt object gets the same UID), and a PACS stores a SOP
Instance UID once (Orthanc keeps the first copy and answers Success), so the PACS holds each
object exactly once.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_bytes
from .folders import crashpoint, fsync_dir
from .log import log

_DEST = re.compile(
    r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\[\]]+):(?P<port>\d{1,5})$"
)
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
# C-STORE status classes (PS3.4 B.2.3): 0x0000 Success; 0xB000, 0xB006, 0xB007 Warning
# (the object was stored); everything else is a failure
STORED = (0x0000, 0xB000, 0xB006, 0xB007)


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AE@host:port`` (IPv6 hosts in brackets) -> ``Destination``; ``ValueError`` otherwise."""
    m = _DEST.match(text.strip())
    if not m or not 0 < int(m["port"]) < 65536 or not m["ae"].strip():
        raise ValueError(f"--forward wants AE@host:port (AE title up to 16 chars), got {text!r}")
    host = m["host"].strip("[]")
    return Destination(m["ae"].strip(), host, int(m["port"]))


def _header(data_or_path):
    import io

    import pydicom

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    return pydicom.dcmread(src, stop_before_pixels=True)


class Outbox:
    """``OUT/outbox``, ``OUT/outbox/failed``, ``OUT/sent`` and the sender thread draining them."""

    def __init__(
        self,
        out_dir: Path,
        destination: Destination,
        calling_ae: str = "HEMOSEG",
        max_attempts: int = 8,
        backoff: float = 2.0,
        max_backoff: float = 300.0,
        timeout: float = 30.0,
        status=None,
    ):
        self.dir = Path(out_dir) / "outbox"
        self.failed = self.dir / "failed"
        self.sent = Path(out_dir) / "sent"
        self.dest = destination
        self.calling_ae = calling_ae
        self.max_attempts = max(1, max_attempts)
        self.backoff, self.max_backoff = max(0.01, backoff), max(backoff, max_backoff)
        self.timeout = timeout
        self.status = status
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_at: dict[str, float] = {}  # name -> monotonic time of its next try
        self._down_since: float | None = None
        self._down_tries = 0
        self.forwarded = 0
        for d in (self.dir, self.failed, self.sent):
            d.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self.dir):  # atomic writes a crash left unfinished
            if name.startswith(".") and ".tmp" in name:
                try:
                    os.unlink(self.dir / name)
                except FileNotFoundError:
                    pass

    # --- enqueue (the service loop's thread) ---------------------------------------------------
    def enqueue(self, objects: dict[str, bytes]) -> list[str]:
        """Write each object atomically as ``outbox/<SOPInstanceUID>.dcm`` (skipping those
        already in ``sent/``); returns the outbox names. Call before moving the input to done/."""
        names = []
        for label, data in objects.items():
            uid = str(_header(data).SOPInstanceUID)
            if not _UID.fullmatch(uid):
                raise ValueError(f"{label}: bad SOP Instance UID {uid!r}")
            name = f"{uid}.dcm"
            if os.path.lexists(self.sent / name):
                log("forward_skipped", file=label, sop_instance_uid=uid, why="already sent")
                continue
            atomic_write_bytes(self.dir / name, data)
            names.append(name)
            log("forward_queued", file=label, sop_instance_uid=uid, bytes=len(data))
        if names:
            fsync_dir(self.dir)
            crashpoint("enqueued")
            self._wake.set()
        return names

    def pending(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir) if n.endswith(".dcm") and n[0] != ".")

    # --- the sender thread ---------------------------------------------------------------------
    def start(self) -> Outbox:
        self._thread = threading.Thread(target=self._run, name="hemoseg-forward", daemon=True)
        self._thread.start()
        log("forward_started", destination=self.dest, pending=len(self.pending()))
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.drain_once()
            except Exception as e:  # noqa: BLE001 - the sender must outlive any one problem
                log("forward_error", "error", error_type=type(e).__name__, msg=e)
                wait = self.backoff
            self._wake.wait(wait)
            self._wake.clear()

    def _delay(self, tries: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** max(0, tries - 1))

    def _attempts(self, name: str) -> int:
        try:
            return int(json.loads((self.dir / f"{name}.attempts").read_text())["attempts"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def drain_once(self) -> float:
        """Send every due object over one association; returns seconds until the next try."""
        now = time.monotonic()
        names = self.pending()
        for gone in set(self._next_at) - set(names):
            del self._next_at[gone]
        due = [n for n in names if self._next_at.get(n, 0.0) <= now]
        self._report(len(names))
        if not due:
            future = [t - now for t in self._next_at.values()]
            return max(0.05, min(future)) if future else 5.0
        from pynetdicom import AE

        headers = {}
        for n in due:
            try:
                headers[n] = _header(self.dir / n)
            except Exception as e:  # noqa: BLE001 - an unreadable object is refused for good
                self._refused(n, f"unreadable object ({type(e).__name__})", final=True)
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = min(self.timeout, 10.0)
        for sop_class in sorted({str(h.SOPClassUID) for h in headers.values()})[:127]:
            syntaxes = {EXPLICIT_LE, IMPLICIT_LE}
            syntaxes |= {
                str(h.file_meta.TransferSyntaxUID)
                for h in headers.values()
                if str(h.SOPClassUID) == sop_class
            }
            ae.add_requested_context(sop_class, sorted(syntaxes))
        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title)
        if not assoc.is_established:
            return self._unreachable(list(headers), "association rejected or destination down")
        try:
            for n in headers:
                if self._stop.is_set():
                    break
                if not self._send(assoc, n):
                    return self._unreachable([m for m in headers if (self.dir / m).exists()])
        finally:
            if assoc.is_established:
                assoc.release()
        self._report(len(self.pending()))
        return 0.05 if self.pending() else 5.0

    def _send(self, assoc, name: str) -> bool:
        """One C-STORE; False when the association broke (the destination went away)."""
        import pydicom

        path = self.dir / name
        try:
            ds = pydicom.dcmread(path)
        except FileNotFoundError:
            return True  # moved by hand meanwhile
        try:
            rsp = assoc.send_c_store(ds)
        except ValueError as e:  # no accepted presentation context for its SOP class
            self._refused(name, f"refused at negotiation ({e})")
            return True
        if not rsp or "Status" not in rsp:
            return False  # aborted, timed out: no answer
        code = int(rsp.Status)
        if code in STORED:
            crashpoint("forward_stored")  # tests: Success received, not yet renamed
            os.rename(path, self.sent / name)
            fsync_dir(self.sent)
            try:
                os.unlink(self.dir / f"{name}.attempts")
            except FileNotFoundError:
                pass
            self._next_at.pop(name, None)
            self.forwarded += 1
            self._down_tries, self._down_since = 0, None
            log("forwarded", file=name, destination=self.dest, status=f"0x{code:04X}")
            return True
        comment = str(rsp.get("ErrorComment", "") or "")
        self._refused(name, f"C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else ""))
        return True

    def _unreachable(self, names: list[str], why: str = "association lost") -> float:
        self._down_tries += 1
        delay = self._delay(self._down_tries)
        until = time.monotonic() + delay
        for n in names:
            self._next_at[n] = until
        if self._down_since is None:
            self._down_since = time.time()
        log(
            "forward_unreachable",
            "warning",
            destination=self.dest,
            why=why,
            pending=len(self.pending()),
            retry_in_s=f"{delay:g}",
        )
        return delay

    def _refused(self, name: str, reason: str, final: bool = False) -> None:
        attempts = self.max_attempts if final else self._attempts(name) + 1
        if attempts >= self.max_attempts:
            reason = f"{reason}; gave up after {attempts} attempts"
            text = (" ".join(reason.split()) + "\n").encode("utf-8", "backslashreplace")
            atomic_write_bytes(self.failed / f"{name}.reason.txt", text)
            fsync_dir(self.failed)
            os.rename(self.dir / name, self.failed / name)
            try:
                os.unlink(self.dir / f"{name}.attempts")
            except FileNotFoundError:
                pass
            self._next_at.pop(name, None)
            log("forward_failed", "error", file=name, destination=self.dest, reason=reason)
            return
        state = {"attempts": attempts, "last_error": reason}
        atomic_write_bytes(self.dir / f"{name}.attempts", json.dumps(state).encode())
        delay = self._delay(attempts)
        self._next_at[name] = time.monotonic() + delay
        log(
            "forward_retry",
            "warning",
            file=name,
            destination=self.dest,
            attempt=attempts,
            reason=reason,
            retry_in_s=f"{delay:g}",
        )

    def _report(self, pending: int) -> None:
        if self.status is None:
            return
        failed = sum(1 for n in os.listdir(self.failed) if n.endswith(".dcm"))
        try:
            self.status.write(
                forward_destination=str(self.dest),
                forward_pending=pending,
                forward_failed=failed,
                forwarded=self.forwarded,
            )
        except OSError:
            pass
