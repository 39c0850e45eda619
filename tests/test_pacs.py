"""Forwarding to a real PACS: Orthanc (Debian package ``orthanc``; ``make test`` installs it)
started on free loopback ports, queried over its REST API."""

from __future__ import annotations

import io
import json
import os
from collections import Counter

import corpus
import numpy as np
import orthanc as orthanc_fixture
import pytest
from test_service import (
    ServiceProc,
    assert_clean_log,
    entries,
    imread,
    service_args,
    wait_until,
)

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
if orthanc_fixture.available() is None:
    pytest.skip(
        "Orthanc binary absent (Debian package orthanc; `make system-deps` installs it)",
        allow_module_level=True,
    )

SEG, SR, SC = (
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.7",
)


@pytest.fixture
def pacs(tmp_path):
    o = orthanc_fixture.Orthanc(tmp_path / "orthanc")
    o.start()
    yield o
    o.stop()


def pending(out) -> list[str]:
    return [n for n in entries(out / "outbox") if n.endswith(".dcm")]


def stored(pacs) -> list:
    """Every instance in Orthanc, as pydicom datasets."""
    import pydicom

    return [pydicom.dcmread(io.BytesIO(pacs.instance_file(i))) for i in pacs.instances()]


def op_dataset(sample_image, patient_id: str):
    rgb = np.ascontiguousarray(corpus.small_copy(sample_image, 640)[:, :, ::-1])
    ds = corpus.make_dicom(rgb, patient_id=patient_id)
    ds.AccessionNumber = "ACC-7"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260510", "081403", "S1"
    return ds


def test_listener_forwards_seg_sr_sc_to_orthanc(tmp_path, tiny_model, sample_image, pacs):
    from pynetdicom import AE

    out = tmp_path / "out"
    svc = ServiceProc(
        tmp_path,
        ["dicom-listen", "--port", "0", "--forward", pacs.destination]
        + service_args(None, out, tiny_model),
    )
    port = int(svc.wait_for(r"event=listening .*port=(\d+)").group(1))
    src = op_dataset(sample_image, "CAM-77")
    scu = AE(ae_title="CAMERA1")
    scu.add_requested_context(corpus.OP_8BIT, corpus.EXPLICIT_LE)
    assoc = scu.associate("127.0.0.1", port, ae_title="HEMOSEG")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(src).Status == 0
    finally:
        assoc.release()
    wait_until(lambda: len(pacs.instances()) >= 3, 90, svc, "three objects in Orthanc")
    wait_until(lambda: not pending(out), 30, svc, "an empty outbox")
    assert svc.stop() == 0
    assert_clean_log(svc.text())

    got = {str(ds.SOPClassUID): ds for ds in stored(pacs)}
    assert set(got) == {SEG, SR, SC} and len(pacs.instances()) == 3  # the derived objects only
    for ds in got.values():  # patient and study copied unchanged
        for kw in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyID"):
            assert ds.get(kw) == src.get(kw), kw
        assert ds.StudyDate == "20260510"
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    seg, sr = got[SEG], got[SR]
    source_ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    source_ref = source_ref.SourceImageSequence[0]
    assert source_ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    ref_series = seg.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref_series.ReferencedInstanceSequence[0].ReferencedSOPClassUID == corpus.OP_8BIT
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Hemorrhage"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("tiny.onnx", "test-tiny")
    # the frames decoded back equal the full-resolution mask written beside the JSON
    mask = imread(out / "results" / f"{src.SOPInstanceUID}_mask.png") > 0  # named as segment
    assert mask.shape == (src.Rows, src.Columns)
    assert np.array_equal(seg.pixel_array.astype(bool), mask)
    import highdicom as hd

    hseg = hd.seg.Segmentation.from_dataset(seg)
    frames = hseg.get_pixels_by_source_instance([str(src.SOPInstanceUID)], segment_numbers=[1])
    assert np.array_equal(frames[0, :, :, 0].astype(bool), mask)
    # the SR's evidence: the source and the SEG
    evidence = {
        inst.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert evidence == {src.SOPInstanceUID, seg.SOPInstanceUID}
    d = json.loads((out / "results" / f"{src.SOPInstanceUID}.json").read_text())
    assert {k: v["sop_instance_uid"] for k, v in d["dicom_outputs"].items()} == {
        "seg": seg.SOPInstanceUID,
        "sr": sr.SOPInstanceUID,
        "sc": got[SC].SOPInstanceUID,
    }
    assert len(entries(out / "sent")) == 3
    status = json.loads((out / "status.json").read_text())
    assert status["forwarded"] == 3 and status["forward_pending"] == 0


def test_outage_and_kill9_each_object_arrives_once(tmp_path, tiny_model, sample_image, pacs):
    """PACS down while images are processed: objects wait in the outbox; the service dies
    (kill -9 stand-in) right after a C-STORE success, before its rename; restarted, with the
    PACS back: everything arrives, each SOP Instance UID once."""
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    pacs.stop()  # the outage
    sources = [op_dataset(sample_image, f"P-{i}") for i in range(2)]
    for i, ds in enumerate(sources):
        (in_dir / f"img{i}.dcm").write_bytes(corpus.dicom_bytes(ds))
    args = [*service_args(in_dir, out, tiny_model), "--forward", pacs.destination]
    args += ["--forward-backoff", "0.2", "--forward-max-backoff", "0.5"]
    svc = ServiceProc(tmp_path, args)
    wait_until(lambda: len(entries(out / "done")) == 2, 90, svc, "both inputs done")
    svc.wait_for("event=forward_unreachable")
    assert len(pending(out)) == 6
    assert svc.stop() == 0  # stopped with everything still in the outbox
    assert_clean_log(svc.text())

    pacs.start()  # back; the next run dies right after its first C-STORE success
    svc = ServiceProc(tmp_path, args, env={"HEMOSEG_TEST_CRASH_AT": "forward_stored"})
    assert svc.wait(60) == 99, svc.text()
    assert len(pacs.instances()) == 1  # stored, but still in the outbox: will be resent
    assert len(pending(out)) == 6

    svc = ServiceProc(tmp_path, args)
    wait_until(lambda: not pending(out), 60, svc, "the outbox to drain")
    assert svc.stop() == 0
    text = svc.text()
    assert_clean_log(text)
    assert text.count("event=forwarded ") == 6  # the crashed one was sent again
    objs = stored(pacs)
    uids = Counter(str(ds.SOPInstanceUID) for ds in objs)
    assert len(objs) == 6 and set(uids.values()) == {1}  # de-duplicated by SOP Instance UID
    assert Counter(str(ds.SOPClassUID) for ds in objs) == {SEG: 2, SR: 2, SC: 2}
    assert {str(ds.PatientID) for ds in objs} == {"P-0", "P-1"}
    assert sorted(entries(out / "sent")) == sorted(f"{u}.dcm" for u in uids)
    assert pacs.statistics()["CountInstances"] == 6
    assert not os.listdir(out / "outbox" / "failed")
