"""cryoSPARC ``.cs`` particle files (numpy structured arrays) read into and written from a
ParticleSet.

Fields used: ``blob/path`` (a leading ``>`` means relative to the project directory),
``blob/idx`` (0-based image number), ``blob/shape``, ``blob/psize_A``, ``alignments3D/pose``
(rotation vector of A transposed, radians), ``alignments3D/shift`` (pixels at
``alignments3D/psize_A``, same sign as RELION's origin) and ``ctf/*``. Fields missing from the
main file are joined on ``uid`` from its ``*_passthrough_*.cs`` file, where a uid may appear more
than once only with identical values. Values are checked by ``ParticleSet.validate``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.imaging.ctf import CTF_COLUMNS
from cryospire_core.imaging.geometry import matrix_to_rotvec, rotvec_to_matrix
from cryospire_core.io.atomic import write_npy
from cryospire_core.io.mrc import find_file, open_stacks, relative_paths
from cryospire_core.io.particles import (
    ParticleSet,
    Provenance,
    check_angles,
    check_pixel_size,
    common_pixel_size,
)
from cryospire_core.io.star import optics_groups

_REQUIRED = (
    "uid",
    "blob/path",
    "blob/idx",
    "blob/psize_A",
    "alignments3D/pose",
    "alignments3D/shift",
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
)
# Kind ("i" integer, "f" number, "S" text) and per-row shape of the fields we read.
_FIELD_TYPES = {
    "uid": ("i", ()), "blob/path": ("S", ()), "blob/idx": ("i", ()), "blob/shape": ("i", (2,)),
    "blob/psize_A": ("f", ()), "alignments3D/pose": ("f", (3,)), "alignments3D/shift": ("f", (2,)),
    "alignments3D/psize_A": ("f", ()), "ctf/df1_A": ("f", ()), "ctf/df2_A": ("f", ()),
    "ctf/df_angle_rad": ("f", ()), "ctf/accel_kv": ("f", ()), "ctf/cs_mm": ("f", ()),
    "ctf/amp_contrast": ("f", ()), "ctf/phase_shift_rad": ("f", ()), "ctf/exp_group_id": ("i", ()),
}
# The fields of the CTF columns we read, in the order of ctf.CTF_COLUMNS (B-factor and scale
# are not read: 0 and 1).
_CTF_FIELDS = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast",
               "ctf/phase_shift_rad")
_KINDS = {"i": ("iu", "integers"), "f": ("iuf", "numbers"), "S": ("SU", "text")}
# Folders above the .cs file searched for project-relative paths (jobs sit in project/J12/).
_PARENT_LEVELS = 3


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "cryoSPARC file", "an existing .cs file", "no such file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # e.g. cryosparc-tools' compressed format, or not a .cs at all
        raise InputError(path, "cs format", "a numpy .npy structured array (cryoSPARC .cs)", f"a file starting with {magic!r}")
    try:
        _check_claimed_size(path)
        arr = np.load(path, allow_pickle=False)
    except InputError:
        raise
    except ValueError as exc:  # object fields need pickle: refused, a file must not run code
        raise InputError(path, "cs format", "a numpy structured array without pickled objects", exc) from exc
    except Exception as exc:
        raise InputError(path, "cs format", "a readable numpy .npy structured array", exc) from exc
    if arr.dtype.names is None or arr.ndim != 1:
        raise InputError(path, "cs format", "a 1D numpy structured array", f"{arr.dtype} {arr.shape}")
    return arr


def _check_claimed_size(path: Path) -> None:
    """Refuse a .npy header announcing more data than the file holds, before numpy allocates it."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        claimed = f.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize
    size = path.stat().st_size
    if claimed > size:
        raise InputError(path, "cs data", f"{claimed} bytes for {shape} rows of its fields",
                         f"{size} bytes (truncated file?)")


def _check_field_types(path: Path, rows: np.ndarray) -> None:
    """InputError naming the first field whose dtype kind or per-row shape is not cryoSPARC's."""
    for name, (kind, shape) in _FIELD_TYPES.items():
        if name not in rows.dtype.names:
            continue
        dt = rows.dtype[name]
        kinds, what = _KINDS[kind]
        if dt.base.kind not in kinds or dt.shape != shape:
            expected = f"{what} of shape {shape} per particle" if shape else f"one value ({what}) per particle"
            raise InputError(path, name, expected, f"{dt.base} of shape {dt.shape}")


