"""The results table: its schema, its rows, and how rows are committed so that every input ends
with exactly one row per model.

Layout under DST::

    results.parquet                     the table: one row per (input, model_sha256)
    _parts/<model_sha256>/part-<key>.parquet   rows of one batch, committed by atomic rename
    outputs/<model_sha256[:12]>/<stem>_mask.png, _overlay.jpg, .json (``OUTPUT_KINDS``)

A worker writes a batch's output files, then its rows as one part file named by the batch's
content key (``part_key``: the model's sha256 and the batch's inputs), written to a temporary
name and renamed: a part is there whole or not at all, and a retried batch writes the same name.
The table is the de-duplicated union of ``results.parquet`` and every part (``compact``): for
each (input, model_sha256) the newest row (``processed_at``). A killed worker or driver leaves at
worst a batch with no part (redone) or parts not yet folded into the table (folded next time).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from datetime import datetime, timezone

from ..outputs import OUTPUT_KINDS
from ..result import QUADRANTS, SegmentationResult
from .store import Store

RESULTS = "results.parquet"
PARTS = "_parts"
OUTPUTS = "outputs"
STATUSES = ("ok", "ungradable", "failed")


def _schema():
    import pyarrow as pa

    i32, i64, f64, s = pa.int32(), pa.int64(), pa.float64(), pa.string()
    return pa.schema(
        [
            ("input", s),
            ("input_sha256", s),
            ("input_bytes", i64),
            ("status", s),
            ("reason", s),
            ("flags", pa.list_(s)),
            ("hemorrhage_detected", pa.bool_()),
            ("image_score", f64),
            ("burden_percent", f64),
            ("lesion_count", i32),
            ("lesion_area_px", i64),
            ("fov_area_px", i64),
            *((q, i32) for q in QUADRANTS),
            *((kind, s) for kind in OUTPUT_KINDS),  # the output files' names (mask, ...)
            ("model_name", s),
            ("model_version", s),
            ("model_sha256", s),
            ("backend", s),
            ("worker", s),
            ("total_ms", f64),
            ("processed_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def schema():
    """The table's pyarrow schema (built on first use: pyarrow is the [archive] extra)."""
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = _schema()
    return _SCHEMA


_SCHEMA = None


def status_of(result: SegmentationResult) -> tuple[str, str]:
    """``(status, reason)`` of a processed image, from the result: "ok", or "ungradable" with
    the flags that make it so (``result.status`` / ``ungradable_reasons``; a runtime without a
    gradability verdict gives "ok")."""
    status = getattr(result, "status", "ok")
    if status == "ungradable":
        return status, "; ".join(getattr(result, "ungradable_reasons", ()))
    return "ok", ""


def printable(name: str) -> str:
    """A file name as valid UTF-8 (bytes that are not become ``\\xNN``): Parquet strings."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text[:limit]


def _now():
    return datetime.now(timezone.utc)


def base_row(name: str, model: dict, worker: str) -> dict:
    row: dict = dict.fromkeys(schema().names)
    row.update(input=printable(name), flags=[], worker=worker, processed_at=_now(), **model)
    return row


def result_fields(result: SegmentationResult, outputs: dict[str, str]) -> dict:
    """An ungradable photograph's findings stay null (never 0), as in ``report.csv``."""
    status, reason = status_of(result)
    fields = dict(
        status=status,
        reason=reason,
        flags=list(result.flags),
        hemorrhage_detected=result.hemorrhage_detected,
        fov_area_px=int(result.fov_area_px),
        total_ms=float(result.timings_ms.get("total", 0.0)),
        backend=result.model.get("backend"),
        **{k: printable(v) for k, v in outputs.items()},
    )
    if status == "ok":
        fields.update(
            image_score=float(result.image_score),
            burden_percent=float(result.burden_percent),
            lesion_count=len(result.lesions),
            lesion_area_px=int(result.lesion_area_px),
            **result.quadrant_counts,
        )
    return fields


def failed_fields(reason: str) -> dict:
    return dict(status="failed", reason=one_line(printable(reason)))


# --- part files -----------------------------------------------------------------------------
def part_key(model_sha256: str, inputs: Iterable[str]) -> str:
    """The content key of one batch: the same batch (a retried task) gets the same part name."""
    h = hashlib.sha256(model_sha256.encode())
    for name in inputs:
        h.update(b"\0" + os.fsencode(name))
    return h.hexdigest()[:32]


