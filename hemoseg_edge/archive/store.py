"""Where an archive lives: a local folder, or any filesystem pyarrow opens by URI (``s3://``,
``gs://``, ``abfs://``, ``hdfs://``) or, failing that, fsspec (``pip install s3fs`` etc.).

A ``Store`` names every file by a string: the absolute path for a local file, the full URI for a
remote one. Those strings are the ``input`` column of the results table and the key that makes
a rerun skip what is done, so the same archive must be given the same way (the same mount point,
the same bucket URI) to resume.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputImageError, UsageError
from ..files import MAX_FILE_BYTES, atomic_write_bytes, read_bytes
from ..inputs import IMAGE_SUFFIXES

_MAGIC = re.compile(r"[*?\[]")
# object stores publish an object whole when its upload completes: no rename needed
_ATOMIC_PUT = frozenset({"s3", "gcs", "abfs"})


def is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


class Store:
    """Reads, atomic writes, listings and deletes on one filesystem (``fs`` None: local)."""

    def __init__(self, fs=None, prefix: str = ""):
        self.fs = fs
        self.prefix = prefix  # what turns a filesystem path back into its URI

    @classmethod
    def open(cls, location: str) -> tuple[Store, str]:
        """The store for ``location`` and its name there (absolute path or URI)."""
        if location.startswith("file://"):
            location = location[len("file://") :]
        if not is_uri(location):
            return cls(), str(Path(location).expanduser().resolve())
        import pyarrow.fs as pafs

        bare = location.split("?", 1)[0].rstrip("/")
        try:
            fs, path = pafs.FileSystem.from_uri(location)
        except (ValueError, NotImplementedError):  # ArrowInvalid: a scheme pyarrow lacks
            try:
                import fsspec
            except ImportError:
                raise UsageError(f"{location}: pyarrow cannot open this URI scheme") from None
            try:
                ffs, path = fsspec.core.url_to_fs(location)
            except (ImportError, ValueError) as e:
                raise UsageError(f"{location}: cannot open ({e})") from None
            fs = pafs.PyFileSystem(pafs.FSSpecHandler(ffs))
        except OSError as e:
            raise UsageError(f"{location}: cannot open ({e})") from None
        path = path.rstrip("/")
        prefix = bare[: len(bare) - len(path)] if path and bare.endswith(path) else ""
        if not prefix:
            prefix = bare.split("://", 1)[0] + "://"
        return cls(fs, prefix), prefix + path

    # names <-> filesystem paths ------------------------------------------------------------
    def _path(self, name: str) -> str:
        return name[len(self.prefix) :] if self.fs is not None else name

    def _name(self, path: str) -> str:
        return self.prefix + path if self.fs is not None else path

    @staticmethod
    def join(name: str, *parts: str) -> str:
        return "/".join([name.rstrip("/"), *(p.strip("/") for p in parts)])

    # reading -------------------------------------------------------------------------------
    def read(self, name: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The file's bytes, or ``InputImageError`` with one line naming it."""
        if self.fs is None:
            return read_bytes(name, max_bytes)
        import pyarrow.fs as pafs

        try:
            info = self.fs.get_file_info(self._path(name))
            if info.type == pafs.FileType.NotFound:
                raise InputImageError(f"{name}: no such file")
            if info.type == pafs.FileType.Directory:
                raise InputImageError(f"{name}: is a directory, not an image")
            if info.size == 0:
                raise InputImageError(f"{name}: empty file (0 bytes)")
            if info.size is not None and info.size > max_bytes:
                raise InputImageError(f"{name}: file too large ({info.size} bytes > {max_bytes})")
            with self.fs.open_input_stream(self._path(name)) as f:
                return f.readall()
        except OSError as e:
            raise InputImageError(f"{name}: cannot read ({_one_line(e)})") from None

    def exists(self, name: str) -> bool:
        if self.fs is None:
            return os.path.isfile(name)
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._path(name)).type == pafs.FileType.File

    def is_dir(self, name: str) -> bool:
        if self.fs is None:
            return os.path.isdir(name)
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._path(name)).type == pafs.FileType.Directory

    def walk(self, name: str) -> list[str]:
        """Every file under the folder ``name`` (recursive), except hidden files and folders
        (``.name``: temporary files of atomic writes); sorted."""
        if self.fs is None:
            out: list[str] = []
            for root, dirs, files in os.walk(name):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(os.path.join(root, f) for f in files if not f.startswith("."))
            return sorted(out)
        import pyarrow.fs as pafs

        base = self._path(name)
        sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            rel = info.path[len(base) :].lstrip("/")
            if info.type == pafs.FileType.File and not any(
                p.startswith(".") for p in rel.split("/")
            ):
                out.append(self._name(info.path))
        return sorted(out)

    # writing -------------------------------------------------------------------------------
    def write_atomic(self, name: str, data: bytes) -> None:
        """Readers see the whole file or none of it (local: temporary name, fsync, rename)."""
        if self.fs is None:
            atomic_write_bytes(name, data)
            return
        path = self._path(name)
        parent = path.rsplit("/", 1)[0]
        if self.fs.type_name in _ATOMIC_PUT:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{os.getpid()}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

    def delete(self, name: str) -> None:
        if self.fs is None:
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
            return
        try:
            self.fs.delete_file(self._path(name))
        except FileNotFoundError:
            pass

    def makedirs(self, name: str) -> None:
        if self.fs is None:
            os.makedirs(name, exist_ok=True)
        else:
            self.fs.create_dir(self._path(name), recursive=True)

    def arrow_fs(self):
        """``(pyarrow filesystem, path function)`` for pyarrow's readers and writers."""
        import pyarrow.fs as pafs

        return (self.fs or pafs.LocalFileSystem()), self._path

    def remove_stale_temporaries(self, name: str) -> int:
        """Delete the hidden ``.*.tmp*`` files a killed writer left in the folder ``name``."""
        if self.fs is not None:
            return 0  # object stores leave no temporaries (uploads are atomic)
        n = 0
        try:
            entries = list(os.scandir(name))
        except FileNotFoundError:
            return 0
        for e in entries:
            if e.name.startswith(".") and ".tmp" in e.name and e.is_file():
                self.delete(e.path)
                n += 1
        return n


