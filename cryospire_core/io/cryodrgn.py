"""cryoDRGN inputs: an image stack plus ``poses.pkl`` and ``ctf.pkl``.

poses.pkl = (rots (N, 3, 3) == A, trans (N, 2)) with trans the RELION origin in fractions of the
box (shift_px = trans * D); older files append Euler angles as a third element.
ctf.pkl = float (N, 9): [D, apix, dfU Å, dfV Å, dfang deg, kV, Cs mm, w, phase deg].
Pickles are read only through :mod:`cryospire_core.io.safe_pickle`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.imaging.ctf import CTF_COLUMNS
from cryospire_core.io.mrc import find_file, open_stacks, read_header
from cryospire_core.io.particles import (
    ParticleSet,
    Provenance,
    common_pixel_size,
    require,
)
from cryospire_core.io.safe_pickle import load_pickle, save_pickle
from cryospire_core.io.star import optics_groups

CTF_PKL_COLUMNS = ("D", "apix", "defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift")


def _ctf_column(k: int) -> str:
    """How errors name column k of ctf.pkl, e.g. ``column 5 (voltage)``."""
    return f"column {k} ({CTF_PKL_COLUMNS[k]})"


def _stack_files(stack: Path, datadir: Path | None) -> list[Path]:
    """The stacks named by ``stack``: itself, or the lines of a .txt list."""
    if stack.suffix.lower() != ".txt":
        return [find_file(str(stack), stack, "image stack", [Path.cwd()], [datadir])]
    if not stack.is_file():
        raise InputError(stack, "stack list", "an existing .txt file", "no such file")
    try:
        text = stack.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(stack, "stack list", "a text file with one .mrcs path per line", "binary data") from None
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise InputError(stack, "stack list", "one .mrcs path per line", "no paths")
    unprintable = [n for n in names if not n.isprintable()]
    if unprintable:  # control characters (NUL, ...): garbage rather than a file name
        raise InputError(stack, "stack list", "one .mrcs path per line", f"a line {unprintable[0][:60]!r}")
    return [find_file(n, stack, "stack path", [stack.parent, datadir], [datadir, stack.parent]) for n in names]


def _numbers(path: Path, field: str, obj: object, shape: tuple[int, ...]) -> np.ndarray:
    """A pickled array (or nested lists) as float64 of ``shape`` (one row per image);
    InputError for anything else: ragged rows, text, complex numbers, other shapes."""
    expected = f"numbers of shape {shape} (one row per image)"
    try:
        arr = np.asarray(obj)
    except (ValueError, TypeError, RecursionError):  # ragged or too deeply nested lists
        raise InputError(path, field, expected, f"a {type(obj).__name__} of ragged or too deeply nested rows") from None
    if arr.dtype.kind not in "iuf" or arr.shape != shape:
        raise InputError(path, field, expected, f"{arr.dtype} of shape {arr.shape}")
    return arr.astype(np.float64)


def _poses(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """rots (n, 3, 3) and trans (n, 2) from poses.pkl (their values are checked by
    ``ParticleSet.validate``)."""
    obj = load_pickle(path)
    if isinstance(obj, np.ndarray):  # rotations only
        return _numbers(path, "rots", obj, (n, 3, 3)), np.zeros((n, 2))
    if not isinstance(obj, (tuple, list)) or len(obj) not in (2, 3):
        raise InputError(path, "poses", "a tuple (rots (N,3,3), trans (N,2))", type(obj).__name__)
    return _numbers(path, "rots", obj[0], (n, 3, 3)), _numbers(path, "trans", obj[1], (n, 2))


def read_stack_with_pkls(
    stack: str | os.PathLike,
    poses: str | os.PathLike,
    ctf: str | os.PathLike,
    datadir: str | os.PathLike | None = None,
    apix: float | None = None,
) -> ParticleSet:
    """Particles from a stack (.mrcs/.mrc, or a .txt listing stacks) with cryoDRGN pkls.

    The ctf.pkl must give the stack's box in column 0 and (unless ``apix`` overrides it, or the
    stack header leaves it unset) the stack's pixel size in column 1. Malformed pickles (ragged
    rows, text, wrong shapes or counts) and values that ``ParticleSet.validate`` refuses are
    InputErrors naming the pickle and its field (``rots``, ``trans``, ``column 5 (voltage)``).
    """
    stack, poses, ctf = Path(stack), Path(poses), Path(ctf)
    data_dir = Path(datadir) if datadir is not None else None
    files = _stack_files(stack, data_dir)
    counts = [h.shape[0] if len(h.shape) == 3 else 1 for h in map(read_header, files)]
    file_index = np.repeat(np.arange(len(files)), counts)
    frames = np.concatenate([np.arange(c) for c in counts])
    source, headers = open_stacks(files, file_index, frames, stack, "images")
    n, box = len(source), source.box

    params = _numbers(ctf, "ctf parameters", load_pickle(ctf), (n, len(CTF_PKL_COLUMNS)))
    require(ctf, _ctf_column(0), params[:, 0] == box, f"{box} (the box of {stack.name})", params[:, 0])
    apix_field = (None, "apix (given)")
    if apix is None:
        apix_field = (ctf, _ctf_column(1))
        apix = common_pixel_size(*apix_field, params[:, 1])
        header_apix = headers[0].apix
        if header_apix > 0 and not np.isclose(header_apix, apix, rtol=1e-3):
            expected = f"{header_apix:g} Å (the pixel size in the header of {files[0].name}; or pass apix)"
            raise InputError(ctf, _ctf_column(1), expected, apix)

    rots, trans = _poses(poses, n)
    ctf_params = np.concatenate([params[:, 2:9], np.zeros((n, 1)), np.ones((n, 1))], axis=1)
    fields = {"apix": apix_field, "rotations": (poses, "rots"), "shift_x": (poses, "trans"),
              "shift_y": (poses, "trans"), **{CTF_COLUMNS[k]: (ctf, _ctf_column(k + 2)) for k in range(7)}}
    return ParticleSet(
        source=source,
        apix=float(apix),
        rotations=rots,
        shifts=trans * box * apix,
        ctf=ctf_params,
        optics_group=optics_groups(ctf_params)[0],
        provenance=Provenance(format="cryodrgn", path=stack, extra={"poses": poses, "ctf": ctf}, fields=fields),
    ).validate()


def write_poses_pkl(path: str | os.PathLike, ps: ParticleSet) -> None:
    """Atomically write cryoDRGN poses: (rots (N,3,3) float32, trans (N,2) float32, box fractions)."""
    rots = ps.rotations.astype(np.float32)
    trans = (ps.shifts / (ps.apix * ps.box)).astype(np.float32)
    save_pickle(path, (rots, trans))


def write_ctf_pkl(path: str | os.PathLike, ps: ParticleSet) -> None:
    """Atomically write a cryoDRGN ctf.pkl: float32 (N, 9) [D, apix, dfU, dfV, dfang, kV, Cs, w, phase]."""
    n = len(ps)
    params = np.concatenate([np.full((n, 1), ps.box), np.full((n, 1), ps.apix), ps.ctf[:, :7]], axis=1)
    save_pickle(path, params.astype(np.float32))
