"""``hemoseg-edge watch``: the watched folder, the stability check and the service loop."""

from __future__ import annotations

import errno
import functools
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import EXIT_IO, EXIT_MODEL, EXIT_OK, EXIT_STUCK, EXIT_USAGE, HemosegError
from .config import ServiceConfig
from .folders import Layout, SetupError, crashpoint, is_candidate
from .log import install_hooks, log
from .queue import Outcome, Processor, WorkQueue
from .status import Status

MAX_STUCK = 2
_F_SETLEASE = 1024  # Linux fcntl commands (fcntl module constants are optional)
_F_RDLCK, _F_UNLCK = 0, 2


def open_for_writing(path: Path) -> bool | None:
    """Whether some process has ``path`` open for writing, from a Linux read lease: True
    (refused: a writer has it open), False (granted), None (unknown: no lease support, or the
    lease is not permitted — a file the service does not own, without CAP_LEASE — or not a
    regular file). On None only the size/mtime/inode settle rule protects the file. The caller
    must ignore SIGIO (lease breaks)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, _F_SETLEASE, _F_RDLCK)
    except OSError as e:
        return True if e.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)
        return False
    finally:
        os.close(fd)


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        try:
            st = os.lstat(path)  # dangling symlink, symlink loop: the loader fails it
        except OSError:
            return None  # gone
    if stat.S_ISDIR(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode


class Stabilizer(threading.Thread):
    """Turns noticed names into queued names once complete: size, mtime and inode unchanged
    across two checks at least ``settle`` s apart and (where leases tell) not open for writing.
    Also rescans ``IN_DIR`` every ``rescan`` s: the safety net for missed events."""

    def __init__(
        self,
        in_dir: Path,
        queue: WorkQueue,
        settle: float,
        rescan: float,
        leases: bool,
        stop: threading.Event,
    ):
        super().__init__(name="hemoseg-stabilizer", daemon=True)
        self.in_dir, self.queue, self.settle, self.rescan = in_dir, queue, settle, rescan
        self.leases, self.stop = leases, stop
        self._lease_warned = False
        self.tick = max(0.05, min(0.5, settle / 2))
        self._seen: dict[str, tuple[tuple, float]] = {}
        self._noticed: set[str] = set()
        self._lock = threading.Lock()

    def notice(self, name: str) -> None:
        if is_candidate(name):
            with self._lock:
                self._noticed.add(name)

    def scan(self) -> None:
        try:
            with os.scandir(self.in_dir) as it:
                names = [e.name for e in it]
        except OSError as e:
            log("scan_error", "error", dir=self.in_dir, msg=e.strerror or e)
            return
        for n in names:
            self.notice(n)

    def run(self) -> None:
        next_scan = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_scan:
                self.scan()
                next_scan = now + self.rescan
            self.check(now)
            self.stop.wait(self.tick)

    def check(self, now: float) -> None:
        with self._lock:
            names, self._noticed = self._noticed, set()
        names |= self._seen.keys()
        ready: list[tuple[int, str]] = []
        for name in names:
            if name in self.queue:
                self._seen.pop(name, None)
                continue
            path = self.in_dir / name
            sig = _signature(path)
            if sig is None:
                self._seen.pop(name, None)
                continue
            prev = self._seen.get(name)
            if prev is None or prev[0] != sig:
                self._seen[name] = (sig, now)
                continue
            if now - prev[1] < self.settle:
                continue
            if self.leases and stat.S_ISREG(sig[3]):
                writing = open_for_writing(path)
                if writing:
                    self._seen[name] = (sig, now)  # still being written: wait another settle
                    continue
                if writing is None and not self._lease_warned:
                    self._lease_warned = True
                    log(
                        "write_check_unavailable",
                        "warning",
                        file=name,
                        msg="no lease on a file this service does not own (needs CAP_LEASE): "
                        "only the settle rule protects files being written; have writers "
                        "write to a temporary name and rename, or grant CAP_LEASE",
                    )
            ready.append((sig[1], name))
        for _, name in sorted(ready):  # oldest first
            if not self.queue.offer(name):
                break  # full: offered again on a later check
            self._seen.pop(name, None)


def start_observer(in_dir: Path, notice: Callable[[str], None]):
    """A watchdog (inotify on Linux) observer calling ``notice(name)``; ``None`` if unavailable."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        log("inotify_unavailable", "warning", msg="watchdog not installed; rescans only")
        return None

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            if event.is_directory:
                return
            if event.event_type in ("created", "modified", "closed"):
                p = event.src_path
            elif event.event_type == "moved":
                p = event.dest_path
            else:
                return
            p = Path(os.fsdecode(p))
            if p.parent == in_dir:
                notice(p.name)

    obs = Observer()
    try:
        obs.schedule(Handler(), str(in_dir), recursive=False)
        obs.start()
    except Exception as e:  # noqa: BLE001 - e.g. inotify watch limit: the rescan still works
        log("inotify_unavailable", "warning", error_type=type(e).__name__, msg=e)
        return None
    return obs


