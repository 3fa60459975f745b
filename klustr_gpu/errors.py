"""One exception hierarchy for klustr_gpu."""
from __future__ import annotations


class KlustrError(Exception):
    """Base class of every error klustr_gpu raises on purpose."""


class UsageError(KlustrError, ValueError):
    """Wrong arguments: an unknown option value, a missing folder, an impossible engine.

    The command line turns it into one line on stderr and exit code 2, before any work.
    ``param`` names the argument at fault (``"device"``, ``"cluster"``): messages speak of
    parameters (``device='cuda'``), and the command line turns them into its flags (``--device cuda``).
    """

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class SkipFile(KlustrError):
    """A file of the library cannot be used; ``reason`` is recorded in the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EngineUnavailable(UsageError):
    """An explicitly requested engine or device cannot run here (never a silent fallback)."""


class StoreError(KlustrError):
    """The project folder is inconsistent, locked, or could not be written."""
