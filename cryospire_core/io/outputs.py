"""Output paths: never replace, delete or write through a file the user made.

Every command that writes results lists the exact files it will write and passes them to
:func:`check_new_outputs` before any compute. A name already in use is refused unless the
user said ``--overwrite`` (:func:`add_overwrite_arg`); a folder between the output root and a
file that is a symbolic link, an output folder that is a file, and a folder that cannot be
written are refused always, each as one :class:`~cryospire_core.errors.InputError` naming the
path. Files are then written by :mod:`cryospire_core.io.atomic`, whose rename replaces a symbolic
link itself, never the file it points to.

Read-only folders: :func:`os.access` says whether we may write; root may write anywhere, so a
folder without any write permission bit (``chmod a-w``) counts as read-only for root as well:
someone made it so on purpose, and cryospire respects that rather than writing into it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryospire_core.errors import InputError

NOT_IN_USE = "a file name not in use"
#: What a GUI folder export offers instead of replacing files (the command line offers --overwrite).
GUI_REMEDY = "choose a new or empty folder"


def describe(path: Path) -> str:
    """What is at ``path`` now, in words ('an existing file', 'a symbolic link to X', ...)."""
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)}"
    if path.is_dir():
        return "an existing folder"
    return "an existing file" if path.exists() else "nothing"


def refuse_link(path: str | os.PathLike, field: str, kind: str = "file") -> None:
    """InputError when ``path`` is a symbolic link where cryospire keeps its own ``kind``
    ('file' or 'folder'): writing there would follow the link into the user's files."""
    path = Path(path)
    if path.is_symlink():
        raise InputError(path, field, f"a regular {kind} cryospire made", describe(path))


def check_writable_folder(folder: str | os.PathLike, option: str = "--out") -> None:
    """InputError unless ``folder``, or the nearest folder above it that exists (where the
    missing ones will be made), is a folder we may write to (see the module docstring)."""
    folder = Path(folder)
    check_name_lengths(folder, option)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(existing, option, "a folder (or a name not in use)", describe(existing))
    mode = existing.stat().st_mode
    if not os.access(existing, os.W_OK | os.X_OK) or not mode & 0o222:
        raise InputError(existing, option, "a folder you can write to", f"a read-only folder (mode {mode & 0o7777:o})")


def existing_outputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The paths that name something already (a file, a folder or a link, even a dangling one)."""
    return [Path(p) for p in paths if os.path.lexists(p)]


def check_new_outputs(paths: Iterable[str | os.PathLike], overwrite: bool, option: str = "--out",
                      under: str | os.PathLike | None = None, remedy: str = "--overwrite") -> None:
    """Refuse, before any compute, to write ``paths`` where that would harm the user's files.

    Each path must lie in a folder we can write to (:func:`check_writable_folder`) and must not
    exist, unless ``overwrite`` (then an existing file or symbolic link is replaced; a folder
    never). With ``under`` (the output root the user named, which may itself be a link), every
    folder between it and a path must be a real folder: a link there would send the files
    elsewhere. ``remedy`` is what the message offers instead (``--overwrite`` on the command
    line; a GUI says e.g. 'an empty folder'). Raises InputError naming the first bad path.
    """
    root = Path(under) if under is not None else None
    checked: set[Path] = set()
    for p in map(Path, paths):
        check_name_lengths(p, option)
        if root is not None:
            for folder in _folders_between(root, p):
                refuse_link(folder, option, "folder")
        if p.parent not in checked:
            check_writable_folder(p.parent, option)
            checked.add(p.parent)
        if not os.path.lexists(p):
            continue
        if p.is_dir() and not p.is_symlink():
            raise InputError(p, option, "a file name (not a folder)", describe(p))
        if not overwrite:
            raise InputError(p, option, f"{NOT_IN_USE} (or {remedy})", describe(p))


#: Longest file name and path (bytes) on Linux file systems; paths keep TMP_EXTRA bytes spare for
#: what cryospire adds below an output folder (a run's stage folder and ``atomic``'s temporaries).
NAME_MAX, PATH_MAX, TMP_EXTRA = 255, 4096, 64


def check_name_lengths(path: Path, option: str = "--out") -> None:
    """InputError (before any compute) for an output name or path too long for the file system,
    which would otherwise fail only when the result is written."""
    full = os.fsencode(os.path.abspath(path))
    if len(full) + TMP_EXTRA > PATH_MAX:
        shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:60]}...{str(path)[-60:]}"
        raise InputError(shown, option, f"a path of at most {PATH_MAX - TMP_EXTRA} bytes", f"{len(full)} bytes")
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise InputError(path, option, f"file and folder names of at most {NAME_MAX} bytes",
                             f"a name of {len(os.fsencode(part))} bytes")


def _folders_between(root: Path, path: Path) -> list[Path]:
    """The folders strictly below ``root`` that lead to ``path`` (root itself excluded)."""
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError:
        return []
    return [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
