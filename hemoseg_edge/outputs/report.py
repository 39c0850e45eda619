"""``report.csv``: one row per input of a batch, written atomically when the batch ends."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import atomic_write_bytes, printable_path
from ..result import SCORE_DECIMALS, SegmentationResult

REPORT_FIELDS = (
    "input",
    "status",
    "error",
    "hemorrhage_detected",
    "image_score",
    "burden_percent",
    "lesion_count",
    "lesion_area_px",
    "upper_left",
    "upper_right",
    "lower_left",
    "lower_right",
    "flags",
    "total_ms",
    "mask",
    "overlay",
    "report",
    "json",
)


def failed_row(path: str | Path, error: str) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(REPORT_FIELDS, "")
    row.update(input=printable_path(path), status="failed", error=printable_path(error))
    return row


def result_row(path: str | Path, result: SegmentationResult, files: dict[str, str]) -> dict:
    """An ungradable photograph's row leaves the findings empty (never 0)."""
    row: dict[str, object] = dict.fromkeys(REPORT_FIELDS, "")
    detected = result.hemorrhage_detected
    row.update(
        input=printable_path(path),
        status=result.status,
        error=";".join(result.ungradable_reasons),
        hemorrhage_detected="" if detected is None else int(detected),
        flags=";".join(result.flags),
        total_ms=f"{result.timings_ms.get('total', 0):.1f}",
        **files,
    )
    if result.gradable:
        row.update(
            image_score=f"{result.image_score:.{SCORE_DECIMALS}f}",
            burden_percent=f"{result.burden_percent:.4f}",
            lesion_count=len(result.lesions),
            lesion_area_px=result.lesion_area_px,
            **result.quadrant_counts,
        )
    return row


def write_report(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())