def _find_passthrough(path: Path) -> Path | None:
    """The ``*_passthrough_*.cs`` beside ``path`` (the one sharing its name's ending if several)."""
    candidates = sorted(p for p in path.parent.glob("*_passthrough_*.cs") if p != path)
    if len(candidates) > 1:
        ending = path.name.split("_")[-1]  # e.g. "particles.cs" of J12_003_particles.cs
        candidates = [p for p in candidates if p.name.split("_")[-1] == ending] or candidates
    if len(candidates) > 1:
        expected = "one *_passthrough_*.cs beside it (pass it explicitly)"
        raise InputError(path, "passthrough file", expected, [p.name for p in candidates])
    return candidates[0] if candidates else None


def _join(main: np.ndarray, other: np.ndarray, main_path: Path, other_path: Path) -> np.ndarray:
    """``main`` with the fields it lacks taken from ``other``, matched on ``uid``."""
    new = [n for n in other.dtype.names if n not in main.dtype.names]
    if not new:
        return main
    if "uid" not in other.dtype.names or "uid" not in main.dtype.names:
        raise InputError(other_path, "uid", "a uid field in both files to join them", "none")
    order = np.argsort(other["uid"], kind="stable")
    pos = np.clip(np.searchsorted(other["uid"], main["uid"], sorter=order), 0, len(other) - 1)
    rows = order[pos]
    lost = other["uid"][rows] != main["uid"]
    if np.any(lost):
        found = f"{int(lost.sum())} uids missing, e.g. {main['uid'][lost][0]}"
        raise InputError(other_path, "uid", f"every particle uid of {main_path.name}", found)
    _refuse_conflicting_duplicates(other, order, new, main["uid"], other_path)
    dtype = np.dtype(main.dtype.descr + [d for d in other.dtype.descr if d[0] in new])
    out = np.empty(len(main), dtype=dtype)
    for name in main.dtype.names:
        out[name] = main[name]
    for name in new:
        out[name] = other[name][rows]
    return out


def _refuse_conflicting_duplicates(other: np.ndarray, order: np.ndarray, fields: list[str], used: np.ndarray,
                                   other_path: Path) -> None:
    """InputError when a uid of ``used`` has several rows in ``other`` that differ in ``fields``.

    order: argsort of ``other["uid"]``. The join takes one of the rows, so duplicates are harmless
    only when identical (NaN equal to NaN); otherwise which CTF a particle gets would be arbitrary.
    """
    uids = other["uid"][order]
    dup = np.nonzero((uids[1:] == uids[:-1]) & np.isin(uids[1:], used))[0]
    if len(dup) == 0:
        return
    a, b = other[order[dup + 1]], other[order[dup]]
    for name in fields:
        x, y = a[name].reshape(len(dup), -1), b[name].reshape(len(dup), -1)
        differs = ~((x == y) | ((x != x) & (y != y))).all(axis=1)
        if differs.any():
            uid = uids[dup[int(np.argmax(differs))] + 1]
            count = int(np.count_nonzero(uids == uid))
            raise InputError(other_path, "uid", "one row per particle uid (or identical duplicates)",
                             f"uid {uid} in {count} rows with different {name}")


