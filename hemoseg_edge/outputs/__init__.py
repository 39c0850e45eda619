"""Outputs: every file the tools write for a result — per image (mask PNG, overlay JPEG, JSON),
per batch (``report.csv``) — and the write-behind that overlaps writing with inference. The CLI
and the service call this package; neither renders anything itself."""

from .per_image import OUTPUT_KINDS, output_names, render_outputs, summary_line, write_outputs
from .report import REPORT_FIELDS, failed_row, result_row, write_report
from .write_behind import write_behind

__all__ = [
    "OUTPUT_KINDS",
    "REPORT_FIELDS",
    "failed_row",
    "output_names",
    "render_outputs",
    "result_row",
    "summary_line",
    "write_behind",
    "write_outputs",
    "write_report",
]
