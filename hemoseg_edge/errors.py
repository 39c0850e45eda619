"""Exceptions with one-line, user-facing messages, and the exit codes the tools end with.

Every error the runtime raises on purpose derives from :class:`HemosegError`; the CLI and the
service print ``str(err)`` as a single line and exit non-zero. Anything else is a bug.
"""

from __future__ import annotations

# exit codes of every command (the CLI's help lists them)
EXIT_OK = 0  # every image processed, nothing flagged
EXIT_INPUT = 1  # at least one input could not be processed
EXIT_USAGE = 2  # bad arguments or unusable folders
EXIT_MODEL = 3  # the model could not be loaded
EXIT_FLAGGED = 4  # every image processed, at least one result flagged
EXIT_INTERNAL = 70  # a bug
EXIT_IO = 74  # service: its folders failed (disk full, unmounted)
EXIT_STUCK = 75  # service: an inference never returned; restart the process
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it


class HemosegError(Exception):
    """Base class: the message is one line that names the file and the reason."""

    exit_code = EXIT_INPUT


class InputImageError(HemosegError):
    """An input image cannot be read or is not an image we accept."""

    exit_code = EXIT_INPUT


class ModelError(HemosegError):
    """A model/engine file is missing, corrupt, or lacks the metadata we need."""

    exit_code = EXIT_MODEL


class UsageError(HemosegError):
    """Bad arguments, or folders that cannot be used."""

    exit_code = EXIT_USAGE


class InferenceMemoryError(ModelError):
    """The runtime could not allocate memory while running the model (exit 3: the model
    cannot run on this machine as configured; the image itself may be fine)."""


_ALLOCATION_WORDS = ("bad_alloc", "failed to allocate", "out of memory", "cannot allocate")


def is_allocation_failure(e: BaseException) -> bool:
    """A runtime's way of saying it ran out of memory (ONNX Runtime: "Failed to allocate
    memory"; OpenVINO: std::bad_alloc; Python: MemoryError)."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or any(w in text for w in _ALLOCATION_WORDS)


class BackendUnavailableError(ModelError):
    """The requested inference backend is not installed on this machine."""


def install_hint(extra: str) -> str:
    """The pip command that adds an optional extra, as it works from here: a source checkout
    (``pip install -e '<checkout>[extra]'``) or an installed package."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "hemoseg_edge").is_dir():
        return f"pip install -e '{root}[{extra}]'"
    return f"pip install 'hemoseg-edge[{extra}]'"
