"""``hemoseg-edge dicom-listen``: a DICOM C-STORE SCP feeding the watched folder.

Only Ophthalmic Photography 8 Bit Image Storage and Secondary Capture Image Storage (plus
Verification, C-ECHO) are accepted; other SOP classes are refused at association negotiation,
calling AE titles outside ``--allow-ae`` (when given) are rejected. Each dataset is written to
``IN_DIR/.partial/``, fsynced and renamed to ``IN_DIR/<SOPInstanceUID>.dcm`` before success is
returned, so a camera may delete its copy once it has our answer.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable

from ..errors import install_hint
from .config import ListenerConfig, ServiceConfig
from .folders import Layout, fsync_dir
from .log import log
from .status import Status
from .watch import serve

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ACCEPTED_SOP_CLASSES = (OP_8BIT, SECONDARY_CAPTURE)
UNCOMPRESSED = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
)
COMPRESSED = (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


MAX_ASSOCIATIONS = 32
NETWORK_TIMEOUT_S = 5.0  # an open connection that sends nothing
DIMSE_TIMEOUT_S = 30.0  # between the messages of one association


def transfer_syntaxes() -> list[str]:
    """Uncompressed ones plus every compressed one that pydicom can decode here."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.x: offer uncompressed only
        return list(UNCOMPRESSED)
    usable = []
    for uid in COMPRESSED:
        try:
            if get_decoder(uid).is_available:
                usable.append(uid)
        except (NotImplementedError, ValueError):
            pass
    return [*UNCOMPRESSED, *usable]


def file_name(sop_instance_uid: object) -> str:
    uid = str(sop_instance_uid or "").strip()
    return (uid if _UID.fullmatch(uid) and len(uid) <= 64 else uuid.uuid4().hex) + ".dcm"


def start_listener(args: ListenerConfig, layout: Layout, status: Status) -> Callable[[], None]:
    """Start the SCP in background threads; returns the function that stops it."""
    try:
        from pynetdicom import AE, _config, evt
        from pynetdicom.dimse_primitives import C_STORE
    except ImportError:
        msg = f"dicom-listen needs pynetdicom: {install_hint('service')}"
        raise OSError(msg) from None
    # pynetdicom's own logging handlers raise on a C-STORE request without an Affected SOP
    # Instance UID, which stops the handlers after them (on_dimse_recv); we log for ourselves
    _config.LOG_HANDLER_LEVEL = "none"
    partial = layout.in_dir / ".partial"
    partial.mkdir(exist_ok=True)
    for old in os.listdir(partial):  # a crash mid-receive: the sender got no success, resends
        os.unlink(partial / old)

    ae = AE(ae_title=args.ae_title)
    # pynetdicom's defaults let 10 idle or half-open TCP connections (a port probe) hold every
    # association slot for 30 s: more slots, and idle peers dropped after a few seconds
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.network_timeout = NETWORK_TIMEOUT_S
    ae.acse_timeout = NETWORK_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.require_called_aet = True
    if args.allow_ae:
        ae.require_calling_aet = list(args.allow_ae)
    syntaxes = transfer_syntaxes()
    for uid in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(uid, syntaxes)
    ae.add_supported_context("1.2.840.10008.1.1")  # Verification

    def on_store(event) -> int:
        try:
            name = file_name(event.request.AffectedSOPInstanceUID)
            data = event.encoded_dataset()  # preamble + file meta + dataset, as received
            tmp = partial / f"{name}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, layout.in_dir / name)
            fsync_dir(layout.in_dir)
        except Exception as e:  # noqa: BLE001 - answer the sender, keep listening
            log("store_error", "error", error_type=type(e).__name__, msg=e)
            return OUT_OF_RESOURCES
        status.bump("received")
        log("received", file=name, calling_ae=event.assoc.requestor.ae_title, bytes=len(data))
        return SUCCESS

    def on_dimse_recv(event) -> None:
        """pynetdicom ignores a C-STORE request without an Affected SOP Instance UID (an
        invalid request) and sends nothing, so the sender waits out its DIMSE timeout; answer
        it at once with a failure status instead."""
        msg = event.message
        if type(msg).__name__ != "C_STORE_RQ":
            return
        cs = msg.command_set
        if str(cs.get("AffectedSOPInstanceUID", "") or "").strip():
            return
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = cs.get("MessageID")
        rsp.AffectedSOPClassUID = cs.get("AffectedSOPClassUID") or None
        rsp.Status = CANNOT_UNDERSTAND
        event.assoc.dimse.send_msg(rsp, msg.context_id)
        log(
            "store_refused",
            "warning",
            calling_ae=event.assoc.requestor.ae_title,
            reason="C-STORE request without an Affected SOP Instance UID",
        )

    def on_accepted(event) -> None:
        assoc = event.assoc
        refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
        log(
            "association",
            calling_ae=assoc.requestor.ae_title,
            address=assoc.requestor.address,
            refused_sop_classes=",".join(refused) or None,
        )

    def on_rejected(event) -> None:
        assoc = event.assoc
        log(
            "association_rejected",
            "warning",
            calling_ae=assoc.requestor.ae_title,
            address=assoc.requestor.address,
        )

    handlers: list = [
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_DIMSE_RECV, on_dimse_recv),
        (evt.EVT_ACCEPTED, on_accepted),
        (evt.EVT_REJECTED, on_rejected),
    ]
    try:
        server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
    except OSError as e:
        raise OSError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    assert server is not None  # block=False returns the server
    if args.host not in ("127.0.0.1", "::1", "localhost") and not args.allow_ae:
        log("open_listener", "warning", msg="listening beyond loopback without --allow-ae")
    log(
        "listening",
        host=args.host,
        port=server.server_address[1],
        ae_title=args.ae_title,
        allow_ae=",".join(args.allow_ae or []) or "any",
        transfer_syntaxes=len(syntaxes),
    )
    return server.shutdown


def run_dicom_listen(config: ServiceConfig, listener: ListenerConfig) -> int:
    """``dicom-listen``: the watch loop on ``config.in_dir`` plus the C-STORE receiver."""
    return serve(config, lambda layout, status: start_listener(listener, layout, status))
