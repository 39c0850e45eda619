"""``hemoseg-edge archive``: batch inference on Ray Data (local Ray, 2 workers).

Every input gets exactly one row per model: bad files as ``failed`` rows, a rerun skips what is
done, a worker killed mid-run (``kill -9`` of an actor's process) and a driver killed mid-run
then rerun lose and duplicate nothing; results equal ``Segmenter.segment_batch``'s on the same
images and model. The table and output-file logic is also tested without Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, idrid_images

pytest.importorskip("pyarrow", reason="the [archive] extra (ray[data]) is not installed")
pytest.importorskip("ray.data", reason="the [archive] extra (ray[data]) is not installed")

import pyarrow.parquet as pq  # noqa: E402

from hemoseg_edge.archive import ArchiveConfig, run_archive  # noqa: E402
from hemoseg_edge.archive.store import Store, list_inputs  # noqa: E402
from hemoseg_edge.archive.table import (  # noqa: E402
    PARTS,
    RESULTS,
    base_row,
    commit_part,
    compact,
    failed_fields,
    list_parts,
    parts_dir,
    schema,
)
from hemoseg_edge.outputs import OUTPUT_KINDS  # noqa: E402

# Ray's own DataContext warns about its own deprecated fields when it is built
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
EXAMPLE = REPO / "examples" / "IDRiD_55.jpg"
N_REAL = 6  # IDRiD test images for the tiny-model runs (27 are too slow for CI on 2 cores)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def real_images(n: int) -> list[Path]:
    """``n`` IDRiD test images, else the bundled example alone (data absent)."""
    return idrid_images("test")[:n] or [EXAMPLE]


def make_archive(folder: Path, images: list[Path], corrupt: bool = True) -> list[Path]:
    """Copies of ``images`` (one in a sub-folder: the listing is recursive) plus, with
    ``corrupt``, a truncated JPEG, a text file renamed .jpg and an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site2").mkdir(exist_ok=True)
    out = []
    for i, img in enumerate(images):
        dst = (folder / "site2" if i == 0 else folder) / img.name
        shutil.copyfile(img, dst)
        out.append(dst)
    if corrupt:
        data = EXAMPLE.read_bytes()
        (folder / "truncated.jpg").write_bytes(data[: len(data) * 2 // 5])
        (folder / "notes.jpg").write_text("this is not an image\n")
        (folder / "empty.jpg").write_bytes(b"")
        out += [folder / "truncated.jpg", folder / "notes.jpg", folder / "empty.jpg"]
    (folder / ".hidden.jpg").write_bytes(b"skipped: hidden")
    (folder / "readme.txt").write_text("skipped: not an image suffix")
    return sorted(p.resolve() for p in out)


def table_rows(dst: Path, model_sha: str) -> list[dict]:
    rows = pq.read_table(dst / RESULTS).to_pylist()
    return [r for r in rows if r["model_sha256"] == model_sha]


def assert_one_row_each(rows: list[dict], inputs: list[Path]) -> dict[str, dict]:
    names = [r["input"] for r in rows]
    assert len(names) == len(set(names)), "duplicate rows"
    assert sorted(names) == sorted(str(p) for p in inputs), "missing or extra rows"
    return {r["input"]: r for r in rows}


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module; ``run_archive`` uses it as it is."""
    import ray

    from hemoseg_edge.archive.driver import connect

    started = connect(None, workers=2, cpus=1.0)
    yield
    if started:
        ray.shutdown()


def config(src: Path, dst: Path, model: Path | None, **kw) -> ArchiveConfig:
    kw = {"workers": 2, "batch_size": 2, "quiet": True, **kw}
    return ArchiveConfig(
        src=str(src), out=str(dst), model=None if model is None else str(model), **kw
    )


# --- Ray ------------------------------------------------------------------------------------
def _first_part(folder: Path, deadline: float) -> Path | None:
    while time.monotonic() < deadline:
        parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
        if parts:
            return parts[0]
        time.sleep(0.05)
    return None


def _kill_first_worker(parts: Path, killed: dict) -> None:
    """When the first part appears, ``kill -9`` the actor that wrote it (it is busy with its
    next batch: one image per batch)."""
    import psutil

    part = _first_part(parts, time.monotonic() + 150)
    if part is None:
        return
    pid = int(pq.read_table(part).column("worker")[0].as_py().rsplit(":", 1)[1])
    try:
        killed["cmdline"] = " ".join(psutil.Process(pid).cmdline())[:200]
        killed["done_before"] = len(list(parts.glob("part-*.parquet")))
        os.kill(pid, signal.SIGKILL)  # an actor of this test's own Ray
        killed["pid"] = pid
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


@pytest.mark.slow
def test_bad_files_and_a_killed_worker_one_row_each_then_rerun_skips(
    tmp_path, tiny_model, ray_local
):
    """One run (tiny model, one image per batch) with three bad files in the archive and one of
    the two actors killed mid-run; then a rerun with nothing left to do."""
    import psutil

    from hemoseg_edge.segmenter import Segmenter

    inputs = make_archive(tmp_path / "src", real_images(N_REAL) + [EXAMPLE])
    dst = tmp_path / "dst"
    model_sha = sha256(tiny_model)
    killed: dict = {}
    killer = threading.Thread(target=_kill_first_worker, args=(dst / PARTS / model_sha, killed))
    killer.start()
    summary = run_archive(config(tmp_path / "src", dst, tiny_model, batch_size=1))
    killer.join()

    assert "pid" in killed, "no worker was running to kill"
    assert "ArchiveWorker" in killed["cmdline"] or "ray::" in killed["cmdline"], killed
    assert killed["done_before"] < len(inputs), "killed after the end, not mid-run"
    gone = not psutil.pid_exists(killed["pid"])
    assert gone or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    rows = assert_one_row_each(table_rows(dst, model_sha), inputs)
    assert any(r["worker"].endswith(f":{killed['pid']}") for r in rows.values())
    assert summary.processed == len(inputs) and summary.skipped == 0
    assert summary.failed == 3 and summary.ok == len(inputs) - 3 and summary.exit_code == 1
    assert not list_parts(Store(), str(dst)), "every part folded into results.parquet"

    expected_reason = {"truncated.jpg": "JPEG", "notes.jpg": "not a supported image"}
    expected_reason["empty.jpg"] = "empty file"
    for p in inputs:
        row = rows[str(p)]
        assert row["model_name"] == "tiny.onnx" and row["model_version"] == "test-tiny"
        if p.name in expected_reason:
            assert row["status"] == "failed", row
            assert expected_reason[p.name] in row["reason"] and str(p) in row["reason"]
            assert "\n" not in row["reason"]
            assert row["lesion_count"] is None and row["mask"] is None
            continue
        assert row["status"] == "ok" and row["reason"] == ""
        assert row["input_sha256"] == sha256(p) and row["input_bytes"] == p.stat().st_size
        for kind in OUTPUT_KINDS:
            assert Path(row[kind]).is_file(), row[kind]
        assert Path(row["json"]).is_relative_to(dst / "outputs" / model_sha[:12])
        doc = json.loads(Path(row["json"]).read_text())
        assert doc["lesion_count"] == row["lesion_count"] and doc["input"] == str(p)
    nested = [p for p in inputs if p.parent.name == "site2"]
    assert len(nested) == 1 and "/site2/" in rows[str(nested[0])]["mask"]  # SRC's tree kept
    outputs = [p for p in (dst / "outputs").rglob("*") if p.is_file()]
    per_image = len(OUTPUT_KINDS)  # mask, overlay, JSON, ...
    assert len(outputs) == per_image * (len(inputs) - 3), "the output files of each image, once"
    assert not [p for p in outputs if p.name.startswith(".")], "temporaries left"

    # the same numbers as segment_batch with the same model on the same files
    seg = Segmenter.from_engine(tiny_model, throughput=True)
    for path, res in seg.segment_batch(inputs):
        row = rows[str(path)]
        if row["status"] == "failed":
            assert not hasattr(res, "lesions")
            continue
        assert row["lesion_count"] == len(res.lesions) > 0
        assert row["burden_percent"] == pytest.approx(res.burden_percent, abs=1e-9)
        assert row["image_score"] == pytest.approx(res.image_score, abs=1e-6)

    # rerun: nothing to do (Ray not even used), nothing rewritten
    before = (dst / RESULTS).stat().st_mtime_ns
    again = run_archive(config(tmp_path / "src", dst, tiny_model))
    assert again.processed == 0 and again.skipped == len(inputs) and again.failed == 3
    assert (dst / RESULTS).stat().st_mtime_ns == before
    assert_one_row_each(table_rows(dst, model_sha), inputs)


@pytest.mark.slow
def test_results_equal_segment_with_the_shipped_model(tmp_path, ray_local):
    """The shipped default model (as ``segment`` picks it on this host) on real images."""
    from hemoseg_edge.segmenter import Segmenter

    inputs = make_archive(tmp_path / "src", real_images(3), corrupt=False)
    dst = tmp_path / "dst"
    summary = run_archive(config(tmp_path / "src", dst, None, batch_size=1))
    seg = Segmenter.from_engine(None, throughput=True)
    model_file = Path(seg.source)
    assert summary.model_name == model_file.name and summary.model_sha256 == sha256(model_file)
    rows = assert_one_row_each(table_rows(dst, summary.model_sha256), inputs)
    compared = 0
    for path, res in seg.segment_batch(inputs):
        row = rows[str(path)]
        assert row["status"] == res.status
        assert row["model_version"] == seg.metadata.version
        assert row["flags"] == list(res.flags)
        if res.status != "ok":
            continue
        assert row["lesion_count"] == len(res.lesions)
        assert row["burden_percent"] == pytest.approx(res.burden_percent, abs=1e-9)
        assert row["image_score"] == pytest.approx(res.image_score, abs=1e-6)
        assert row["hemorrhage_detected"] == res.hemorrhage_detected
        assert {q: row[q] for q in res.quadrant_counts} == res.quadrant_counts
        compared += 1
    assert compared >= 1


def _running(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_driver_killed_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_model, ray_local):
    """``kill -9`` of the CLI's driver (its own local Ray) mid-run, then a rerun."""
    import psutil

    inputs = make_archive(tmp_path / "src", real_images(N_REAL))
    dst = tmp_path / "dst"
    model_sha = sha256(tiny_model)
    cmd = [sys.executable, "-m", "hemoseg_edge", "archive", str(tmp_path / "src")]
    cmd += ["--out", str(dst), "--model", str(tiny_model), "--workers", "2", "--batch-size", "1"]
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    family: list = []
    try:
        part = _first_part(dst / PARTS / model_sha, time.monotonic() + 150)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert part is not None, (tmp_path / "driver.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
        # what that driver started: Ray's processes die with it, but its agents outlive it
        # (and ignore SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=3)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _, alive = psutil.wait_procs(alive, timeout=10)
    assert not [p for p in alive if _running(p)], alive
    assert proc.returncode == -signal.SIGKILL
    first = {}
    for p in sorted((dst / PARTS / model_sha).glob("part-*.parquet")):
        for r in pq.read_table(p).to_pylist():
            first[r["input"]] = r["processed_at"]
    assert first and len(first) < len(inputs), "killed before the end"
    assert not (dst / RESULTS).exists(), "killed before its table was written"

    summary = run_archive(config(tmp_path / "src", dst, tiny_model))
    rows = assert_one_row_each(table_rows(dst, model_sha), inputs)
    assert summary.skipped == len(first)  # rows committed before the kill are kept...
    assert summary.processed == len(inputs) - len(first)  # ... and not redone
    for name, at in first.items():
        assert rows[name]["processed_at"] == at
    assert summary.failed == 3
    assert not list(dst.rglob("part-*.parquet")), "every part folded in"
    assert not [p for p in dst.rglob(".*") if p.is_file() and ".tmp" in p.name], "temporaries"


@pytest.mark.slow
def test_a_retried_batch_reuses_its_committed_part(tmp_path, tiny_model, ray_local):
    """What a task retry after a worker death does: the same batch -> the same part, kept."""
    import numpy as np
    import ray

    from hemoseg_edge.archive.worker import ArchiveWorker, Job

    inputs = make_archive(tmp_path / "src", [EXAMPLE])
    data = tiny_model.read_bytes()
    model_sha = hashlib.sha256(data).hexdigest()
    job = Job(
        src_root=str(tmp_path / "src"),
        dst=str(tmp_path / "dst"),
        model_name="tiny.onnx",
        model_version="test-tiny",
        model_sha256=model_sha,
        model_ref=ray.put(data),
        threads=1,
    )
    worker = ArchiveWorker(job)
    batch = {
        "input": np.array([str(p) for p in inputs], dtype=object),
        "stem": np.array([p.stem for p in inputs], dtype=object),
    }
    first = worker(batch)
    (part,) = (tmp_path / "dst" / PARTS / model_sha).glob("part-*.parquet")
    stamp = part.stat().st_mtime_ns
    again = worker(batch)
    assert part.stat().st_mtime_ns == stamp, "the committed part was rewritten"
    assert list(first["status"]) == list(again["status"])
    assert sorted(first["status"]) == ["failed", "failed", "failed", "ok"]


@pytest.mark.slow
def test_object_storage_path_through_fsspec(tiny_model, ray_local):
    """SRC and DST as URIs (fsspec's in-memory filesystem, shared within this process): the
    listing, the reads, the overlay drawn from a local copy, the writes and the table."""
    import numpy as np
    import ray

    from hemoseg_edge.archive.table import read_table
    from hemoseg_edge.archive.worker import ArchiveWorker, Job

    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    root = f"memory://hemoseg-test-{os.getpid()}"
    mem.pipe(f"{root}/src/site/IDRiD_55.jpg", EXAMPLE.read_bytes())
    mem.pipe(f"{root}/src/empty.jpg", b"")
    try:
        listing = list_inputs(f"{root}/src")
        assert listing.inputs == (f"{root}/src/empty.jpg", f"{root}/src/site/IDRiD_55.jpg")
        assert listing.stems == ("empty", "site/IDRiD_55")
        data = tiny_model.read_bytes()
        job = Job(
            src_root=listing.root,
            dst=f"{root}/dst",
            model_name="tiny.onnx",
            model_version="test-tiny",
            model_sha256=hashlib.sha256(data).hexdigest(),
            model_ref=ray.put(data),
            threads=1,
        )
        batch = {
            k: np.array(v, dtype=object)
            for k, v in (("input", listing.inputs), ("stem", listing.stems))
        }
        ArchiveWorker(job)(batch)
        store, dst = Store.open(f"{root}/dst")
        assert compact(store, dst) == 2
        rows = {r["input"]: r for r in read_table(store, dst).to_pylist()}
        assert rows[f"{root}/src/empty.jpg"]["status"] == "failed"
        ok = rows[f"{root}/src/site/IDRiD_55.jpg"]
        assert ok["status"] == "ok" and ok["input_sha256"] == sha256(EXAMPLE)
        for kind in OUTPUT_KINDS:
            assert ok[kind].startswith(f"{root}/dst/outputs/") and mem.exists(ok[kind])
        doc = json.loads(mem.cat(ok["json"]))
        assert doc["input"] == ok["input"] and doc["lesion_count"] == ok["lesion_count"]
        assert not list_parts(store, dst)
    finally:
        mem.rm(root, recursive=True)


# --- without Ray: table, listing, CLI --------------------------------------------------------
def _row(name: str, status: str, model_sha: str = "m" * 64) -> dict:
    row = base_row(name, {"model_name": "x", "model_version": "v", "model_sha256": model_sha}, "t")
    row.update(failed_fields("boom") if status == "failed" else {"status": status})
    return row


def test_compact_keeps_the_newest_row_per_input_and_model(tmp_path):
    store, dst = Store(), str(tmp_path)
    old = [_row("/a.jpg", "failed"), _row("/b.jpg", "ok"), _row("/a.jpg", "ok", "n" * 64)]
    commit_part(store, dst, "m" * 64, "k1", old)
    time.sleep(0.01)
    commit_part(store, dst, "m" * 64, "k1dup", [_row("/a.jpg", "ok")])  # a later retry
    commit_part(store, dst, "m" * 64, "k2", [_row("/c.jpg", "ok")])
    (Path(parts_dir(dst, "m" * 64)) / ".part-x.parquet.tmp").write_bytes(b"half")  # ignored
    assert compact(store, dst) == 4
    rows = pq.read_table(tmp_path / RESULTS).to_pylist()
    keys = [(r["model_sha256"][0], r["input"]) for r in rows]
    assert sorted(keys) == [("m", "/a.jpg"), ("m", "/b.jpg"), ("m", "/c.jpg"), ("n", "/a.jpg")]
    status = {(r["model_sha256"][0], r["input"]): r["status"] for r in rows}
    assert status[("m", "/a.jpg")] == "ok"  # the newer row wins
    assert not list_parts(store, dst)
    assert compact(store, dst) == 4  # idempotent
    assert pq.read_table(tmp_path / RESULTS).schema.equals(schema())


def test_listing_recursive_glob_stems_and_dst_excluded(tmp_path):
    src = tmp_path / "src"
    (src / "a" / ".cache").mkdir(parents=True)
    for rel in ("x.jpg", "x.png", "a/y.JPG", "a/.cache/z.jpg", "a/n.txt", "b.tif"):
        (src / rel).write_bytes(b"1")
    (src / "out").mkdir()
    (src / "out" / "x_overlay.jpg").write_bytes(b"1")
    listing = list_inputs(str(src), exclude=str((src / "out").resolve()))
    names = [Path(p).relative_to(src.resolve()).as_posix() for p in listing.inputs]
    assert names == ["a/y.JPG", "b.tif", "x.jpg", "x.png"]
    assert list(listing.stems) == ["a/y", "b", "x_jpg", "x_png"]
    globbed = list_inputs(str(src / "**" / "*.jpg"), exclude=str((src / "out").resolve()))
    assert [Path(p).name for p in globbed.inputs] == ["x.jpg"]  # ** spans levels; case counts
    globbed = list_inputs(str(src / "*" / "*.JPG"))
    assert [Path(p).name for p in globbed.inputs] == ["y.JPG"]
    one = list_inputs(str(src / "b.tif"))
    assert one.inputs == (str((src / "b.tif").resolve()),) and one.stems == ("b",)


def test_schema_carries_the_report_fields():
    from hemoseg_edge.outputs import REPORT_FIELDS

    names = set(schema().names)
    assert set(REPORT_FIELDS) - {"error"} <= names and "reason" in names
    assert {"input_sha256", "model_name", "model_version", "model_sha256", "flags"} <= names


def test_cli_usage_errors_need_no_ray(tmp_path):
    from hemoseg_edge.cli import main

    assert main(["archive", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["archive", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert main(["archive", str(tmp_path / "empty"), "--out", "x", "--batch-size", "0"]) == 2