class Service:
    """The service loop: ``work/`` left by a crash first, then the queue, one file at a time."""

    def __init__(
        self,
        layout: Layout,
        processor: Processor,
        status: Status,
        settle: float = 2.0,
        rescan: float = 30.0,
        queue_size: int = 32,
        inotify: bool = True,
        heartbeat: float = 30.0,
        outbox=None,
    ):
        self.layout, self.processor, self.status = layout, processor, status
        self.outbox = outbox  # outbox.Outbox when forwarding: DICOM outputs are enqueued
        self.queue = WorkQueue(queue_size)
        self.stop = threading.Event()
        self.inotify, self.heartbeat = inotify, heartbeat
        self.leases = _ignore_sigio()
        self.stabilizer = Stabilizer(
            layout.in_dir, self.queue, settle, rescan, self.leases, self.stop
        )

    def request_stop(self, signum: int | None = None, frame=None) -> None:
        if self.stop.is_set() and signum is not None:
            log("forced_exit", "warning", signal=signum)
            os._exit(130)  # second signal: safe, the folders are the state
        log("stopping", signal=signum)
        self.stop.set()

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        observer = None
        if self.inotify:
            observer = start_observer(self.layout.in_dir, self.stabilizer.notice)
        self.stabilizer.start()
        self.status.write(state="running")
        log(
            "started",
            pid=os.getpid(),
            in_dir=self.layout.in_dir,
            out_dir=self.layout.out,
            inotify=observer is not None,
            leases=self.leases,
        )
        try:
            code = self._loop()
        except OSError as e:
            # our own folders failed (disk full, permissions): exit for the supervisor to
            # restart us; the file stays in work/ and is redone then
            log("fatal", "error", error_type=type(e).__name__, msg=e.strerror or e)
            code = EXIT_IO
        finally:
            self.stop.set()
            if observer is not None:
                observer.stop()
        state = "stopped" if code == EXIT_OK else "error"
        try:
            self.status.write(state=state, queue_depth=len(self.queue))
        except OSError:
            pass
        log("stopped", code=code)
        return code

    def _loop(self) -> int:
        for left in self.layout.pending_work():
            if self.stop.is_set():
                return EXIT_OK
            log("recover", file=left)
            self._process(left)
        last_beat = time.monotonic()
        while not self.stop.is_set():
            if self.processor.stuck > MAX_STUCK:
                log("fatal", "error", msg=f"{self.processor.stuck} stuck inferences; exiting")
                return EXIT_STUCK
            name = self.queue.get(timeout=0.5)
            if name is None:
                if time.monotonic() - last_beat >= self.heartbeat:
                    self.status.write(queue_depth=len(self.queue))
                    last_beat = time.monotonic()
                continue
            try:
                final = self.layout.claim(name)
            except OSError as e:  # e.g. not allowed to move it: it stays, the rescan retries
                log("claim_error", "error", file=name, msg=e.strerror or e)
                final = None
            else:
                if final is None:
                    log("vanished", file=name)
            if final is None:
                self.queue.done(name)
                continue
            try:
                log("claimed", file=name, **({"as": final} if final != name else {}))
                self._process(final)
                last_beat = time.monotonic()
            finally:
                self.queue.done(name)
                if os.path.lexists(self.layout.in_dir / name):  # a new file, same name
                    self.stabilizer.notice(name)
        return EXIT_OK

    def _process(self, name: str) -> None:
        out: Outcome = self.processor.run(self.layout.work / name, name)
        if out.ok:
            enqueue = None  # the DICOM objects go into the outbox before the input into done/
            if self.outbox is not None and out.forward:
                enqueue = functools.partial(self.outbox.enqueue, out.forward)
            self.layout.finish_done(name, out.files, enqueue)
            level = "warning" if out.flags else "info"
            log("done", level, file=name, ms=f"{out.ms:.0f}", flags=",".join(out.flags) or None)
        else:
            self.layout.finish_failed(name, out.reason)
            log("failed", "warning", file=name, error_type=out.error_type, reason=out.reason)
        self.status.record(name, out.ok, bool(out.flags), out.reason)
        self.status.write(queue_depth=len(self.queue))
        crashpoint("status_written")


