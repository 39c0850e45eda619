"""The folder layout whose renames are the service's only state.

``IN_DIR/x`` -> (rename) ``OUT_DIR/work/n`` -> results written atomically to
``OUT_DIR/results/s_mask.png``, ``s_overlay.jpg``, ``s.json`` (JSON last; ``s`` is ``n``
without its suffix, as ``segment`` names them) -> (rename) ``OUT_DIR/done/n``; or
``OUT_DIR/failed/n.reason.txt`` written atomically -> (rename) ``OUT_DIR/failed/n``. ``n`` is
``x`` unless ``done/``, ``failed/`` or ``work/`` already hold that name, or its stem is another
input's (``x.png`` after ``x.jpg``): then ``stem__2.ext``, ``stem__3.ext``, ...

Every step is one ``rename`` or an atomic write, so after a crash at any instant an input is in
exactly one of ``IN_DIR``, ``work/``, ``done/``, ``failed/``; on start, ``work/`` is processed
again under its recorded name (results are overwritten atomically, so no duplicates appear) and
our own leftover temp files are removed. ``IN_DIR`` and ``OUT_DIR`` must share a filesystem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import EXIT_USAGE, HemosegError
from ..files import atomic_write_bytes
from ..outputs import dicom_output_names, output_names

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".swp", ".lock")
_OUR_TEMP = re.compile(r"^\..+\.tmp(\.[^.]*)?$")  # files.atomic_write's names
_CRASH_AT = os.environ.get("HEMOSEG_TEST_CRASH_AT", "")  # tests only: "step[,step...]"


class SetupError(HemosegError):
    """The folders cannot be used (not creatable, not on one filesystem)."""

    exit_code = EXIT_USAGE


def crashpoint(step: str) -> None:
    """Tests only: die like ``kill -9`` at a named step when ``HEMOSEG_TEST_CRASH_AT`` names it."""
    if _CRASH_AT and step in _CRASH_AT.split(","):
        os._exit(99)


def is_candidate(name: str) -> bool:
    """Names the service takes: not hidden, not a temp/partial file of some writer."""
    return not name.startswith((".", "~")) and not name.lower().endswith(TEMP_SUFFIXES)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def result_stem(name: str) -> str:
    """What an input's result files are named after: its name without the suffix, as
    ``segment`` names them (``photo.jpg`` -> ``photo.json``)."""
    return Path(name).stem or name


def result_names(name: str) -> tuple[str, str, str, str]:
    return output_names(result_stem(name))


class Layout:
    """``IN_DIR`` plus ``OUT_DIR/{work,done,failed,results}``."""

    def __init__(self, in_dir: Path, out_dir: Path):
        self.in_dir = in_dir
        self.out = out_dir
        self.work = out_dir / "work"
        self.done = out_dir / "done"
        self.failed = out_dir / "failed"
        self.results = out_dir / "results"

    @classmethod
    def create(cls, in_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Layout:
        lay = cls(Path(in_dir).absolute(), Path(out_dir).absolute())
        real_in = lay.in_dir.resolve()
        inside = [d.resolve() for d in (lay.work, lay.done, lay.failed, lay.results)]
        if real_in == lay.out.resolve() or any(
            real_in == d or d in real_in.parents for d in inside
        ):
            raise SetupError("IN_DIR must not be OUT_DIR or inside work/, done/, failed/, results/")
        try:
            for d in (lay.in_dir, lay.work, lay.done, lay.failed, lay.results):
                d.mkdir(parents=True, exist_ok=True)
            same = os.stat(lay.in_dir).st_dev == os.stat(lay.work).st_dev
        except OSError as e:
            raise SetupError(f"cannot create the service folders ({e.strerror or e})") from None
        if not same:
            raise SetupError(
                f"{lay.in_dir} and {lay.out} are on different filesystems; the service moves"
                " files by rename, so put them on one filesystem"
            )
        return lay

    def clean_temps(self) -> list[str]:
        """Remove our own temp files left by a crash (atomic writes never finished)."""
        removed = []
        for d in (self.out, self.results, self.failed):
            for name in os.listdir(d):
                if _OUR_TEMP.match(name):
                    try:
                        os.unlink(d / name)
                        removed.append(name)
                    except FileNotFoundError:
                        pass
        return removed

    def counts(self) -> tuple[int, int]:
        done = sum(1 for _ in os.scandir(self.done))
        failed = sum(1 for e in os.scandir(self.failed) if not e.name.endswith(".reason.txt"))
        return done, failed

    def pending_work(self) -> list[str]:
        return sorted(n for n in os.listdir(self.work) if not n.startswith("."))

    def _taken(self, name: str) -> bool:
        if any(
            os.path.lexists(p)
            for p in (
                self.done / name,
                self.failed / name,
                self.work / name,
                self.failed / f"{name}.reason.txt",
            )
        ):
            return True
        # another input's results under the same stem: a done one (its JSON) or one at work
        stem = result_stem(name)
        if os.path.lexists(self.results / output_names(stem)[-1]):
            return True
        return any(result_stem(n) == stem for n in self.pending_work())

    def free_name(self, name: str) -> str:
        """``name``, or ``stem__k.ext`` with the smallest free ``k >= 2``."""
        if not self._taken(name):
            return name
        stem, dot, ext = name.rpartition(".")
        if not stem:
            stem, dot, ext = name, "", ""
        k = 2
        while self._taken(cand := f"{stem}__{k}{dot}{ext}"):
            k += 1
        return cand

    def claim(self, name: str) -> str | None:
        """Move ``IN_DIR/name`` into ``work/`` under a free name; ``None`` if it vanished."""
        final = self.free_name(name)
        try:
            os.rename(self.in_dir / name, self.work / final)
        except FileNotFoundError:
            return None
        crashpoint("claimed")
        return final

    def finish_done(
        self, name: str, files: dict[str, bytes], before_move: Callable[[], None] | None = None
    ) -> None:
        """Write the results (JSON last), call ``before_move`` (e.g. enqueue the DICOM objects
        for forwarding, atomically), then move ``work/name`` to ``done/``."""
        for i, (fname, data) in enumerate(files.items()):
            atomic_write_bytes(self.results / fname, data)
            if i == 0:
                crashpoint("results_partial")
        fsync_dir(self.results)
        crashpoint("results_written")
        if before_move is not None:
            before_move()
        stale = self.failed / f"{name}.reason.txt"  # from a crashed earlier attempt
        if os.path.lexists(stale):
            os.unlink(stale)
        os.rename(self.work / name, self.done / name)
        crashpoint("moved")

    def finish_failed(self, name: str, reason: str) -> None:
        """Remove results of a crashed earlier attempt, write the reason, move to ``failed/``."""
        stem = result_stem(name)
        for fname in (*output_names(stem), *dicom_output_names(stem).values()):
            try:
                os.unlink(self.results / fname)
            except FileNotFoundError:
                pass
        text = reason.rstrip("\n") + "\n"
        data = text.encode("utf-8", "backslashreplace")
        atomic_write_bytes(self.failed / f"{name}.reason.txt", data)
        fsync_dir(self.failed)
        crashpoint("reason_written")
        os.rename(self.work / name, self.failed / name)
        crashpoint("moved")
