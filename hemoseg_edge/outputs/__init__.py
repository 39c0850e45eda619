"""Outputs: every file the tools write for a result — per image (mask PNG, overlay JPEG, JSON;
DICOM SEG, SR and SC: ``dicom_objects``), per batch (``report.csv``; ``report.html``:
``html_report``) — and the write-behind that overlaps writing with inference. The CLI and the
service call this package; neither renders anything itself."""

from .dicom_objects import (
    DICOM_OUTPUT_KINDS,
    DicomIdentity,
    DicomOutputUnavailable,
    dicom_output_names,
    render_dicom_outputs,
)
from .html_report import write_html_report
from .per_image import (
    OUTPUT_KINDS,
    output_names,
    plot,
    render_outputs,
    save,
    summary_line,
    write_outputs,
)
from .report import REPORT_FIELDS, failed_row, result_row, write_report
from .write_behind import write_behind

__all__ = [
    "DICOM_OUTPUT_KINDS",
    "DicomIdentity",
    "DicomOutputUnavailable",
    "OUTPUT_KINDS",
    "REPORT_FIELDS",
    "dicom_output_names",
    "failed_row",
    "output_names",
    "plot",
    "render_dicom_outputs",
    "render_outputs",
    "result_row",
    "save",
    "summary_line",
    "write_behind",
    "write_html_report",
    "write_outputs",
    "write_report",
]
