"""DICOM outputs (highdicom SEG, TID 1500 SR, SC) and the forward outbox, in process."""

from __future__ import annotations

import io
import time
from pathlib import Path

import corpus
import numpy as np
import pytest

pytest.importorskip("highdicom")
pytest.importorskip("pynetdicom")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from hemoseg_edge.outputs import DicomIdentity, render_dicom_outputs  # noqa: E402
from hemoseg_edge.segmenter import Segmenter  # noqa: E402
from hemoseg_edge.service.folders import Layout  # noqa: E402
from hemoseg_edge.service.outbox import Outbox, parse_destination  # noqa: E402
from hemoseg_edge.service.queue import Processor  # noqa: E402


@pytest.fixture(scope="module")
def seg(tiny_model):
    return Segmenter.from_engine(tiny_model, backend="onnxruntime")


@pytest.fixture
def op_file(tmp_path, sample_image) -> tuple[Path, pydicom.Dataset]:
    rgb = np.ascontiguousarray(corpus.small_copy(sample_image, 640)[:, :, ::-1])
    ds = corpus.make_dicom(rgb, patient_id="CAM-9")
    ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber = "19600101", "F", "A1"
    p = tmp_path / "eye.dcm"
    p.write_bytes(corpus.dicom_bytes(ds))
    return p, ds


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def content_items(ds) -> list:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(content_items(item))
    return out


def test_processor_writes_seg_sr_sc_from_an_op_input(seg, op_file):
    path, src = op_file
    out = Processor(seg).work(path, "eye.dcm")
    assert out.ok, out.reason
    names = ["eye_seg.dcm", "eye_sr.dcm", "eye_sc.dcm"]  # named as ``segment`` names them
    assert list(out.files)[-4:] == [*names, "eye.json"]  # before the JSON, still last
    assert "eye_mask.png" in out.files and "eye_overlay.jpg" in out.files
    assert list(out.forward) == names
    result = seg.segment(seg.load(path))
    s, r, c = (read(out.files[n]) for n in names)
    # SEG: binary, one segment, frames decoded back == the full-resolution mask
    assert s.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and s.SegmentationType == "BINARY"
    assert np.array_equal(s.pixel_array.astype(bool), result.mask)
    hseg = hd.seg.Segmentation.from_dataset(s)
    frames = hseg.get_pixels_by_source_instance([str(src.SOPInstanceUID)], segment_numbers=[1])
    assert np.array_equal(frames[0, :, :, 0].astype(bool), result.mask)
    seg_item = s.SegmentSequence[0]
    assert seg_item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"  # Hemorrhage
    assert seg_item.AnatomicRegionSequence[0].CodeValue == "5665001"  # Retina
    assert seg_item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "test-tiny"
    assert "FrameOfReferenceUID" not in s  # OP has none; the SEG takes the source's
    # patient and study copied unchanged into all three
    for ds in (s, r, c):
        for kw in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
            assert ds.get(kw) == src.get(kw), kw
        assert (ds.StudyInstanceUID, ds.AccessionNumber) == (src.StudyInstanceUID, "A1")
    # SR: TID 1500 with the numbers of the JSON
    assert r.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert r.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = content_items(r)
    nums = {
        i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.ValueType == "NUM"
    }
    assert nums["246206008"] == len(result.lesions)  # SCT Number of lesions
    assert nums["burden"] == pytest.approx(result.burden_percent, abs=1e-5)
    assert nums["image-score"] == pytest.approx(result.image_score, abs=1e-5)
    short = {"upper_left": "UL", "upper_right": "UR", "lower_left": "LL", "lower_right": "LR"}
    assert {q: nums[f"lesions-{short[q]}"] for q in short} == result.quadrant_counts
    codes = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning
        for i in items
        if i.ValueType == "CODE"
    }
    assert codes["Hemorrhage (image level)"] in ("Present", "Absent", "Indeterminate")
    assert codes["Image quality analysis"] in ("Gradable", "Ungradable")
    # SC: the overlay, same study
    assert c.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and c.SamplesPerPixel == 3
    # a second run (the redo after a crash) gives the same SOP Instance UIDs
    again = Processor(seg).work(path, "eye.dcm")
    assert [read(again.files[n]).SOPInstanceUID for n in names] == [
        x.SOPInstanceUID for x in (s, r, c)
    ]