def read_cs(
    path: str | os.PathLike,
    passthrough: str | os.PathLike | None = None,
    datadir: str | os.PathLike | None = None,
    apix: float | None = None,
) -> ParticleSet:
    """Read a cryoSPARC particle ``.cs`` file.

    passthrough: the job's ``*_passthrough_*.cs``; when None and the main file lacks required
    fields (typically ``ctf/*``), a single sibling passthrough file is joined automatically.
    datadir: the cryoSPARC project directory (or a folder holding the stacks); ``>`` paths are
    otherwise searched from the .cs file's parent folders.
    apix: Å/pixel overriding ``blob/psize_A``.
    """
    path = Path(path)
    rows = _load(path)
    own = set(rows.dtype.names)
    extra: dict = {}
    if passthrough is None and any(f not in rows.dtype.names for f in _REQUIRED):
        passthrough = _find_passthrough(path)
    if passthrough is not None:
        passthrough = Path(passthrough)
        rows = _join(rows, _load(passthrough), path, passthrough)
        extra["passthrough"] = passthrough
    missing = [f for f in _REQUIRED if f not in rows.dtype.names]
    if missing:
        if passthrough is not None:
            where = f"fields in the file or its passthrough {passthrough.name}"
        else:
            where = "fields in the file (no *_passthrough_*.cs beside it)"
        raise InputError(path, ", ".join(missing), where, "none")
    if len(rows) == 0:
        raise InputError(path, "particles", "at least one particle", "none")
    _check_field_types(path, rows)

    # Stack paths: few distinct values, resolved once each.
    uniques, codes = np.unique(rows["blob/path"], return_inverse=True)
    cs_dir = path.parent
    data_dir = Path(datadir) if datadir is not None else None
    parents = list(cs_dir.absolute().parents)[:_PARENT_LEVELS]
    files = []
    for name in uniques:
        try:
            name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        except UnicodeDecodeError as exc:
            raise InputError(path, "blob/path", "UTF-8 stack paths", repr(name)) from exc
        if name.startswith(">"):  # project-relative
            name = name[1:]
            dirs = [data_dir, *parents, cs_dir]
        else:
            dirs = [cs_dir, data_dir, *parents]
        files.append(find_file(name, path, "blob/path", dirs, [data_dir, cs_dir]))
    source, _ = open_stacks(files, codes.reshape(-1), rows["blob/idx"].astype(np.int64), path, "blob/idx")
    if "blob/shape" in rows.dtype.names and np.any(rows["blob/shape"] != source.box):
        raise InputError(path, "blob/shape", f"{source.box} x {source.box} like the stacks", rows["blob/shape"][0].tolist())

    def origin(name: str) -> tuple[Path, str]:  # the file a field was read from, and its name
        return (path if name in own else passthrough), name

    if apix is None:
        apix = common_pixel_size(*origin("blob/psize_A"), rows["blob/psize_A"])
        apix_field = origin("blob/psize_A")
    else:
        apix_field = (None, "apix (given)")
    # Shifts are in pixels of the refinement, which may have run on a resampled stack.
    align = "alignments3D/psize_A" if "alignments3D/psize_A" in rows.dtype.names else "blob/psize_A"
    align_psize = rows[align].astype(np.float64)
    check_pixel_size(*origin(align), align_psize)
    shifts = rows["alignments3D/shift"].astype(np.float64) * align_psize[:, None]
    pose = rows["alignments3D/pose"].astype(np.float64)
    check_angles(*origin("alignments3D/pose"), np.rad2deg(np.linalg.norm(pose, axis=1)))

    n = len(rows)
    phase = np.zeros(n)
    if "ctf/phase_shift_rad" in rows.dtype.names:
        phase = np.rad2deg(rows["ctf/phase_shift_rad"].astype(np.float64))
    ctf = np.stack(
        [
            rows["ctf/df1_A"],
            rows["ctf/df2_A"],
            np.rad2deg(rows["ctf/df_angle_rad"].astype(np.float64)),
            rows["ctf/accel_kv"],
            rows["ctf/cs_mm"],
            rows["ctf/amp_contrast"],
            phase,
            np.zeros(n),
            np.ones(n),
        ],
        axis=1,
    ).astype(np.float64)
    if "ctf/exp_group_id" in rows.dtype.names:
        groups = rows["ctf/exp_group_id"].astype(np.int64)
        optics_group = groups - groups.min() + 1
    else:
        optics_group = optics_groups(ctf)[0]
    fields = {"apix": apix_field, "rotations": origin("alignments3D/pose"),
              "shift_x": origin("alignments3D/shift"), "shift_y": origin("alignments3D/shift"),
              **{q: origin(name) for q, name in zip(CTF_COLUMNS, _CTF_FIELDS)}}
    return ParticleSet(
        source=source,
        apix=apix,
        rotations=rotvec_to_matrix(pose),
        shifts=shifts,
        ctf=ctf,
        optics_group=optics_group,
        provenance=Provenance(format="cryosparc", path=path, rows=rows, extra=extra, fields=fields),
    ).validate()


