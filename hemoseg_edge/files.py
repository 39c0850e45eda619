"""Reading a file with one-line refusals, and writing one atomically (readers never see half).

Used by inputs (images), model_file (models) and outputs (results): the one place that knows
how the project touches the file system.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import HemosegError, InputImageError

MAX_FILE_BYTES = 256 * 1024 * 1024
_UMASK = os.umask(0)
os.umask(_UMASK)


def read_bytes(
    path: str | os.PathLike,
    max_bytes: int = MAX_FILE_BYTES,
    error: type[HemosegError] = InputImageError,
    what: str = "an image",
) -> bytes:
    """The file's bytes; ``error`` with one line naming the file for anything else."""
    p = Path(path)
    name = str(path)
    try:
        if not p.exists():
            raise error(f"{name}: no such file")
        if p.is_dir():
            raise error(f"{name}: is a directory, not {what}")
        size = p.stat().st_size
        if size == 0:
            raise error(f"{name}: empty file (0 bytes)")
        if size > max_bytes:
            raise error(f"{name}: file too large ({size} bytes > {max_bytes})")
        return p.read_bytes()
    except HemosegError:
        raise
    except OSError as e:  # permissions, symlink loops, I/O errors
        raise error(f"{name}: cannot read ({e.strerror or e})") from None


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + p.suffix, dir=p.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, _w)


def atomic_write_all(folder: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write every file under a temporary name first, then rename them in order: a full disk
    or a read-only folder leaves none of them (no mask without its JSON); the last one named
    (the JSON) appears last. Returns the final paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            temps.append((tmp, folder / name))
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, final in temps:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    return [final for _, final in temps]


def printable_path(path: str | os.PathLike) -> str:
    """A path as valid UTF-8 text: bytes that are not UTF-8 (a Latin-1 file name) become
    ``\\xNN`` escapes instead of making a CSV or JSON writer fail."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