def test_plain_image_gets_dicom_only_with_identity(seg, tmp_path, sample_image):
    p = tmp_path / "photo.jpg"
    p.write_bytes(corpus.jpeg(corpus.small_copy(sample_image, 640)))
    out = Processor(seg).work(p, "photo.jpg")
    assert out.ok and not out.forward and not any(n.endswith(".dcm") for n in out.files)
    result = seg.segment(seg.load(p))
    photo = corpus.small_copy(sample_image, 640)
    assert render_dicom_outputs(result, p, "photo.jpg", photo) == {}
    with pytest.raises(ValueError):
        DicomIdentity(patient_id="", study_instance_uid="1.2.3")
    ident = DicomIdentity(patient_id="PAT-1", study_instance_uid="1.2.826.0.1.3680043.9.1")
    files = render_dicom_outputs(result, p, "photo.jpg", photo, ident, photo)
    assert list(files) == ["photo.jpg_src.dcm", "photo.jpg_seg.dcm", "photo.jpg_sr.dcm"] + [
        "photo.jpg_sc.dcm"
    ]
    src, s = read(files["photo.jpg_src.dcm"]), read(files["photo.jpg_seg.dcm"])
    assert (src.PatientID, src.StudyInstanceUID) == ("PAT-1", "1.2.826.0.1.3680043.9.1")
    ref = s.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert np.array_equal(s.pixel_array.astype(bool), result.mask)
    assert all(read(d).PatientID == "PAT-1" for d in files.values())


def test_failed_redo_removes_dicom_results(tmp_path):
    lay = Layout.create(tmp_path / "in", tmp_path / "out")
    (lay.work / "x.dcm").write_bytes(b"junk")
    for n in ("x_seg.dcm", "x_sr.dcm", "x_sc.dcm", "x.json"):
        (lay.results / n).write_bytes(b"old")
    lay.finish_failed("x.dcm", "bad")
    assert sorted(p.name for p in lay.results.iterdir()) == []


def test_parse_destination():
    d = parse_destination("PACS@10.0.0.5:104")
    assert (d.ae_title, d.host, d.port) == ("PACS", "10.0.0.5", 104)
    assert parse_destination("A@[::1]:11112").host == "::1"
    for bad in ("PACS", "PACS@host", "@h:1", "A@h:0", "A@h:70000", "X" * 17 + "@h:1"):
        with pytest.raises(ValueError):
            parse_destination(bad)


def _refusing_scp(status: int):
    from pynetdicom import AE, evt

    ae = AE(ae_title="REFUSER")
    for uid in ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7"):
        ae.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    seen: list[str] = []

    def on_store(event):
        seen.append(str(event.request.AffectedSOPInstanceUID))
        return status

    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return server, seen


def test_outbox_refused_objects_end_in_failed_after_n_attempts(tmp_path, seg, op_file):
    path, _ = op_file
    objects = Processor(seg).work(path, "eye.dcm").forward
    server, seen = _refusing_scp(0xA700)  # out of resources, every time
    try:
        port = server.server_address[1]
        box = Outbox(tmp_path / "out", parse_destination(f"REFUSER@127.0.0.1:{port}"))
        box.max_attempts, box.backoff, box.max_backoff = 2, 0.01, 0.01
        box.enqueue(objects)
        assert len(box.pending()) == 3
        deadline = time.monotonic() + 30
        while box.pending() and time.monotonic() < deadline:
            box.drain_once()
            time.sleep(0.02)
    finally:
        server.shutdown()
    assert box.pending() == []
    failed = sorted(p.name for p in box.failed.iterdir())
    # SEG and SC refused twice each; the SR's SOP class was refused at negotiation, twice
    assert len([n for n in failed if n.endswith(".dcm")]) == 3
    reasons = [(box.failed / n).read_text() for n in failed if n.endswith(".reason.txt")]
    assert sum("0xA700" in r for r in reasons) == 2
    assert sum("negotiation" in r for r in reasons) == 1
    assert all("gave up after 2 attempts" in r for r in reasons)
    assert len(seen) == 4 and not list(box.sent.iterdir())
    assert not [n for n in box.dir.iterdir() if n.name.endswith(".attempts")]
    box.enqueue(objects)  # not in sent/: enqueued again (moved back by hand would do the same)
    assert len(box.pending()) == 3
