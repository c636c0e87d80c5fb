"""Atomic file output: write beside the target, flush to disk, then rename over it.

A crash or a full disk never leaves a half-written result under the final name, and a full disk
(or quota) becomes one :class:`~cryospire_core.errors.ResourceError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cryospire_core.errors import ResourceError, disk_full, is_disk_full

# Below this many free bytes a failed write is blamed on the disk even when the writer (e.g.
# torch.save given a file name, which writes from C++) does not report ENOSPC itself.
_NEARLY_FULL_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``.

    The temporary is named ``.cryospire-tmp-<pid>-<random><suffix>`` (:data:`TEMP_NAME`): a name
    no user file has, carrying the writer's process id so a cleanup can tell a killed writer's
    leftover from a live one's file. It keeps the target's suffix so libraries that choose a
    format by extension behave the same. The rename replaces a symbolic link at ``path`` itself,
    never the file it points to. On error the temporary file is removed and the target is left
    untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=path.suffix, dir=path.parent)
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


TEMP_PREFIX = ".cryospire-tmp-"
TEMP_GLOB = TEMP_PREFIX + "*"
"""Names of the temporary files :func:`atomic_path` writes (left behind only by a killed process)."""
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"([0-9]+)-[A-Za-z0-9_]+(\.[^.]*)?")
"""The exact temporary name (``fullmatch``); group 1 is the writer's process id."""


def stale_temporary(entry: os.DirEntry) -> bool:
    """True for a temporary file of :func:`atomic_path` whose writer is gone: the exact name,
    a regular file (a symbolic link is never ours), and a process id that is us or no live
    process (a concurrent writer's temporary is its file in progress)."""
    m = TEMP_NAME.fullmatch(entry.name)
    if m is None or not entry.is_file(follow_symlinks=False):
        return False
    pid = int(m.group(1))
    return pid == os.getpid() or not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if pid < 1:  # 0 and negative ids name process groups for os.kill: never ours
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's live process (EPERM), or no valid id: keep it
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete :func:`stale_temporary` files directly in ``folder`` (nothing else, no recursion)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if stale_temporary(entry):
                Path(entry.path).unlink(missing_ok=True)


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
