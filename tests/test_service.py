"""The camera-side service: watch folder, DICOM listener, crash safety (kill -9), odd inputs."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import corpus
import cv2
import numpy as np
import pytest
from conftest import REPO, idrid_images, require_data

from hemoseg_edge.cli import main
from hemoseg_edge.errors import InputImageError
from hemoseg_edge.segmenter import Segmenter
from hemoseg_edge.service.folders import Layout, result_names
from hemoseg_edge.service.queue import Processor
from hemoseg_edge.service.status import Status
from hemoseg_edge.service.watch import Service, open_for_writing

pytest.importorskip("watchdog")
pytest.importorskip("pydicom")


# --- helpers -----------------------------------------------------------------------------------
class ServiceProc:
    """``python -m hemoseg_edge <args>`` with stderr captured to a file."""

    def __init__(self, tmp: Path, args: list[str], env: dict | None = None):
        self.log_path = tmp / f"service-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hemoseg_edge", *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=full_env,
        )

    def text(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited ({self.proc.returncode}):\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()}")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.wait()


def service_args(in_dir: Path | None, out: Path, model: Path, *extra: str) -> list[str]:
    head = ["watch", str(in_dir)] if in_dir is not None else []
    return [
        *head,
        "--out",
        str(out),
        "--model",
        str(model),
        "--backend",
        "onnxruntime",
        "--settle",
        "0.3",
        "--rescan",
        "1",
        *extra,
    ]


def entries(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if not n.startswith(".")) if d.exists() else []


def wait_until(cond, timeout: float, proc: ServiceProc | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"service exited ({proc.proc.returncode}):\n{proc.text()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{proc.text()}" if proc else ""))


def assert_clean_log(text: str) -> None:
    assert "Traceback" not in text, text
    assert not re.search(r"^\s+File \"", text, re.M), text
    for line in text.splitlines():
        if line.startswith("ts="):
            assert re.match(r"ts=\S+ level=\w+ event=\w+", line), line


def imread(path: Path) -> np.ndarray | None:
    """cv2.imread via bytes (OpenCV cannot take every file name Python can)."""
    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)


def check_results(out: Path, name: str) -> dict:
    """The three outputs of a done file exist and decode; returns the JSON."""
    mask_name, overlay_name, _report_name, json_name = result_names(name)
    d = json.loads((out / "results" / json_name).read_text())
    mask = imread(out / "results" / mask_name)
    overlay = imread(out / "results" / overlay_name)
    assert mask is not None and overlay is not None, name
    assert mask.shape == (d["image_size"]["height"], d["image_size"]["width"]), name
    assert d["input"] == name
    return d


def real_sources(n: int) -> list[Path]:
    found = idrid_images()[:n]
    example = REPO / "examples" / "IDRiD_55.jpg"
    return found or ([example] if example.exists() else [])


# --- odd inputs --------------------------------------------------------------------------------
def test_corpus_each_case_ends_once_with_a_reason(tmp_path, tiny_model):
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    cases = corpus.build(in_dir, real_sources(2))
    corpus.write_ignored(in_dir)
    assert len(cases) >= 60
    svc = ServiceProc(tmp_path, service_args(in_dir, out, tiny_model, "--settle", "0.5"))
    svc.wait_for("event=started")
    writers = corpus.start_late_writers(in_dir, cases)

    def settled() -> bool:
        return all(
            os.path.lexists(out / "done" / c.name) or os.path.lexists(out / "failed" / c.name)
            for c in cases
        )

    wait_until(settled, 90, svc, "every corpus case")
    for t in writers:
        t.join()
    time.sleep(0.5)  # anything still pending would show up in done/ or failed/ now
    assert svc.proc.poll() is None, "the service died"
    assert svc.stop() == 0
    log = svc.text()
    assert_clean_log(log)

    done, failed = set(entries(out / "done")), set(entries(out / "failed"))
    reasons = {n for n in failed if n.endswith(".reason.txt")}
    failed -= reasons
    names = {c.name for c in cases}
    assert done | failed == names, (done | failed) ^ names  # nothing extra, nothing missing
    assert not done & failed
    assert reasons == {f"{n}.reason.txt" for n in failed}
    assert entries(out / "work") == []
    assert sorted(entries(in_dir)) == sorted(n for n in corpus.IGNORED if not n.startswith("."))
    assert (in_dir / ".hidden.jpg").exists()
    for c in cases:
        where = "done" if c.name in done else "failed"
        if c.expect != "either":
            assert where == c.expect, (c.name, c.why, log)
        if where == "done":
            d = check_results(out, c.name)
            assert set(c.flags) <= set(d["flags"]), (c.name, d["flags"])
            if c.status:
                assert d["status"] == c.status, (c.name, d["status"], d["flags"])
            if c.dicom:
                assert d["dicom"]["PatientID"] == "TEST-0001"
                assert set(d["dicom"]) >= {"StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"}
        else:
            reason = (out / "failed" / f"{c.name}.reason.txt").read_bytes().decode()
            assert reason.count("\n") == 1 and reason.strip(), (c.name, reason)
            assert c.reason.lower() in reason.lower(), (c.name, reason)
            assert not (out / "results" / result_names(c.name)[-1]).exists()
    status = json.loads((out / "status.json").read_text())
    assert (status["processed"], status["failed"]) == (len(done), len(failed))
    assert status["state"] == "stopped" and status["last_error"]["reason"]


# --- crash safety ------------------------------------------------------------------------------
CRASH_STEPS = (
    "claimed",
    "results_partial",
    "results_written",
    "reason_written",
    "moved",
    "status_written",
)


def _marker_of(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith(b"bad:"):
        return data[4:].split(b"\n")[0].decode()
    marker = corpus.read_marker(data)
    assert marker, path
    return marker


def _where_markers(in_dir: Path, out: Path) -> Counter:
    seen: Counter = Counter()
    for d in (in_dir, out / "work", out / "done", out / "failed"):
        for n in entries(d):
            if not n.endswith(".reason.txt"):
                seen[_marker_of(d / n)] += 1
    return seen


def _check_crash_state(in_dir: Path, out: Path, dropped: set[str]) -> None:
    """What must hold at any instant: each input in exactly one place, outputs whole."""
    seen = _where_markers(in_dir, out)
    assert set(seen) == dropped and set(seen.values()) == {1}, seen
    for n in entries(out / "done"):
        check_results(out, n)
    for n in entries(out / "failed"):
        if not n.endswith(".reason.txt"):
            assert (out / "failed" / f"{n}.reason.txt").read_text().strip()
    for n in entries(out / "results"):  # visible results are complete (atomic writes)
        p = out / "results" / n
        if n.endswith(".json"):
            json.loads(p.read_text())
        else:
            assert imread(p) is not None, n


@pytest.mark.data
@pytest.mark.slow
def test_kill9_at_random_moments_loses_and_duplicates_nothing(tmp_path, tiny_model):
    """``HEMOSEG_KILL9_MODEL=engines/<model>.onnx``: the same trials with a real model (on
    ONNX Runtime), so a kill lands inside real inference and real output writing."""
    require_data()
    tiny_model = Path(os.environ.get("HEMOSEG_KILL9_MODEL") or tiny_model)
    pool = [corpus.jpeg(corpus.small_copy(p)) for p in idrid_images()[:4]]
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    rng = random.Random(20240611)
    dropped: set[str] = set()
    counter = iter(range(10**6))

    def drop(n: int, bad: bool = False) -> None:
        for i in range(n):
            k = next(counter)
            marker = f"m{k:04d}"
            name = "same.jpg" if rng.random() < 0.25 else f"img_{k:04d}.jpg"
            if (in_dir / name).exists():
                name = f"img_{k:04d}.jpg"
            data = b"bad:" + marker.encode() + b"\n" if bad and i == 0 else None
            data = data or corpus.with_marker(rng.choice(pool), marker)
            tmp = in_dir / f".{name}.writing"
            tmp.write_bytes(data)
            os.rename(tmp, in_dir / name)  # inputs appear atomically
            dropped.add(marker)

    trials = [("crash", s) for s in CRASH_STEPS] + [("kill", "")] * 20
    landed = Counter()
    t0 = time.monotonic()
    for kind, step in trials:
        drop(2, bad=step == "reason_written" or rng.random() < 0.2)
        env = {"HEMOSEG_TEST_CRASH_AT": step} if kind == "crash" else {}
        svc = ServiceProc(tmp_path, service_args(in_dir, out, tiny_model), env)
        if kind == "crash":
            assert svc.wait(60) == 99, svc.text()
            landed[f"crashpoint:{step}"] += 1
        else:
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.1, 1.2))  # possibly still starting up
            else:
                svc.wait_for("event=started")
                time.sleep(rng.uniform(0.0, 1.0))
            busy = bool(entries(out / "work"))
            svc.kill()
            landed["kill:mid-file" if busy else "kill:between-files"] += 1
        assert_clean_log(svc.text())
        _check_crash_state(in_dir, out, dropped)

    svc = ServiceProc(tmp_path, service_args(in_dir, out, tiny_model))
    wait_until(lambda: not entries(in_dir) and not entries(out / "work"), 90, svc, "drain")
    assert svc.stop() == 0
    assert_clean_log(svc.text())
    _check_crash_state(in_dir, out, dropped)
    done = entries(out / "done")
    failed = [n for n in entries(out / "failed") if not n.endswith(".reason.txt")]
    assert len(done) + len(failed) == len(dropped)
    assert any("__" in n for n in done + failed)  # same.jpg collisions got suffixes
    expected = {r for n in done for r in result_names(n)}
    assert set(entries(out / "results")) == expected  # no orphans, no temp files
    assert not [n for n in os.listdir(out / "results") if n.startswith(".")]  # temp files
    print(
        f"\nkill trials: {dict(landed)}; inputs {len(dropped)}: {len(done)} done,"
        f" {len(failed)} failed; {time.monotonic() - t0:.0f} s"
    )


# --- timeouts, in process ----------------------------------------------------------------------
class SlowOnName:
    """Wraps a real Segmenter; loading a file whose name contains "slow" takes 20 s."""

    def __init__(self, seg: Segmenter):
        self._seg = seg

    def load(self, path):
        if "slow" in Path(path).name:
            time.sleep(20)
        return self._seg.load(path)

    def segment(self, image):
        return self._seg.segment(image)


def test_timeout_fails_the_file_and_the_service_goes_on(tmp_path, tiny_model):
    seg = SlowOnName(Segmenter.from_engine(tiny_model, backend="onnxruntime"))
    layout = Layout.create(tmp_path / "in", tmp_path / "out")
    img = corpus.jpeg(corpus.synthetic_fundus())
    (layout.in_dir / "a_slow.jpg").write_bytes(img)
    (layout.in_dir / "b_fast.jpg").write_bytes(img)
    service = Service(
        layout,
        Processor(seg, timeout=2.0),  # generous for the fast one on a busy machine
        Status(layout.out, 0, 0),
        settle=0.1,
        rescan=0.3,
        inotify=False,
    )
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(service.run()))
    runner.start()
    try:
        wait_until(
            lambda: len(entries(layout.done) + entries(layout.failed)) == 3, 60, what="both files"
        )
    finally:
        service.request_stop()
        runner.join(30)
    assert codes == [0]
    assert entries(layout.done) == ["b_fast.jpg"], entries(layout.failed)
    reason = (layout.failed / "a_slow.jpg.reason.txt").read_text()
    assert reason.startswith("timeout"), reason
    assert json.loads((layout.results / "b_fast.json").read_text())["input"] == "b_fast.jpg"
    assert not (layout.results / "a_slow.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux file leases")
def test_open_for_writing_sees_a_writer(tmp_path):
    p = tmp_path / "f.jpg"
    with open(p, "wb") as f:
        f.write(b"x")
        f.flush()
        assert open_for_writing(p)
    assert not open_for_writing(p)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux file leases")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_open_for_writing_is_unknown_not_false_on_a_file_of_another_user(tmp_path):
    """The documented deployment: the camera's user writes, the service's user reads. The
    lease is refused with EACCES there; that must read as "unknown", never "not open"."""
    p = tmp_path / "camera.jpg"
    p.write_bytes(b"x")
    p.chmod(0o644)
    tmp_path.chmod(0o755)
    with open(p, "ab"):  # a writer holds it open
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the service's user: not the owner, no CAP_LEASE
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.write(w, repr(open_for_writing(p)).encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        got = os.read(r, 100).decode()
        os.close(r)
    assert got == "None"


# --- DICOM -------------------------------------------------------------------------------------
def store_without_instance_uid(assoc, sop_class: str) -> int | None:
    """Send a C-STORE request with no Affected SOP Instance UID (pynetdicom's ``send_c_store``
    refuses to build one, so the primitive goes out as ``send_c_store`` sends it); the
    response status, or None if none came within the association's DIMSE timeout."""
    from pydicom.dataset import Dataset
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    ds = Dataset()
    ds.SOPClassUID, ds.PatientID = sop_class, "NO-UID"
    req = C_STORE()
    req.MessageID, req.AffectedSOPClassUID, req.Priority = 7, sop_class, 2
    req.DataSet = io.BytesIO(encode(ds, False, True))
    cx = assoc._get_valid_context(sop_class, "", "scu")
    assoc._reactor_checkpoint.clear()  # as send_c_store: the reactor leaves the reply to us
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        assoc.dimse.send_msg(req, cx.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return None if rsp is None else int(rsp.Status)


def test_dicom_listener_stores_and_processes_over_loopback(tmp_path, tiny_model, sample_image):
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE

    out = tmp_path / "out"
    svc = ServiceProc(
        tmp_path,
        [
            "dicom-listen",
            "--port",
            "0",
            "--allow-ae",
            "CAMERA1",
            *service_args(None, out, tiny_model),
        ],
    )
    port = int(svc.wait_for(r"event=listening .*port=(\d+)").group(1))
    rgb = np.ascontiguousarray(corpus.small_copy(sample_image)[:, :, ::-1])
    ds = corpus.make_dicom(rgb, patient_id="CAM-42")
    ct = corpus.make_dicom(np.zeros((64, 64), np.uint16), "MONOCHROME2", corpus.CT_IMAGE)

    scu = AE(ae_title="CAMERA1")
    scu.dimse_timeout = 10  # a reply that does not come ends the wait (pynetdicom: 30 s)
    scu.add_requested_context(corpus.OP_8BIT, corpus.EXPLICIT_LE)
    scu.add_requested_context(corpus.CT_IMAGE, corpus.EXPLICIT_LE)
    scu.add_requested_context("1.2.840.10008.1.1")
    assoc = scu.associate("127.0.0.1", port, ae_title="HEMOSEG")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        t0 = time.monotonic()
        assert store_without_instance_uid(assoc, corpus.OP_8BIT) == 0xC000  # answered, at once
        assert time.monotonic() - t0 < 5  # pynetdicom alone: no answer, the sender waits 30 s
        assert assoc.send_c_store(ds).Status == 0x0000
        refused = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
        assert corpus.CT_IMAGE in refused  # refused at negotiation
        with pytest.raises(ValueError):
            assoc.send_c_store(ct)
    finally:
        assoc.release()
    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(corpus.OP_8BIT, corpus.EXPLICIT_LE)
    bad = intruder.associate("127.0.0.1", port, ae_title="HEMOSEG")
    assert bad.is_rejected
    wrong_called = scu.associate("127.0.0.1", port, ae_title="NOTUS")
    assert wrong_called.is_rejected

    name = f"{ds.SOPInstanceUID}.dcm"
    wait_until(lambda: (out / "done" / name).exists(), 60, svc, "the received file")
    assert svc.proc.poll() is None
    assert svc.stop() == 0
    text = svc.text()
    assert_clean_log(text)
    assert "event=association_rejected" in text
    assert "event=store_refused" in text
    d = check_results(out, name)
    assert d["dicom"]["PatientID"] == "CAM-42"
    assert d["dicom"]["SOPInstanceUID"] == str(ds.SOPInstanceUID)
    assert d["image_size"] == {"height": rgb.shape[0], "width": rgb.shape[1]}
    assert entries(out / "incoming") == [] and os.listdir(out / "incoming" / ".partial") == []
    assert json.loads((out / "status.json").read_text())["received"] == 1


def test_decode_dicom_without_pydicom_names_the_extra(monkeypatch):
    from hemoseg_edge.inputs.dicom import decode_dicom

    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(InputImageError, match=r"\[service\]"):
        decode_dicom(b"\0" * 128 + b"DICM" + b"\0" * 100, "x.dcm")


# --- end to end with real images ---------------------------------------------------------------
@pytest.mark.data
def test_watch_end_to_end_real_images(tmp_path, tiny_model, capsys):
    require_data()
    images = idrid_images("test")[:2]
    in_dir, out = tmp_path / "in", tmp_path / "out"
    svc = ServiceProc(tmp_path, service_args(in_dir, out, tiny_model))
    svc.wait_for("event=started")
    for i, src in enumerate(images):  # the same name twice: the second becomes eye__2.jpg
        tmp = in_dir / ".eye.jpg.tmp"
        tmp.write_bytes(src.read_bytes())
        os.rename(tmp, in_dir / "eye.jpg")
        want = "eye.jpg" if i == 0 else "eye__2.jpg"
        wait_until(lambda w=want: (out / "done" / w).exists(), 60, svc, want)
    assert main(["status", str(out)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["alive"] and status["processed"] == 2 and status["failed"] == 0
    assert svc.stop() == 0
    assert_clean_log(svc.text())
    for name, src in zip(("eye.jpg", "eye__2.jpg"), images, strict=True):
        d = check_results(out, name)
        h, w = cv2.imread(str(src), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape
        assert (d["image_size"]["height"] // 8, d["image_size"]["width"] // 8) == (h, w)
        assert (out / "done" / name).read_bytes() == src.read_bytes()
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"


def test_bad_setup_is_one_line_and_exit_2(tmp_path, tiny_model, capfd):
    same = tmp_path / "x"
    assert main(["watch", str(same), "--out", str(same), "--model", str(tiny_model)]) == 2
    err = capfd.readouterr().err
    assert "event=fatal" in err and "Traceback" not in err
    assert main(["status", str(tmp_path / "nowhere")]) == 1


def test_results_are_named_as_segment_names_them_and_stems_stay_apart(tmp_path):
    """``photo.jpg`` -> ``results/photo.json`` (as ``segment``); a ``photo.png`` arriving after
    it, done or still at work, is claimed as ``photo__2.png`` so no result is overwritten."""
    lay = Layout.create(tmp_path / "in", tmp_path / "out")
    assert result_names("photo.jpg") == (
        "photo_mask.png",
        "photo_overlay.jpg",
        "photo_report.jpg",
        "photo.json",
    )
    (lay.in_dir / "photo.jpg").write_bytes(b"a")
    assert lay.claim("photo.jpg") == "photo.jpg"
    (lay.in_dir / "photo.png").write_bytes(b"b")
    assert lay.claim("photo.png") == "photo__2.png"  # photo.jpg is still at work
    lay.finish_done("photo.jpg", {"photo.json": b"{}"})
    lay.finish_failed("photo__2.png", "bad")
    assert (lay.results / "photo.json").exists()  # the failure removed only its own results
    (lay.in_dir / "photo.tif").write_bytes(b"c")
    assert (
        lay.claim("photo.tif") == "photo__2.tif"
    )  # photo.json is photo.jpg's; the failed one has none


def test_dicom_receiver_survives_probes_and_idle_connections(tmp_path, tiny_model):
    """Ten TCP connects closed at once (a health probe) and 40 idle open connections do not
    block a camera: with pynetdicom's defaults (10 associations, 30 s timeouts) they held every
    slot for about 30 s. Idle peers are dropped after the network timeout."""
    pytest.importorskip("pynetdicom")
    import socket

    from pynetdicom import AE

    from hemoseg_edge.service.dicom import MAX_ASSOCIATIONS, NETWORK_TIMEOUT_S

    out = tmp_path / "out"
    svc = ServiceProc(
        tmp_path, ["dicom-listen", "--port", "0", *service_args(None, out, tiny_model)]
    )
    port = int(svc.wait_for(r"event=listening .*port=(\d+)").group(1))
    scu = AE(ae_title="CAMERA1")
    scu.add_requested_context("1.2.840.10008.1.1")

    def echo_ok() -> bool:
        assoc = scu.associate("127.0.0.1", port, ae_title="HEMOSEG")
        try:
            return assoc.is_established and assoc.send_c_echo().Status == 0
        finally:
            if assoc.is_established:
                assoc.release()

    for _ in range(10):  # connect and close at once
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    t0 = time.monotonic()
    assert echo_ok()
    assert time.monotonic() - t0 < 3
    idle = [
        socket.create_connection(("127.0.0.1", port), timeout=5)
        for _ in range(MAX_ASSOCIATIONS + 8)
    ]
    try:
        time.sleep(NETWORK_TIMEOUT_S + 3)
        for s in idle:  # each idle peer was dropped: reads end in EOF or a reset, no timeout
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass  # e.g. an A-ABORT PDU before the close
            except ConnectionResetError:
                pass
        t0 = time.monotonic()
        assert echo_ok()
        assert time.monotonic() - t0 < 3
    finally:
        for s in idle:
            s.close()
    assert svc.proc.poll() is None
    assert svc.stop() == 0
    assert_clean_log(svc.text())
