"""``hemoseg-edge serve``: the HTTP API, tested over real loopback HTTP against a server
process started here (``--port 0``; the port is read from its ``http_listening`` log line)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the HTTP API needs the [http] extra")
pytest.importorskip("uvicorn", reason="the HTTP API needs the [http] extra")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "IDRiD_55.jpg"
TOKEN = "s3cret-token"


class Server:
    """A ``hemoseg-edge serve`` subprocess on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
        cmd = [sys.executable, "-m", "hemoseg_edge", "serve", "--port", "0", *args]
        full_env = {**os.environ, "HEMOSEG_TOKEN": "", **(env or {})}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        self.lines: list[str] = []
        self._port: list[int] = []
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(timeout) or not self._port:
            self.kill()
            raise AssertionError("server did not start:\n" + "\n".join(self.lines[-20:]))
        self.port = self._port[0]
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no /health:\n" + "\n".join(self.lines[-20:])
            time.sleep(0.1)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            m = re.search(r"event=http_listening url=http://127\.0\.0\.1:(\d+)", line)
            if m:
                self._port.append(int(m.group(1)))
                self._ready.set()
        self._ready.set()  # exited before listening

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None):
        own = conn is None
        c = conn or self.connection()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            if own:
                c.close()

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_one_line_error(status: int, body: bytes, expected: int | tuple[int, ...]) -> str:
    codes = expected if isinstance(expected, tuple) else (expected,)
    assert status in codes, (status, body[:300])
    data = json.loads(body)
    assert list(data) == ["error"], data
    msg = data["error"]
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def multipart(data: bytes, filename: str, field: str = "file") -> tuple[bytes, str]:
    boundary = "hemosegtestboundary7d3a"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def image() -> bytes:
    return SAMPLE.read_bytes()


@pytest.fixture(scope="module")
def server(tiny_model):
    """Tiny model, bearer token, 1 MB body limit, 3 s to send a body, 16 requests at once."""
    s = Server(
        "--model",
        str(tiny_model),
        "--token",
        TOKEN,
        "--max-bytes",
        "1000000",
        "--queue",
        "16",
        "--read-timeout",
        "3",
    )
    yield s
    assert s.stop() == 0, "\n".join(s.lines[-20:])
    assert not any("Traceback" in line or "level=error" in line for line in s.lines), s.lines


@pytest.fixture(scope="module")
def reference(server, image) -> dict:
    status, _, body = server.request("POST", "/v1/segment?name=IDRiD_55.jpg", image, auth())
    assert status == 200, body[:300]
    return json.loads(body)