def outputs_dir(dst: str, model_sha256: str) -> str:
    return Store.join(dst, OUTPUTS, model_sha256[:12])


def parts_dir(dst: str, model_sha256: str) -> str:
    return Store.join(dst, PARTS, model_sha256)


def part_name(dst: str, model_sha256: str, key: str) -> str:
    return Store.join(parts_dir(dst, model_sha256), f"part-{key}.parquet")


def to_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema()), buf)
    return buf.getvalue()


def commit_part(store: Store, dst: str, model_sha256: str, key: str, rows: list[dict]) -> str:
    name = part_name(dst, model_sha256, key)
    store.write_atomic(name, to_bytes(rows))
    return name


def read_part(store: Store, name: str):
    """The part's table, or None when it is not there."""
    import pyarrow.parquet as pq

    if not store.exists(name):
        return None
    return conform(pq.read_table(io.BytesIO(store.read(name, max_bytes=1 << 31))))


def list_parts(store: Store, dst: str, model_sha256: str | None = None) -> list[str]:
    """Committed part files: of one model, or of every model (``None``)."""
    folder = parts_dir(dst, model_sha256) if model_sha256 else Store.join(dst, PARTS)
    if not store.is_dir(folder):
        return []
    return [p for p in store.walk(folder) if p.endswith(".parquet")]


# --- the table ------------------------------------------------------------------------------
def conform(table):
    """``table`` with exactly the schema's columns (missing ones null: older tables)."""
    import pyarrow as pa

    sch = schema()
    cols = []
    for f in sch:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=sch)


def _read_many(store: Store, names: list[str], columns: list[str] | None = None):
    """Parquet files read in parallel as one table of the schema (missing columns null)."""
    import pyarrow.dataset as pads

    if not names:
        return None
    fs, to_path = store.arrow_fs()
    ds = pads.dataset([to_path(n) for n in names], schema=schema(), format="parquet", filesystem=fs)
    return ds.to_table(columns=columns)


def read_table(store: Store, dst: str, columns: list[str] | None = None, with_parts=True):
    """The table as it stands: ``results.parquet`` plus every part not folded in yet,
    de-duplicated (the newest row per (input, model_sha256)). None when empty."""
    names = [Store.join(dst, RESULTS)] if store.exists(Store.join(dst, RESULTS)) else []
    if with_parts:
        names += list_parts(store, dst)
    cols = None if columns is None else sorted({*columns, "input", "model_sha256", "processed_at"})
    table = _read_many(store, names, cols)
    return None if table is None else deduplicate(table)


def deduplicate(table):
    """One row per (input, model_sha256): the newest (ties: the later in ``table``); sorted
    by model, then input."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    inputs = table.column("input").to_pylist()
    models = table.column("model_sha256").to_pylist()
    ts = pc.cast(table.column("processed_at"), pa.int64()).to_pylist()
    best: dict[tuple, int] = {}
    for i, key in enumerate(zip(models, inputs, strict=True)):
        j = best.get(key)
        if j is None or (ts[i] or 0) >= (ts[j] or 0):
            best[key] = i
    keep = [best[k] for k in sorted(best)]
    return table.take(pa.array(keep, pa.int64()))


def done_status(store: Store, dst: str, model_sha256: str) -> dict[str, str]:
    """``{input: status}`` of the rows this model already has."""
    table = read_table(store, dst, ["status"])
    if table is None:
        return {}
    import pyarrow.compute as pc

    table = table.filter(pc.equal(table.column("model_sha256"), model_sha256))
    return dict(
        zip(table.column("input").to_pylist(), table.column("status").to_pylist(), strict=True)
    )


def compact(store: Store, dst: str) -> int:
    """Fold every part into ``results.parquet`` (written atomically), then delete those parts;
    killed in between, the next compact folds them again (de-duplicated). Rows in the table."""
    parts = list_parts(store, dst)
    results = Store.join(dst, RESULTS)
    if not parts and store.exists(results):
        table = read_table(store, dst, with_parts=False)
        return 0 if table is None else table.num_rows
    names = ([results] if store.exists(results) else []) + parts
    table = _read_many(store, names)
    if table is None:
        table = conform(_empty())
    table = deduplicate(table)
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_atomic(results, buf.getvalue())
    for p in parts:
        store.delete(p)
    return table.num_rows


def _empty():
    import pyarrow as pa

    return pa.Table.from_pylist([], schema=schema())
