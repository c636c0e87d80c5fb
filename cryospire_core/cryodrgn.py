"""cryoDRGN inputs: an image stack plus ``poses.pkl`` and ``ctf.pkl``.

poses.pkl = (rots (N, 3, 3) == A, trans (N, 2)) with trans the RELION origin in fractions of the
box (shift_px = trans * D); older files append Euler angles as a third element.
ctf.pkl = float (N, 9): [D, apix, dfU Å, dfV Å, dfang deg, kV, Cs mm, w, phase deg].
Pickles are read only through :mod:`cryospire_core.safe_pickle`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .mrc import find_file, open_stacks, read_header
from .particles import ParticleSet, Provenance
from .safe_pickle import load_pickle, save_pickle
from .star import optics_groups

CTF_PKL_COLUMNS = ("D", "apix", "defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift")


def _stack_files(stack: Path, datadir: Path | None) -> list[Path]:
    """The stacks named by ``stack``: itself, or the lines of a .txt list."""
    if stack.suffix.lower() != ".txt":
        return [find_file(str(stack), stack, "image stack", [Path.cwd()], [datadir])]
    if not stack.is_file():
        raise InputError(stack, "stack list", "an existing .txt file", "no such file")
    names = [line.strip() for line in stack.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise InputError(stack, "stack list", "one .mrcs path per line", "no paths")
    return [find_file(n, stack, "stack path", [stack.parent, datadir], [datadir, stack.parent]) for n in names]


def _poses(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """rots (n, 3, 3) and trans (n, 2) from poses.pkl."""
    obj = load_pickle(path)
    if isinstance(obj, np.ndarray):  # rotations only
        obj = (obj, np.zeros((len(obj), 2)))
    if not isinstance(obj, (tuple, list)) or len(obj) not in (2, 3):
        raise InputError(path, "poses", "a tuple (rots (N,3,3), trans (N,2))", type(obj).__name__)
    rots, trans = (np.asarray(a, dtype=np.float64) for a in obj[:2])
    if rots.shape != (n, 3, 3):
        raise InputError(path, "rots", f"shape ({n}, 3, 3) (one per image)", rots.shape)
    if trans.shape != (n, 2):
        raise InputError(path, "trans", f"shape ({n}, 2) (one per image)", trans.shape)
    err = np.abs(rots @ np.swapaxes(rots, 1, 2) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rots)
    bad = ~(err < 1e-3) | ~(np.abs(det - 1) < 1e-3)
    if np.any(bad):
        found = f"{int(bad.sum())} that are not, e.g. row {int(np.argmax(bad))}"
        raise InputError(path, "rots", "rotation matrices (orthonormal, det +1)", found)
    return rots, trans


def read_stack_with_pkls(
    stack: str | os.PathLike,
    poses: str | os.PathLike,
    ctf: str | os.PathLike,
    datadir: str | os.PathLike | None = None,
    apix: float | None = None,
) -> ParticleSet:
    """Particles from a stack (.mrcs/.mrc, or a .txt listing stacks) with cryoDRGN pkls.

    The ctf.pkl must give the stack's box in column 0 and (unless ``apix`` overrides it, or the
    stack header leaves it unset) the stack's pixel size in column 1.
    """
    stack, poses, ctf = Path(stack), Path(poses), Path(ctf)
    data_dir = Path(datadir) if datadir is not None else None
    files = _stack_files(stack, data_dir)
    counts = [h.shape[0] if len(h.shape) == 3 else 1 for h in map(read_header, files)]
    file_index = np.repeat(np.arange(len(files)), counts)
    frames = np.concatenate([np.arange(c) for c in counts])
    source, headers = open_stacks(files, file_index, frames, stack, "images")
    n, box = len(source), source.box

    params = np.asarray(load_pickle(ctf))
    if params.ndim != 2 or params.shape != (n, len(CTF_PKL_COLUMNS)) or params.dtype.kind not in "fi":
        expected = f"a float array of shape ({n}, 9) (one row per image)"
        raise InputError(ctf, "ctf parameters", expected, f"{params.dtype} {params.shape}")
    params = params.astype(np.float64)
    if not np.all(params[:, 0] == box):
        raise InputError(ctf, "column 0 (D, box size)", f"{box} (the box of {stack.name})", params[params[:, 0] != box, 0][0])
    if apix is None:
        apix = float(params[0, 1])
        if not np.allclose(params[:, 1], apix, rtol=1e-4):
            found = f"{params[:, 1].min():g} to {params[:, 1].max():g}"
            raise InputError(ctf, "column 1 (apix)", "one pixel size for all images", found)
        header_apix = headers[0].apix
        if header_apix > 0 and not np.isclose(header_apix, apix, rtol=1e-3):
            expected = f"{header_apix:g} Å (the pixel size in the header of {files[0].name}; or pass apix)"
            raise InputError(ctf, "column 1 (apix)", expected, apix)

    rots, trans = _poses(poses, n)
    ctf_params = np.concatenate([params[:, 2:9], np.zeros((n, 1)), np.ones((n, 1))], axis=1)
    return ParticleSet(
        source=source,
        apix=float(apix),
        rotations=rots,
        shifts=trans * box * apix,
        ctf=ctf_params,
        optics_group=optics_groups(ctf_params)[0],
        provenance=Provenance(format="cryodrgn", path=stack, extra={"poses": poses, "ctf": ctf}),
    )


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
