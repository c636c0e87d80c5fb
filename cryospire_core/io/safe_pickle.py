"""Pickle files (cryoDRGN ``poses.pkl`` / ``ctf.pkl``) read without running arbitrary code.

A pickle can name any importable callable, so unpickling a file from someone else is running
their program. :func:`load_pickle` only lets a pickle rebuild numpy arrays, dtypes and scalars
and plain containers (tuple, list, dict) of numbers and strings; any other global is refused
before it is even imported. A pickle also cannot make us allocate much more than its own size:
arrays are rebuilt only from the data the file holds, and containers that share references
(a list holding the same list a thousand times, a thousand times over) are refused.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import os
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

from cryospire_core.errors import InputError
from cryospire_core.io.atomic import atomic_path


class _NdarrayClass:
    """Stands in for ``numpy.ndarray`` in a pickle: it may be passed to ``_reconstruct`` (as
    every array pickle does) but not called, since ``ndarray(shape)`` allocates any shape."""


def _reconstruct(subtype, shape, dtype):
    # Array pickles rebuild an empty array, then fill it from the file with __setstate__
    # (which checks the data length); a large shape here would allocate memory from nothing.
    if subtype is not _NdarrayClass or int(np.prod(shape)) > 1:
        raise pickle.UnpicklingError(f"unexpected array reconstruction {shape}")
    return _multiarray._reconstruct(np.ndarray, shape, dtype)


def _latin1(text, encoding="latin1", errors="strict"):
    # Protocol 2 stores raw bytes as _codecs.encode(text, "latin1"); other codecs are refused.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"unexpected codec {encoding!r}")
    return codecs.encode(text, encoding, errors)


# (module, name) pairs a pickle may reference. numpy < 2 wrote ``numpy.core.*``; those names are
# mapped to ``numpy._core.*`` below so that old files load without importing the deprecated alias.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # ndarray, protocol <= 4
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,  # numpy scalars
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,  # ndarray, protocol 5
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
    **{("builtins", t.__name__): t for t in (tuple, list, dict, int, float, complex, str, bool)},
}

# cryoDRGN writes pkls with the default protocol; 4 keeps them readable by Python >= 3.4.
PICKLE_PROTOCOL = 4


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # Protocol < 3 pickles name Python 2 modules (__builtin__, ...); map them as pickle does.
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise InputError(
                self._path,
                "pickle content",
                "only numpy arrays, numbers, strings, tuples, lists and dicts",
                f"a reference to {module}.{name} (refused: loading it could run code)",
            ) from None


def load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only numpy arrays/dtypes/scalars and builtin containers.

    Raises InputError (naming the file and the forbidden global) for anything else, for missing
    or corrupt files, and for containers holding more items than the file has bytes (only
    possible through shared references, which would multiply memory when converted to arrays).
    """
    if not os.path.isfile(path):
        raise InputError(path, "pickle file", "an existing file", "no such file")
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, str(path)).load()
        except InputError:
            raise
        except Exception as exc:  # UnpicklingError, EOFError, ValueError... from a corrupt file
            raise InputError(path, "pickle content", "a readable pickle file", f"{type(exc).__name__}: {exc}") from exc
    budget = os.path.getsize(path) + 16
    if _count_items(obj, budget) > budget:
        raise InputError(path, "pickle content", "arrays and containers no larger than the file",
                         "containers that share references (a pickle bomb?)")
    return obj


def _count_items(obj: Any, budget: int) -> int:
    """Items in the nested containers of ``obj`` (an array counts 1), stopping past ``budget``."""
    count, stack = 0, [obj]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def save_pickle(path: str | os.PathLike, obj: Any) -> None:
    """Atomically pickle ``obj`` to ``path`` (protocol 4)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=PICKLE_PROTOCOL)
