"""DICOM outputs built with highdicom: a binary Segmentation (SEG), a TID 1500 measurement
report (Comprehensive SR) and a Secondary Capture (SC) of the overlay.

For a DICOM input the three objects reference the source instance and copy its patient and
study attributes unchanged (highdicom copies them from the source dataset). A plain image
(JPEG, PNG, ...) has no patient: DICOM objects are made for it only when the caller supplies a
``DicomIdentity``; the photograph is then wrapped first in a Secondary Capture (``_src.dcm``)
that the SEG and SR reference.

UIDs are derived deterministically from the source (SOP Instance UID, or the identity and the
file's bytes) and the output name: processing the same input again after a crash gives the
same SOP Instance UIDs, so a PACS that de-duplicates by SOP Instance UID stores each object once.

highdicom and pydicom are optional (the ``[service]`` extra) and imported on first use.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import install_hint
from ..result import SegmentationResult

DICOM_OUTPUT_KINDS = ("seg", "sr", "sc")
MANUFACTURER = "hemoseg-edge"
PRIVATE_SCHEME = "99HEMOSEG"  # private coding scheme ("99" prefix) for concepts SNOMED lacks
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
_QUADRANT_CODES = {  # private code values (SH: at most 16 characters)
    "upper_left": "lesions-UL",
    "upper_right": "lesions-UR",
    "lower_left": "lesions-LL",
    "lower_right": "lesions-LR",
}
# highdicom's SCImage insists on a Patient Orientation; the SC's is then replaced by the
# source's (Type 2: empty when unknown), so this placeholder never reaches a file
_PLACEHOLDER_ORIENTATION = ("L", "F")
_SERIES_NUMBERS = {"seg": 9001, "sr": 9002, "sc": 9003, "src": 9000}


class DicomOutputUnavailable(RuntimeError):
    """highdicom/pydicom are not installed (the [service] extra: ``errors.install_hint``)."""


@dataclass(frozen=True)
class DicomIdentity:
    """Patient and study identifiers for a plain image (never invented: the user gives them)."""

    patient_id: str
    study_instance_uid: str
    patient_name: str | None = None
    patient_birth_date: str | None = None  # YYYYMMDD
    patient_sex: str | None = None  # M, F, O
    accession_number: str | None = None
    study_id: str | None = None
    study_date: str | None = None  # YYYYMMDD
    study_time: str | None = None  # HHMMSS
    laterality: str | None = None  # R or L (image laterality), when known

    def __post_init__(self) -> None:
        if not str(self.patient_id).strip():
            raise ValueError("DicomIdentity needs a patient_id")
        uid = str(self.study_instance_uid)
        if not uid or len(uid) > 64 or not all(p.isdigit() for p in uid.split(".")):
            raise ValueError(f"not a DICOM UID: {uid!r}")


def dicom_output_names(stem: str) -> dict[str, str]:
    """``{kind: file name}`` for the SEG, SR and SC of one input (plus ``src`` for plain images)."""
    return {k: f"{stem}_{k}.dcm" for k in (*DICOM_OUTPUT_KINDS, "src")}


def _modules():
    try:
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes
    except ImportError:
        raise DicomOutputUnavailable(
            f"DICOM output needs highdicom: {install_hint('service')}"
        ) from None
    return hd, pydicom, codes


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["hemoseg-edge", *parts]))


def _private(code: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(code, PRIVATE_SCHEME, meaning)


def _ucum(unit: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(unit, "UCUM", meaning)


def _software_version(result: SegmentationResult) -> str:
    from ..version import __version__

    return f"hemoseg-edge {__version__}; model {result.model.get('version', 'unknown')}"


def _algorithm(result: SegmentationResult) -> tuple[str, str]:
    name = result.model.get("source") or "hemoseg-edge model"
    return str(name)[:64], str(result.model.get("version") or "unknown")[:64]


def source_capture(photo_rgb: np.ndarray, identity: DicomIdentity, key: str):
    """A plain photograph as a Secondary Capture carrying the user's identifiers (the source
    the SEG and SR reference). Uncompressed: the pixels are the decoded photograph's."""
    hd, _, _ = _modules()
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(photo_rgb, np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=identity.study_instance_uid,
        series_instance_uid=_uid(key, "src-series"),
        series_number=_SERIES_NUMBERS["src"],
        sop_instance_uid=_uid(key, "src"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_id=identity.patient_id,
        patient_name=identity.patient_name,
        patient_birth_date=identity.patient_birth_date,
        patient_sex=identity.patient_sex,
        accession_number=identity.accession_number,
        study_id=identity.study_id,
        study_date=identity.study_date,
        study_time=identity.study_time,
        laterality=identity.laterality,
        patient_orientation=_PLACEHOLDER_ORIENTATION,
    )
    sc.PatientOrientation = None  # unknown for a plain photograph
    return sc


def build_segmentation(source, result: SegmentationResult, key: str):
    """Binary SEG, one segment "Hemorrhage" (SCT 50960005) in the retina, the full-resolution
    mask as its one frame, referencing ``source`` (same Frame of Reference when it has one)."""
    hd, _, codes = _modules()
    name, version = _algorithm(result)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=name,
        family=codes.DCM.ArtificialIntelligence,
        version=version,
        source=MANUFACTURER,
        parameters={"threshold": f"{result.threshold:g}"},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Hemorrhage",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Hemorrhage,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=_uid(key, "segment-1"),
        tracking_id="hemorrhage",
        anatomic_regions=[codes.SCT.Retina],
    )
    mask = result.mask
    if mask.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"mask {mask.shape} does not match the source image")
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask.astype(np.uint8)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=_uid(key, "seg-series"),
        series_number=_SERIES_NUMBERS["seg"],
        sop_instance_uid=_uid(key, "seg"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="hemoseg-edge",
        software_versions=_software_version(result),
        device_serial_number="0",
        content_label="HEMORRHAGE",
        content_description="Retinal hemorrhage segmentation",
        omit_empty_frames=False,
    )
    # General Image: Patient Orientation is Type 2C without a Frame of Reference: the
    # source's own value (empty when it has none)
    seg.PatientOrientation = source.get("PatientOrientation") or None
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures is not None and (not measures or not any(len(m) for m in measures)):
        del shared.PixelMeasuresSequence  # the source has no pixel spacing
    return seg


