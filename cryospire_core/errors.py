"""Errors that reach users: each names the file, the field and what was expected."""

from __future__ import annotations

import errno
import math
from os import PathLike

import numpy as np


class InputError(ValueError):
    """A user-supplied file is missing, malformed or inconsistent.

    The message reads ``<file>: <field>: expected <expected>[, found <found>]`` so a user
    can fix the input without reading a traceback; without a file (a command-line option, a
    value typed in a dock) it starts at the field.
    """

    def __init__(
        self,
        path: str | PathLike | None,
        field: str,
        expected: str,
        found: object | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.field = field
        self.expected = expected
        self.found = found
        msg = f"{field}: expected {expected}" if self.path is None else f"{self.path}: {field}: expected {expected}"
        if found is not None:
            msg += f", found {found}"
        super().__init__(msg)


class ResultError(InputError):
    """A result cryospire computed is not sound (NaN or infinite values). It is refused before it
    is written; the message names the file, what was wrong and the likely cause, like an
    InputError's."""


def count_nonfinite(values: object) -> int:
    """How many NaN or infinite numbers ``values`` holds: a float, an array, a torch tensor, or
    a dict/list/tuple of them (a checkpoint's state); other values count 0."""
    if isinstance(values, dict):
        return sum(count_nonfinite(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return sum(count_nonfinite(v) for v in values)
    if isinstance(values, float):
        return 0 if math.isfinite(values) else 1
    if hasattr(values, "is_floating_point"):  # a torch tensor (this module does not import torch)
        if values.is_sparse:
            values = values.coalesce().values()
        return int((~values.isfinite()).sum()) if values.is_floating_point() else 0
    if isinstance(values, np.ndarray) and values.dtype.kind in "fc":
        return int(values.size - np.count_nonzero(np.isfinite(values)))
    return 0


def require_finite(values: object, path: str | PathLike, field: str, cause: str) -> None:
    """ResultError naming ``path`` and ``field`` unless every number in ``values`` (see
    :func:`count_nonfinite`) is finite; ``cause`` says what probably went wrong."""
    bad = count_nonfinite(values)
    if bad:
        raise ResultError(path, field, "finite numbers", f"{bad} NaN/Inf values, not written ({cause})")


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