@dataclass(frozen=True)
class Listing:
    """The inputs under SRC: ``root`` (their common folder, as a name) and, per input, the
    output stem (its path below ``root`` without the suffix, unique within the listing)."""

    store: Store
    root: str
    inputs: tuple[str, ...]
    stems: tuple[str, ...]


def _glob_regex(pattern: str) -> re.Pattern:
    """``*`` and ``?`` within one path component, ``**`` across components, ``[...]`` sets."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in pattern[i + 1 :]:
            j = pattern.index("]", i + 1)
            body = pattern[i + 1 : j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _split_glob(src: str) -> tuple[str, str | None]:
    """``(folder without wildcards, pattern below it or None)``."""
    if not _MAGIC.search(src):
        return src, None
    head, _, _ = src.partition(_MAGIC.search(src).group())  # type: ignore[union-attr]
    base = head.rsplit("/", 1)[0] if "/" in head else "."
    return base, src[len(base) :].lstrip("/") if base != "." else src


def _stems(root: str, inputs: list[str]) -> list[str]:
    rel = [
        p[len(root) :].lstrip("/") if p.startswith(root) else p.rsplit("/", 1)[-1] for p in inputs
    ]
    bare = [r.rsplit(".", 1)[0] if "." in r.rsplit("/", 1)[-1] else r for r in rel]
    count: dict[str, int] = {}
    for b in bare:
        count[b] = count.get(b, 0) + 1
    stems, used = [], set()
    for r, b in zip(rel, bare, strict=True):
        stem = b if count[b] == 1 else f"{b}_{r.rsplit('.', 1)[-1].lower()}"
        cand, i = stem, 1
        while cand in used:
            i += 1
            cand = f"{stem}_{i}"
        used.add(cand)
        stems.append(cand)
    return stems


def list_inputs(src: str, exclude: str | None = None) -> Listing:
    """The files under SRC: a folder (recursive, image suffixes, hidden names left out), one
    file, or a glob (``*`` ``?`` ``[..]`` within a component, ``**`` across; any suffix).
    Anything under ``exclude`` (the output folder, when it lies inside SRC) is left out."""
    base, pattern = _split_glob(src)
    store, root = Store.open(base)
    if pattern is None and store.exists(root):
        inputs = [root]
        root = root.rsplit("/", 1)[0]
    elif not store.is_dir(root):
        raise UsageError(f"{src}: no such file or folder")
    elif pattern is None:
        inputs = [p for p in store.walk(root) if os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES]
    else:
        rx = _glob_regex(pattern)
        inputs = [p for p in store.walk(root) if rx.match(p[len(root) :].lstrip("/"))]
    if exclude:
        ex = exclude.rstrip("/") + "/"
        inputs = [p for p in inputs if not p.startswith(ex)]
    return Listing(store, root, tuple(inputs), tuple(_stems(root, inputs)))


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
