"""Atomic file output: write beside the target, flush to disk, then rename over it.

A crash or a full disk never leaves a half-written result under the final name, and a full disk
(or quota) becomes one :class:`~cryospire_core.errors.ResourceError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from typing import Any

from .errors import ResourceError, disk_full, is_disk_full

# Below this many free bytes a failed write is blamed on the disk even when the writer (e.g.
# torch.save given a file name, which writes from C++) does not report ENOSPC itself.
_NEARLY_FULL_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``.

    The temporary name keeps the target's suffix so libraries that choose a format by
    extension behave the same. On error the temporary file is removed and the target is
    left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from exc
        raise
    # mkstemp makes the file private (0600); results must be readable like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc) or (not isinstance(exc, ResourceError) and _nearly_full(path.parent)):
            raise disk_full(path) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES


TEMP_GLOB = ".*.tmp*"
"""Names of the temporary files :func:`atomic_path` writes (left behind only by a killed process)."""


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Atomically write ``arrays`` as an uncompressed ``.npz`` at exactly ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Atomically write ``array`` as ``.npy`` at exactly ``path`` (no pickled objects)."""
    # np.save on a file object: given a name, it would append ".npy".
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