def _ignore_sigio() -> bool:
    """Lease checks need SIGIO ignored (a lease break would otherwise kill the process)."""
    if not sys.platform.startswith("linux"):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    return True


def serve(config: ServiceConfig, start_extra: Callable | None = None) -> int:
    """Set up folders, model and (optionally) a listener, then run the service loop."""
    install_hooks()
    try:
        layout = Layout.create(config.in_dir, config.out)
    except SetupError as e:
        log("fatal", "error", msg=e)
        return EXIT_USAGE
    for name in layout.clean_temps():
        log("removed_temp", file=name)
    destination = None
    if config.forward:
        from .outbox import parse_destination

        try:
            destination = parse_destination(config.forward)
        except ValueError as e:
            log("fatal", "error", msg=e)
            return EXIT_USAGE
    from ..segmenter import Segmenter

    early_stop: list[int] = []  # a SIGTERM while the model loads: stop cleanly once it has
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda n, f: early_stop.append(n)) if on_main else None
    try:
        seg = Segmenter.from_engine(
            config.model, backend=config.backend, allow_defaults=config.assume_defaults
        )
    except HemosegError as e:
        log("fatal", "error", error_type=type(e).__name__, msg=e)
        return EXIT_MODEL
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
    if early_stop:
        log("stopping", signal=early_stop[0], msg="stopped while the model was loading")
        return EXIT_OK
    log("model_loaded", source=seg.source, backend=seg.backend.name, version=seg.metadata.version)
    done, failed = layout.counts()
    status = Status(
        layout.out,
        done,
        failed,
        in_dir=str(layout.in_dir),
        out_dir=str(layout.out),
        model=seg.metadata.version,
    )
    outbox = None
    if destination is not None:
        from .outbox import Outbox

        try:
            outbox = Outbox(
                layout.out,
                destination,
                calling_ae=config.forward_ae_title,
                max_attempts=config.forward_max_attempts,
                backoff=config.forward_backoff,
                max_backoff=config.forward_max_backoff,
                status=status,
            )
        except OSError as e:
            log("fatal", "error", error_type=type(e).__name__, msg=e.strerror or e)
            return EXIT_USAGE
    service = Service(
        layout,
        Processor(seg, config.timeout, config.overlay_max_side, config.dicom_outputs),
        status,
        config.settle,
        config.rescan,
        config.queue_size,
        config.inotify,
        outbox=outbox,
    )
    stop_extra = None
    if start_extra is not None:
        try:
            stop_extra = start_extra(layout, status)
        except (OSError, HemosegError) as e:
            log("fatal", "error", error_type=type(e).__name__, msg=e)
            return EXIT_USAGE
    if outbox is not None:
        outbox.start()
    try:
        return service.run()
    finally:
        if stop_extra is not None:
            stop_extra()
        if outbox is not None:
            outbox.stop()
