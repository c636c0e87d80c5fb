"""Errors that reach users: each names the file, the field and what was expected."""

from __future__ import annotations

import errno
from os import PathLike


class InputError(ValueError):
    """A user-supplied file is missing, malformed or inconsistent.

    The message reads ``<file>: <field>: expected <expected>[, found <found>]`` so a user
    can fix the input without reading a traceback.
    """

    def __init__(
        self,
        path: str | PathLike | None,
        field: str,
        expected: str,
        found: object | None = None,
    ) -> None:
        self.path = str(path) if path is not None else "<input>"
        self.field = field
        self.expected = expected
        self.found = found
        msg = f"{self.path}: {field}: expected {expected}"
        if found is not None:
            msg += f", found {found}"
        super().__init__(msg)


class ResourceError(RuntimeError):
    """The machine ran out of disk space or memory. The message is one line saying what to
    change; the run's last checkpoint is intact (every output is written atomically)."""


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSErrors of a full disk (ENOSPC) or an exhausted quota (EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for Python's MemoryError and torch's out-of-memory errors (``torch.OutOfMemoryError``
    is a RuntimeError; the CPU allocator raises a RuntimeError "can't allocate memory")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def disk_full(path: str | PathLike | None) -> ResourceError:
    """The error for a write to ``path`` that failed for lack of space."""
    where = f" writing {path}" if path is not None else ""
    return ResourceError(f"disk full{where}: free space or choose another --out folder")


def out_of_memory(device: object, batch_size: int | None = None) -> ResourceError:
    """The error for running out of memory on ``device`` (a torch.device or its name)."""
    device = str(device)
    if batch_size is None:
        return ResourceError(f"out of memory on {device}: use smaller inputs or a machine with more memory")
    advice = "lower --batch-size" + ("" if device.startswith("cpu") else " (or use --device cpu)")
    return ResourceError(f"out of memory on {device} at batch size {batch_size}: {advice}")
