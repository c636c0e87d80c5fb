"""The arrays cryospire writes (``.npy`` / ``.npz``), read without pickles: a truncated or foreign
file is an InputError naming it."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cryospire_core.errors import InputError


def _load_numpy(path: Path, what: str, expected: str):
    """np.load without pickles; InputError naming ``path`` for a missing, truncated or foreign file."""
    if not path.is_file():
        raise InputError(path, what, expected, "no such file")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                return dict(data)
        return data
    except ValueError as exc:
        found = ("pickled Python objects (refused: cryospire writes plain arrays)" if "pickle" in str(exc)
                 else f"a damaged file ({exc})")
        raise InputError(path, what, expected, found) from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(path, what, expected, f"a damaged or truncated file ({type(exc).__name__}: {exc})") from exc


def read_npz(path: str | os.PathLike, what: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` a run holds (``what`` names it in errors), with at least
    ``keys``; InputError naming the file for a missing, truncated or foreign one or a missing key."""
    path = Path(path)
    data = _load_numpy(path, what, f"an .npz of {', '.join(keys) or 'arrays'} written by cryospire")
    if not isinstance(data, dict):
        raise InputError(path, what, f"an .npz of {', '.join(keys)}", "a single .npy array")
    for key in keys:
        if key not in data:
            raise InputError(path, key, f"the {what} array {key}", "missing")
    return data


def read_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """The array of an ``.npy`` a run holds; InputError naming the file when it is missing,
    truncated or not a plain array."""
    path = Path(path)
    data = _load_numpy(path, what, "an .npy array written by cryospire")
    if isinstance(data, dict):
        raise InputError(path, what, "an .npy array", "an .npz archive")
    return data