def _rows_from_particles(ps: ParticleSet, relative_to: Path) -> np.ndarray:
    """A minimal cryoSPARC particle array: uid, blob/*, alignments3D/*, ctf/*."""
    encoded = np.array([p.encode("utf-8") for p in relative_paths(ps.source.files, relative_to)])
    n = len(ps)
    dtype = [
        ("uid", "<u8"),
        ("blob/path", encoded.dtype.str),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/psize_A", "<f4"),
        ("ctf/exp_group_id", "<u4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
    ]
    out = np.zeros(n, dtype=dtype)
    out["uid"] = _unique_uids(n)
    out["blob/path"] = encoded[ps.source.file_index]
    out["blob/idx"] = ps.source.frames
    out["blob/shape"] = ps.box
    out["blob/psize_A"] = ps.apix
    out["alignments3D/pose"] = matrix_to_rotvec(ps.rotations)
    out["alignments3D/shift"] = ps.shifts / ps.apix
    out["alignments3D/psize_A"] = ps.apix
    out["ctf/exp_group_id"] = ps.optics_group
    out["ctf/accel_kv"] = ps.ctf[:, 3]
    out["ctf/cs_mm"] = ps.ctf[:, 4]
    out["ctf/amp_contrast"] = ps.ctf[:, 5]
    out["ctf/df1_A"] = ps.ctf[:, 0]
    out["ctf/df2_A"] = ps.ctf[:, 1]
    out["ctf/df_angle_rad"] = np.deg2rad(ps.ctf[:, 2])
    out["ctf/phase_shift_rad"] = np.deg2rad(ps.ctf[:, 6])
    return out


def _restacked_rows(rows: np.ndarray, ps: ParticleSet, relative_to: Path) -> np.ndarray:
    """``rows`` (one per particle of ``ps``) describing ``ps``'s images as ``ps.source`` holds
    them: ``blob/path`` (relative to ``relative_to``), ``blob/idx``, ``blob/shape`` and
    ``blob/psize_A`` from ``ps``; ``alignments3D/shift`` in pixels of ``ps.apix``, which
    ``alignments3D/psize_A`` (when present) then states. Every other field is kept."""
    encoded = np.array([p.encode("utf-8") for p in relative_paths(ps.source.files, relative_to)])
    # The new paths may be longer than the field's fixed width.
    width = max(encoded.dtype.itemsize, rows.dtype["blob/path"].itemsize)
    dtype = [(name, f"S{width}") if name == "blob/path" else (name, rows.dtype[name])
             for name in rows.dtype.names]
    out = np.empty(len(rows), dtype=dtype)
    for name in rows.dtype.names:
        out[name] = rows[name]
    out["blob/path"] = encoded[ps.source.file_index]
    out["blob/idx"] = ps.source.frames
    out["blob/psize_A"] = ps.apix
    out["alignments3D/shift"] = ps.shifts / ps.apix
    for name, value in (("blob/shape", ps.box), ("alignments3D/psize_A", ps.apix)):
        if name in rows.dtype.names:
            out[name] = value
    return out


def _unique_uids(n: int) -> np.ndarray:
    """n distinct random 64-bit uids (cryoSPARC identifies particles by them across jobs)."""
    rng = np.random.default_rng()
    uids = np.unique(rng.integers(1, 2**63, size=n, dtype=np.int64, endpoint=False))
    while len(uids) < n:  # collisions are astronomically rare
        uids = np.unique(np.concatenate([uids, rng.integers(1, 2**63, size=n - len(uids), dtype=np.int64)]))
    return rng.permutation(uids).astype(np.uint64)


def write_cs(path: str | os.PathLike, ps: ParticleSet, restacked: bool = False) -> None:
    """Atomically write ``ps`` as a cryoSPARC ``.cs`` file.

    Particles read from a .cs file are written as their original rows (every field unchanged,
    passthrough fields included); others as a minimal array with stack paths relative to the
    new file's folder. restacked: ``ps``'s images were written anew into the stacks
    ``ps.source`` names, at ``ps.apix`` (``cryospire downsample``): original rows then keep
    every other field, while ``blob/*`` point to the new stacks and ``alignments3D/shift`` is
    in their pixels (see :func:`_restacked_rows`).
    """
    path = Path(path)
    prov = ps.provenance
    if prov.format == "cryosparc" and prov.rows is not None:
        rows = _restacked_rows(prov.rows, ps, path.parent) if restacked else prov.rows
    else:
        rows = _rows_from_particles(ps, path.parent)
    write_npy(path, rows)
