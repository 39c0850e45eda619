"""The service's settings, as one typed value (the CLI builds it from its arguments; any other
caller, e.g. a test or a supervisor written in Python, builds it directly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..backends import BackendName


@dataclass(frozen=True)
class ServiceConfig:
    in_dir: Path  # watched folder (dicom-listen: where received files land)
    out: Path  # work/, done/, failed/, results/, status.json
    model: str | None = None  # None: the shipped default model
    backend: BackendName = "auto"
    assume_defaults: bool = False  # accept a model without hemoseg metadata
    settle: float = 2.0  # seconds a file's size and mtime must stay unchanged
    rescan: float = 30.0  # seconds between full rescans of the input folder
    timeout: float = 120.0  # per-file limit in seconds
    queue_size: int = 32
    overlay_max_side: int = 2048
    inotify: bool = True  # False: rescans only (network mounts)
    dicom_outputs: bool = True  # DICOM inputs: also write _seg.dcm, _sr.dcm, _sc.dcm
    forward: str | None = None  # "AE@host:port": C-STORE the DICOM outputs there (outbox.py)
    forward_ae_title: str = "HEMOSEG"  # our calling AE title towards the destination
    forward_max_attempts: int = 8  # refusals of one object before outbox/failed/
    forward_backoff: float = 2.0  # first retry delay in seconds, doubled per try
    forward_max_backoff: float = 300.0  # cap on the retry delay


@dataclass(frozen=True)
class ListenerConfig:
    """The DICOM C-STORE receiver (``dicom-listen``)."""

    port: int = 11112
    host: str = "127.0.0.1"
    ae_title: str = "HEMOSEG"
    allow_ae: tuple[str, ...] = field(default_factory=tuple)  # calling AE titles; () = any
