"""Install tensorrt-stubs into ``.typings/`` for ``mypy.ini`` and repair its generated syntax.

``python tools/install_trt_stubs.py``  (idempotent; needs pip and PyPI)

The stubs (pinned in ``requirements-typecheck.txt``) are installed with ``--no-deps --target``:
the package requires the real ``tensorrt`` wheel, which only downloads from NVIDIA's index, and
a site-packages install would make ``import tensorrt`` succeed as an empty namespace package.
pybind11-stubgen wrote a few signatures that are not valid Python (a parameter named ``in``; a
parameter without a default after one with a default); they are rewritten here, each line
re-parsed, so that mypy can read the file. Nothing else is changed.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / ".typings"
REQUIREMENTS = REPO / "requirements-typecheck.txt"


def _fix_def(line: str) -> str:
    """One ``def`` line: rename ``in`` parameters, give defaults after the first default."""
    line = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", line)
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*(->.*)?:\s*)$", line)
    if not m:
        return line
    params, seen_default, out = m.group(2).split(", "), False, []
    for p in params:
        bare = p.strip()
        if "=" in bare:
            seen_default = True
        elif seen_default and bare and not bare.startswith("*") and bare != "/":
            p = f"{p} = ..."
        out.append(p)
    return m.group(1) + ", ".join(out) + m.group(3)


def _valid(line: str) -> bool:
    try:
        ast.parse(line.strip() + " ...")
    except SyntaxError:
        return False
    return True


def repair(path: Path) -> int:
    lines = path.read_text().splitlines(keepends=True)
    fixed = 0
    for i, line in enumerate(lines):
        if line.lstrip().startswith("def ") and not _valid(line):
            new = _fix_def(line.rstrip("\n")) + "\n"
            if not _valid(new):
                raise SystemExit(f"{path}:{i + 1}: cannot repair: {line.strip()}")
            lines[i] = new
            fixed += 1
    if fixed:
        path.write_text("".join(lines))
    ast.parse("".join(lines), filename=str(path))
    return fixed


def main() -> int:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--upgrade",
        "--target",
        str(TARGET),
        "-r",
        str(REQUIREMENTS),
    ]
    subprocess.run(cmd, check=True)
    total = sum(repair(p) for p in sorted(TARGET.glob("tensorrt*/*.pyi")))
    print(f"tensorrt-stubs in {TARGET}: {total} generated signature(s) repaired")
    return 0


if __name__ == "__main__":
    sys.exit(main())
