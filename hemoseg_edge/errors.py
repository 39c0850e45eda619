"""Exceptions with one-line, user-facing messages.

Every error the runtime raises on purpose derives from :class:`HemosegError`; the CLI and the
service print ``str(err)`` as a single line and exit non-zero. Anything else is a bug.
"""

from __future__ import annotations


class HemosegError(Exception):
    """Base class: the message is one line that names the file and the reason."""

    exit_code = 1


class InputImageError(HemosegError):
    """An input image cannot be read or is not an image we accept."""

    exit_code = 1


class ModelError(HemosegError):
    """A model/engine file is missing, corrupt, or lacks the metadata we need."""

    exit_code = 3


class BackendUnavailableError(ModelError):
    """The requested inference backend is not installed on this machine."""