def test_health_version_and_docs_open(server, tiny_model):
    status, _, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = server.request("GET", "/version", headers=auth())
    v = json.loads(body)
    assert status == 200
    assert v["tool"] == "hemoseg-edge" and v["version"]
    assert v["model"]["name"] == "tiny.onnx" and v["model"]["version"] == "test-tiny"
    import hashlib

    assert v["model"]["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert v["backend"] in ("onnxruntime", "openvino")
    status, _, body = server.request("GET", "/openapi.json")
    assert status == 200 and "/v1/segment" in json.loads(body)["paths"]
    assert server.request("GET", "/docs")[0] == 200


def test_segment_json_raw_and_multipart(server, image, reference):
    d = reference
    assert d["input"] == "IDRiD_55.jpg"
    assert d["image_size"] == {"height": 2848, "width": 4288}
    assert d["model"]["name"] == "tiny.onnx" and len(d["model"]["sha256"]) == 64
    assert d["tool"]["name"] == "hemoseg-edge"
    for key in ("burden_percent", "lesion_count", "lesions", "flags"):
        assert key in d
    body, ctype = multipart(image, "../../etc/IDRiD_55.jpg")
    status, _, out = server.request("POST", "/v1/segment", body, {**auth(), "Content-Type": ctype})
    assert status == 200, out[:300]
    m = json.loads(out)
    assert m["input"] == "IDRiD_55.jpg"  # the client's path is reduced to a base name
    assert m["lesion_count"] == d["lesion_count"]
    assert m["burden_percent"] == d["burden_percent"]


def test_segment_overlay_and_mask(server, image, reference):
    import cv2
    import numpy as np

    status, headers, jpg = server.request("POST", "/v1/segment?return=overlay", image, auth())
    assert status == 200 and headers["content-type"] == "image/jpeg" and jpg[:3] == b"\xff\xd8\xff"
    assert int(headers["x-hemoseg-lesion-count"]) == reference["lesion_count"]
    overlay = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert max(overlay.shape[:2]) == 2048
    status, headers, png = server.request("POST", "/v1/segment?return=mask", image, auth())
    assert status == 200 and headers["content-type"] == "image/png"
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (2848, 4288)
    assert int((mask > 0).sum()) == reference["lesion_area_px"]


def test_bad_inputs_get_one_line_4xx(server, image):
    cases = {
        "empty": (b"", 400),
        "text": (b"hello, this is not an image\n" * 10, 422),
        "truncated": (image[: len(image) // 3], 422),
        "header only": (image[:200], 422),
    }
    for what, (body, code) in cases.items():
        status, _, out = server.request("POST", "/v1/segment", body, auth())
        msg = assert_one_line_error(status, out, code)
        assert msg, what
    no_file, ctype = multipart(b"x", "a.jpg", field="file")
    no_file = no_file.replace(b'; filename="a.jpg"', b"")  # a plain field, no file part
    status, _, out = server.request(
        "POST", "/v1/segment", no_file, {**auth(), "Content-Type": ctype}
    )
    assert_one_line_error(status, out, 400)
    broken = b"--nothing-here\r\n\r\n"
    status, _, out = server.request(
        "POST", "/v1/segment", broken, {**auth(), "Content-Type": "multipart/form-data; boundary=x"}
    )
    assert_one_line_error(status, out, 400)
    status, _, out = server.request("POST", "/v1/segment?return=nope", image, auth())
    assert_one_line_error(status, out, 422)
    assert_one_line_error(*server.request("GET", "/v1/segment", headers=auth())[::2], 405)
    assert_one_line_error(*server.request("GET", "/nowhere")[::2], 404)
    assert server.request("GET", "/health")[0] == 200  # still serving


def test_token_required(server, image):
    for headers in ({}, auth("wrong"), {"Authorization": f"Basic {TOKEN}"}, auth("")):
        status, h, out = server.request("POST", "/v1/segment", image, headers)
        assert_one_line_error(status, out, 401)
        assert h.get("www-authenticate") == "Bearer"
    assert_one_line_error(*server.request("GET", "/version")[::2], 401)


def test_oversized_body_refused_before_it_is_read(server):
    c = server.connection(timeout=30)
    try:  # declares 1 GB and sends none of it: the 413 comes from the header alone
        c.putrequest("POST", "/v1/segment")
        c.putheader("Content-Length", str(10**9))
        for k, v in auth().items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        assert_one_line_error(r.status, r.read(), 413)
    finally:
        c.close()
    c = server.connection(timeout=30)
    try:  # chunked, no Content-Length: cut off while reading
        c.putrequest("POST", "/v1/segment")
        c.putheader("Transfer-Encoding", "chunked")
        for k, v in auth().items():
            c.putheader(k, v)
        c.endheaders()
        chunk = b"\xff\xd8\xff" + b"\0" * (64 * 1024 - 3)
        try:
            for _ in range(18):  # 1.18 MB > the 1 MB limit
                c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            c.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the end: fine
        r = c.getresponse()
        assert_one_line_error(r.status, r.read(), 413)
    finally:
        c.close()


def test_slow_body_times_out_and_frees_its_slot(server, image):
    c = server.connection(timeout=30)
    try:
        c.putrequest("POST", "/v1/segment")
        c.putheader("Content-Length", str(len(image)))
        for k, v in auth().items():
            c.putheader(k, v)
        c.endheaders()
        c.send(image[:1000])  # and nothing more
        t0 = time.monotonic()
        r = c.getresponse()
        assert_one_line_error(r.status, r.read(), 408)
        assert time.monotonic() - t0 < 20
    finally:
        c.close()
    assert json.loads(server.request("GET", "/health")[2])["in_flight"] == 0


def test_concurrent_clients_correct_and_memory_flat(server, image, reference):
    def one_client(_i: int) -> list[tuple[int, dict]]:
        c = server.connection()
        out = []
        try:
            for _ in range(2):
                status, _, body = server.request("POST", "/v1/segment", image, auth(), conn=c)
                out.append((status, json.loads(body)))
        finally:
            c.close()
        return out

    one_client(0)  # warm every code path before the first RSS reading
    before = server.rss()
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(one_client, range(8)) for a in batch]
    elapsed = time.monotonic() - t0
    after = server.rss()
    assert len(answers) == 16
    for status, d in answers:
        assert status == 200, d
        assert d["lesion_count"] == reference["lesion_count"]
        assert d["burden_percent"] == reference["burden_percent"]
    assert elapsed < 180, elapsed
    assert after - before < 150 * 2**20, (before, after)
    health = json.loads(server.request("GET", "/health")[2])
    assert health["in_flight"] == 0 and health["refused"] == 0


def _hold_slot(server: Server, image: bytes) -> http.client.HTTPConnection:
    """Start a request and send half its body: it holds a queue slot until finished."""
    c = server.connection()
    c.putrequest("POST", "/v1/segment?name=held.jpg")
    c.putheader("Content-Length", str(len(image)))
    for k, v in auth().items():
        c.putheader(k, v)
    c.endheaders()
    c.send(image[: len(image) // 2])
    deadline = time.monotonic() + 30
    while json.loads(server.request("GET", "/health")[2])["in_flight"] < 1:
        assert time.monotonic() < deadline, "the held request never took its slot"
        time.sleep(0.05)
    return c


def _finish(c: http.client.HTTPConnection, image: bytes) -> tuple[int, dict]:
    c.send(image[len(image) // 2 :])
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def test_queue_full_503_retry_after_and_graceful_sigterm(tiny_model, image):
    s = Server("--model", str(tiny_model), "--queue", "1", env={"HEMOSEG_TOKEN": TOKEN})
    try:
        assert s.request("POST", "/v1/segment", image)[0] == 401  # the env token is in force
        held = _hold_slot(s, image)
        status, headers, body = s.request("POST", "/v1/segment", image, auth())
        assert_one_line_error(status, body, 503)
        assert int(headers["retry-after"]) >= 1
        status, d = _finish(held, image)
        assert status == 200 and d["input"] == "held.jpg"
        reference = d

        def fire(_i: int):
            return s.request("POST", "/v1/segment", image, auth())

        with ThreadPoolExecutor(6) as pool:  # bursts: each answer is a result or a clean 503
            answers = list(pool.map(fire, range(6)))
        codes = [a[0] for a in answers]
        assert set(codes) <= {200, 503} and 200 in codes, codes
        for status, headers, body in answers:
            if status == 503:
                assert int(headers["retry-after"]) >= 1
                assert_one_line_error(status, body, 503)
            else:
                assert json.loads(body)["lesion_count"] == reference["lesion_count"]

        held = _hold_slot(s, image)  # SIGTERM with a request in flight: it still completes
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, d = _finish(held, image)
        assert status == 200 and d["lesion_count"] == reference["lesion_count"]
        assert s.proc.wait(60) == 0
        assert any("event=http_stopped signal=SIGTERM" in line for line in s.lines)
        assert not any("Traceback" in line for line in s.lines), "\n".join(s.lines)
    finally:
        s.kill()


@pytest.mark.slow
def test_same_numbers_as_segmenter_with_the_shipped_model(image):
    from hemoseg_edge import Segmenter

    s = Server("--no-access-log")
    try:
        version = json.loads(s.request("GET", "/version")[2])
        status, _, body = s.request("POST", "/v1/segment?name=IDRiD_55.jpg", image)
        assert status == 200, body[:300]
        served = json.loads(body)
    finally:
        assert s.stop() == 0
    seg = Segmenter.from_engine()
    assert os.path.basename(seg.source) == version["model"]["name"] == served["model"]["name"]
    assert seg.backend.name == version["backend"]
    local = seg.segment(SAMPLE)
    assert served["lesion_count"] == len(local.lesions)
    assert served["burden_percent"] == round(local.burden_percent, 4)
    assert served["lesion_area_px"] == local.lesion_area_px
    assert served["image_score"] == round(local.image_score, 6)
    assert served["model"]["version"] == seg.metadata.version


def test_internal_error_is_a_one_line_500(image):
    """A bug in the processing (here a fake engine that raises) answers 500 with one line."""
    import socket
    import types

    import uvicorn

    from hemoseg_edge.service.http import HttpConfig, create_app

    class BrokenEngine:
        workers = 1
        pool = ThreadPoolExecutor(1)
        identity = {"name": "fake.onnx"}
        seg = types.SimpleNamespace(backend=types.SimpleNamespace(name="fake"))

        def process(self, data, name, want):
            raise RuntimeError("boom\nTraceback (most recent call last): second line")

    app = create_app(BrokenEngine(), HttpConfig(access_log=False))
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v1/segment", body=image)
        r = c.getresponse()
        body = r.read()
        c.close()
        assert r.status == 500
        msg = json.loads(body)["error"]
        assert msg == "internal error (RuntimeError); see the server log"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        BrokenEngine.pool.shutdown()
