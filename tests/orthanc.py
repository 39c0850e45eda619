"""A throwaway Orthanc (the Debian ``orthanc`` package) on free loopback ports, for tests.

``Orthanc.start()`` writes a JSON configuration (loopback only, no authentication, a temporary
storage folder), starts the binary and waits for its REST API; ``stop()`` ends it; ``start()``
again reuses the same ports and storage (an outage and a return). The REST helpers use urllib.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

BINARY = "Orthanc"


def available() -> str | None:
    return shutil.which(BINARY) or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()), None
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, root: Path, aet: str = "ORTHANC"):
        self.root = root
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.config = root / "orthanc.json"
        (root / "storage").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps(
                {
                    "Name": "hemoseg-test",
                    "StorageDirectory": str(root / "storage"),
                    "IndexDirectory": str(root / "storage"),
                    "DicomAet": aet,
                    "DicomPort": self.dicom_port,
                    "HttpPort": self.http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": True,
                    "DicomAlwaysAllowStore": True,
                    "DicomServerEnabled": True,
                    "HttpServerEnabled": True,
                    "OverwriteInstances": False,
                    "StorageCompression": False,
                    "Plugins": [],
                    "ConcurrentJobs": 1,
                    "HttpThreadsCount": 4,
                    "DicomThreadsCount": 2,
                },
                indent=2,
            )
        )

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        p = self.root / "orthanc.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self, timeout: float = 60.0) -> Orthanc:
        exe = available()
        assert exe, "Orthanc binary not found"
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [exe, str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.root
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}):\n{self.log_text()}")
            try:
                self.get("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not come up within {timeout} s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    # --- REST ----------------------------------------------------------------------------------
    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read()

    def get(self, path: str):
        return json.loads(self.get_bytes(path))

    def instances(self) -> list[str]:
        return self.get("/instances")

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.get_bytes(f"/instances/{orthanc_id}/file")

    def statistics(self) -> dict:
        return self.get("/statistics")