def build_report(source, result: SegmentationResult, key: str, seg=None):
    """TID 1500 measurement report in a Comprehensive SR: one measurement group (TID 1501) with
    the burden, lesion count, per-quadrant counts and image score as measurements, the verdict
    and the quality flags as qualitative evaluations, the model as algorithm identification."""
    hd, _, codes = _modules()
    from pydicom.dataset import Dataset

    sr = hd.sr
    name, version = _algorithm(result)
    params = [f"{k}={v}" for k, v in sorted(result.model.items()) if k not in ("version",)]
    algo = sr.AlgorithmIdentification(name=name, version=version, parameters=params or None)
    verdict = {
        True: codes.SCT.Present,
        False: codes.SCT.Absent,
        None: codes.SCT.Indeterminate,
    }[result.hemorrhage_detected]
    qualitative = [
        sr.QualitativeEvaluation(_private("verdict", "Hemorrhage (image level)"), verdict),
    ]
    flags = list(result.flags)
    gradable = "low_quality" not in flags and "no_fov_found" not in flags
    qualitative.append(
        sr.QualitativeEvaluation(
            codes.SCT.ImageQualityAnalysis,
            _private("gradable", "Gradable") if gradable else _private("ungradable", "Ungradable"),
        )
    )
    for flag in flags:
        qualitative.append(
            sr.QualitativeEvaluation(
                _private("quality-flag", "Quality flag"), _private(flag, flag.replace("_", " "))
            )
        )
    count_unit = _ucum("{lesions}", "lesions")
    measurements = [
        sr.Measurement(
            name=_private("burden", "Hemorrhage burden, percent of field of view"),
            value=round(float(result.burden_percent), 6),
            unit=_ucum("%", "percent"),
            algorithm_id=algo,
        ),
        sr.Measurement(
            name=codes.SCT.NumberOfLesions,
            value=len(result.lesions),
            unit=count_unit,
            algorithm_id=algo,
        ),
        sr.Measurement(
            name=_private("image-score", "Hemorrhage image score"),
            value=round(float(result.image_score), 6),
            unit=_ucum("1", "no units"),
            algorithm_id=algo,
        ),
    ]
    for q, n in result.quadrant_counts.items():
        measurements.append(
            sr.Measurement(
                name=_private(
                    _QUADRANT_CODES[q], f"Number of lesions, {q.replace('_', ' ')} quadrant"
                ),
                value=n,
                unit=count_unit,
                algorithm_id=algo,
            )
        )
    group = sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=sr.TrackingIdentifier(
            uid=_uid(key, "finding"), identifier="hemorrhage"
        ),
        finding_type=codes.SCT.Hemorrhage,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        finding_sites=[sr.FindingSite(codes.SCT.Retina)],
        algorithm_id=algo,
        measurements=measurements,
        qualitative_evaluations=qualitative,
        source_images=[sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    device = sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("device", MANUFACTURER),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=f"{name} {version}"[:64],
        ),
    )
    report = sr.MeasurementReport(
        observation_context=sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[group],
        referenced_images=[source],
    )
    evidence = [source] + ([seg] if seg is not None else [])
    doc = sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=_uid(key, "sr-series"),
        series_number=_SERIES_NUMBERS["sr"],
        sop_instance_uid=_uid(key, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "hemoseg-edge private codes (docs/integration.md)"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    doc.CodingSchemeIdentificationSequence = [scheme]
    return doc


def build_capture(source, overlay_rgb: np.ndarray, key: str):
    """The overlay (outlines + summary line) as a Secondary Capture in the source's study."""
    hd, _, _ = _modules()
    laterality = str(source.get("ImageLaterality") or source.get("Laterality") or "") or None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(overlay_rgb, np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=_uid(key, "sc-series"),
        series_number=_SERIES_NUMBERS["sc"],
        sop_instance_uid=_uid(key, "sc"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        laterality=laterality if laterality in ("R", "L") else None,
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.PatientOrientation = source.get("PatientOrientation") or None
    return sc


_SERIES_DESCRIPTIONS = {
    "src": "hemoseg-edge source photograph",
    "seg": "hemoseg-edge hemorrhage segmentation",
    "sr": "hemoseg-edge hemorrhage report",
    "sc": "hemoseg-edge hemorrhage overlay",
}


def _encode(ds, kind: str) -> bytes:
    ds.SeriesDescription = _SERIES_DESCRIPTIONS[kind]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# Type 2 attributes of the Patient and General Study modules: required to be present, may be
# empty ("unknown"); highdicom copies them from the source, so one that the source omits is
# added empty to our in-memory copy of its header (the values it has are never changed)
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _read_source(path: str | os.PathLike):
    _, pydicom, _ = _modules()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, None)
    _as_multiframe(ds)
    return ds


def _as_multiframe(ds) -> None:
    """highdicom reads an image of a multi-frame capable IOD (OP is one) as an enhanced
    multi-frame image: it wants NumberOfFrames and a Shared Functional Groups item with the
    pixel measures. Give our in-memory copy of the header those (from Pixel Spacing, when the
    source has it; otherwise empty, and removed from the SEG again in ``build_segmentation``)."""
    from pydicom.dataset import Dataset

    if "NumberOfFrames" not in ds:
        ds.NumberOfFrames = 1
    if "SharedFunctionalGroupsSequence" not in ds:
        measures = Dataset()
        if ds.get("PixelSpacing"):
            measures.PixelSpacing = ds.PixelSpacing
        item = Dataset()
        item.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [item]


def render_dicom_outputs(
    result: SegmentationResult,
    path: str | os.PathLike,
    stem: str,
    overlay_bgr: np.ndarray,
    identity: DicomIdentity | None = None,
    photo_bgr: np.ndarray | None = None,
) -> dict[str, bytes]:
    """``{file name: bytes}`` of the SEG, SR and SC (``_src.dcm`` first for a plain image).

    ``path`` is the input: a DICOM file is the source (its header is read again here); any
    other file gets DICOM outputs only with ``identity`` (else ``{}``), and then ``photo_bgr``
    (the decoded photograph at its own size) is wrapped as the source Secondary Capture."""
    data = Path(path).read_bytes()
    names = dicom_output_names(stem)
    files: dict[str, bytes] = {}
    if len(data) > 132 and data[128:132] == b"DICM":
        source = _read_source(path)
        key = f"{source.SOPInstanceUID}|{stem}"
    elif identity is None:
        return {}
    else:
        if photo_bgr is None:
            raise ValueError("a plain image needs photo_bgr for its source Secondary Capture")
        key = f"{identity.patient_id}|{identity.study_instance_uid}|{stem}|"
        key += hashlib.sha256(data).hexdigest()
        source = source_capture(photo_bgr[..., ::-1], identity, key)
        files[names["src"]] = _encode(source, "src")
    seg = build_segmentation(source, result, key)
    files[names["seg"]] = _encode(seg, "seg")
    files[names["sr"]] = _encode(build_report(source, result, key, seg), "sr")
    files[names["sc"]] = _encode(build_capture(source, overlay_bgr[..., ::-1], key), "sc")
    return files
