"""RELION STAR particle files (3.0 and 3.1+), read into and written from a ParticleSet.

RELION 3.1+ files hold a ``data_optics`` table joined to ``data_particles`` on
``rlnOpticsGroup`` and give origins in Å (``rlnOriginXAngst/YAngst``); RELION 3.0 files hold one
table with optics per particle and origins in pixels (``rlnOriginX/Y``). ``rlnImageName`` is
``000123@path/stack.mrcs`` with a 1-based image number. Files we write are RELION 3.1; subsets
of a STAR file keep every original column and point to the original stacks.
"""

from __future__ import annotations

import linecache
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryospire_core.errors import InputError
from cryospire_core.imaging.ctf import CTF_COLUMNS
from cryospire_core.imaging.geometry import euler_to_matrix, matrix_to_euler
from cryospire_core.io.atomic import atomic_path
from cryospire_core.io.mrc import find_file, open_stacks, relative_paths
from cryospire_core.io.particles import (
    ParticleSet,
    Provenance,
    check_angles,
    common_pixel_size,
    require,
)

# Columns that may sit in data_optics (RELION 3.1) or in the particle rows (3.0).
_CTF_REQUIRED = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)  # in the order of ctf.CTF_COLUMNS
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_REQUIRED = ("rlnImageName", *_ANGLES, *_CTF_REQUIRED)
# Optional CTF columns and the value RELION assumes when they are absent.
_CTF_DEFAULTS = {"rlnPhaseShift": 0.0, "rlnCtfBfactor": 0.0, "rlnCtfScalefactor": 1.0}
# STAR values are text: 6 decimals, as RELION writes them.
_FLOAT_FORMAT = "%.6f"
# Folders above the STAR file searched for project-relative stack paths (RELION jobs sit two
# levels below the project directory, e.g. Refine3D/job012/run_data.star).
_PARENT_LEVELS = 3
# A line opening a block (``data_NAME``, NAME up to the first blank) or a loop, as starfile
# sees them: after leading blanks.
_BLOCK_OR_LOOP = re.compile(rb"^[ \t]*(data_\S*|loop_)", re.M)


def _as_numbers(path: Path, values: pd.Series, name: str, dtype) -> np.ndarray:
    """A column as a numpy array of ``dtype``; InputError naming the column when it is not numeric."""
    try:
        return values.to_numpy(dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InputError(path, name, "numbers", f"non-numeric values ({exc})") from exc


class _Columns:
    """Per-particle column lookup: the particle rows first, then the joined optics table."""

    def __init__(self, path: Path, particles: pd.DataFrame, optics: pd.DataFrame | None) -> None:
        self.path = path
        self.particles = particles
        self.optics = optics
        self._optics_row = None
        if optics is not None and len(optics):
            ids = (_as_numbers(path, optics["rlnOpticsGroup"], "rlnOpticsGroup", np.int64)
                   if "rlnOpticsGroup" in optics else np.ones(1, np.int64))
            if "rlnOpticsGroup" in particles:
                groups = _as_numbers(path, particles["rlnOpticsGroup"], "rlnOpticsGroup", np.int64)
            elif len(ids) == 1:
                groups = np.full(len(particles), ids[0])
            else:
                raise InputError(path, "rlnOpticsGroup", "a column in data_particles (there are several optics groups)", "none")
            order = np.argsort(ids)
            pos = np.clip(np.searchsorted(ids, groups, sorter=order), 0, len(ids) - 1)
            row = order[pos]
            bad = ids[row] != groups
            if np.any(bad):
                expected = f"one of the data_optics groups {sorted(ids.tolist())}"
                raise InputError(path, "rlnOpticsGroup", expected, int(groups[bad][0]))
            self._optics_row = row

    def __contains__(self, name: str) -> bool:
        return name in self.particles or (self._optics_row is not None and name in self.optics)

    def get(self, name: str, dtype=np.float64) -> np.ndarray:
        if name in self.particles:
            values = self.particles[name]
        else:
            values = self.optics[name].iloc[self._optics_row]
        return _as_numbers(self.path, values, name, dtype)


def _line_end(raw: bytes, pos: int) -> int:
    """Offset just past the line holding ``raw[pos]`` (its newline included)."""
    end = raw.find(b"\n", pos)
    return len(raw) if end < 0 else end + 1


def _loop_header_clutter(path: Path, raw: bytes) -> list[tuple[int, int]]:
    """Byte ranges (start, end) of the comment and blank lines inside loop headers (between
    ``loop_`` and its last ``_label``), after refusing two blocks of one name.

    RELION reads the first of two ``data_particles`` (or ``data_optics``) blocks and starfile the
    last, and RELION never writes two: a second one is an InputError naming both lines. RELION's
    parser skips comment lines anywhere, while starfile ends a loop header at the first one and
    then misreads the remaining labels as data.
    """
    seen: dict[str, list[int]] = {}
    clutter = []
    line, last = 1, 0
    for m in _BLOCK_OR_LOOP.finditer(raw):
        line += raw.count(b"\n", last, m.start())
        last = m.start()
        word = m.group(1)
        if word != b"loop_":
            seen.setdefault(word[5:].decode("utf-8", "replace"), []).append(line)
            continue
        # Walk the header's lines; comment/blank lines count only when a label follows them.
        pending, pos = [], _line_end(raw, m.end())
        while pos < len(raw):
            end = _line_end(raw, pos)
            text = raw[pos:end].strip()
            if text.startswith(b"_"):
                clutter += pending
                pending = []
            elif not text or text.startswith(b"#"):
                pending.append((pos, end))
            else:
                break
            pos = end
    for name, lines in seen.items():
        if len(lines) > 1:
            where = ", ".join(map(str, lines))
            raise InputError(path, f"data_{name}", f"one data_{name} block (RELION reads only the first)",
                             f"{len(lines)} blocks, at lines {where}")
    return clutter


def _utf8(raw: bytes) -> bytes:
    """``raw`` itself when it is UTF-8, else recoded from Latin-1 (older tools and file systems
    write micrograph folders and comments in it; starfile reads such a file as no blocks at all,
    while every byte is a Latin-1 character)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1").encode("utf-8")
    return raw


def _read_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """(particles, optics or None, format) from a STAR file (see :func:`_loop_header_clutter`)."""
    if not path.is_file():
        raise InputError(path, "STAR file", "an existing file", "no such file")
    raw = path.read_bytes()
    text = _utf8(raw)
    clutter = _loop_header_clutter(path, text)
    parsed = path
    if clutter or text is not raw:  # parse a copy without what starfile cannot read
        raw = text
        keep, start = [], 0
        for a, b in clutter:
            keep.append(raw[start:a])
            start = b
        keep.append(raw[start:])
        with tempfile.NamedTemporaryFile("wb", suffix=".star", delete=False) as f:
            f.write(b"".join(keep))
        parsed = Path(f.name)
    del raw
    try:
        blocks = starfile.read(parsed, always_dict=True, parse_as_string=["rlnImageName", "rlnMicrographName"])
    except Exception as exc:  # the parser raises assorted pandas/ValueErrors on malformed text
        raise InputError(path, "STAR syntax", "a readable STAR file", exc) from exc
    finally:
        # starfile reads lines through linecache and clears it only after a successful parse: a
        # failed one would leave this file's lines there for the next read of the same name (in a
        # long-lived process such as napari, even after the user fixed the file).
        linecache.clearcache()
        if parsed != path:
            parsed.unlink()
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "optics" in tables and "particles" in tables:
        return tables["particles"], tables["optics"], "relion3.1"
    for table in tables.values():
        if "rlnImageName" in table:
            return table, None, "relion3.0"
    raise InputError(path, "rlnImageName", "a table of particles (data_particles with rlnImageName)", f"blocks {list(blocks)}")


def _image_names(path: Path, names: pd.Series) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Split ``000123@stack.mrcs`` into 0-based frames (N,), stack names and codes (N,)."""
    parts = names.astype(str).str.partition("@")
    has_at = (parts[1] == "@").to_numpy()
    frames = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce").to_numpy(dtype=np.float64)
    stacks = parts[2].where(has_at, parts[0])
    bad = ~np.isfinite(frames) | (frames < 1) | (frames != np.floor(frames)) | (stacks.str.len() == 0).to_numpy()
    if np.any(bad):
        expected = "entries like 000123@stack.mrcs (image numbers from 1)"
        raise InputError(path, "rlnImageName", expected, names.iloc[int(np.argmax(bad))])
    codes, uniques = pd.factorize(stacks)
    return frames.astype(np.int64) - 1, [str(u) for u in uniques], codes.astype(np.int64)


def _pixel_size(path: Path, cols: _Columns, apix: float | None) -> tuple[float, tuple[Path | None, str]]:
    """The particles' pixel size (Å) and where it was read (see ``Provenance.fields``)."""
    if apix is not None:
        return float(apix), (None, "apix (given)")
    if "rlnImagePixelSize" in cols:
        values = cols.get("rlnImagePixelSize")
        field = "rlnImagePixelSize"
    elif "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
        values = cols.get("rlnDetectorPixelSize") * 1e4 / cols.get("rlnMagnification")
        field = "rlnDetectorPixelSize/rlnMagnification"
    else:
        raise InputError(
            path,
            "rlnImagePixelSize",
            "a pixel size (rlnImagePixelSize, or rlnDetectorPixelSize and rlnMagnification, or --apix)",
            "none",
        )
    return common_pixel_size(path, field, values), (path, field)


def read_star(path: str | os.PathLike, datadir: str | os.PathLike | None = None, apix: float | None = None) -> ParticleSet:
    """Read a RELION 3.0 or 3.1+ particle STAR file.

    datadir: extra folder where stacks are searched. A stack path is tried relative to the STAR
    file's folder, to datadir, to the STAR file's parent folders (up to 3 levels: the RELION
    project of a job's output), then as a bare file name in datadir and the STAR file's folder.
    apix: Å/pixel overriding the file's pixel size (needed for 3.0 files that lack one).
    Origins missing from the file are taken as 0, as RELION does. Stacks are checked from their
    headers (count, square, one box size, ``rlnImageSize``), values by ``ParticleSet.validate``;
    errors name the file and the column. Comment lines in loop headers are skipped, as RELION
    does; a second block of one name (two ``data_particles``) is an error.
    """
    path = Path(path)
    particles, optics, fmt = _read_tables(path)
    if len(particles) == 0:
        raise InputError(path, "data_particles", "at least one particle", "an empty table")
    cols = _Columns(path, particles, optics)
    missing = [c for c in _REQUIRED if c not in cols]
    if missing:
        raise InputError(path, ", ".join(missing), "columns in data_particles or data_optics", "none")
    apix, apix_field = _pixel_size(path, cols, apix)

    frames, stack_names, codes = _image_names(path, particles["rlnImageName"])
    star_dir = path.parent
    data_dir = Path(datadir) if datadir is not None else None
    dirs = [star_dir, data_dir, *list(star_dir.absolute().parents)[:_PARENT_LEVELS]]
    files = [find_file(s, path, "rlnImageName", dirs, [data_dir, star_dir]) for s in stack_names]
    source, _ = open_stacks(files, codes, frames, path, "rlnImageName")
    if "rlnImageSize" in cols:
        size = cols.get("rlnImageSize")
        expected = f"{source.box} px, the box of the images in {files[0].name}"
        require(path, "rlnImageSize", size == source.box, expected, size, unit=" px")

    angles = [cols.get(c) for c in _ANGLES]
    for name, values in zip(_ANGLES, angles):
        check_angles(path, name, values)
    rotations = euler_to_matrix(*angles)
    n = len(particles)
    origins = ("rlnOriginXAngst", "rlnOriginYAngst")
    if all(c in cols for c in origins):
        shifts = np.stack([cols.get(c) for c in origins], 1)
    elif all(c in cols for c in ("rlnOriginX", "rlnOriginY")):
        origins = ("rlnOriginX", "rlnOriginY")
        shifts = np.stack([cols.get(c) for c in origins], 1) * apix
    else:
        shifts = np.zeros((n, 2))
    ctf = np.stack(
        [cols.get(c) for c in _CTF_REQUIRED]
        + [cols.get(c) if c in cols else np.full(n, d) for c, d in _CTF_DEFAULTS.items()],
        axis=1,
    )
    if "rlnOpticsGroup" in cols:
        optics_group = cols.get("rlnOpticsGroup", np.int64)
    else:
        optics_group = optics_groups(ctf)[0]
    extra = {"optics": optics} if optics is not None else {}
    fields = {"apix": apix_field, "rotations": (path, "/".join(_ANGLES)),
              "shift_x": (path, origins[0]), "shift_y": (path, origins[1]),
              **{q: (path, c) for q, c in zip(CTF_COLUMNS, (*_CTF_REQUIRED, *_CTF_DEFAULTS))}}
    return ParticleSet(
        source=source,
        apix=apix,
        rotations=rotations,
        shifts=shifts,
        ctf=ctf,
        optics_group=optics_group,
        provenance=Provenance(format=fmt, path=path, rows=particles, extra=extra, fields=fields),
    ).validate()


def optics_groups(ctf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optics groups for metadata that has none.

    ctf: (N, 9) ``ctf.CTF_COLUMNS``. Returns the 1-based group (N,) of each particle, one group per
    distinct (voltage, Cs, amplitude contrast) in sorted order, and those triples (G, 3).
    """
    keys, inverse = np.unique(np.round(ctf[:, 3:6], 6), axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64) + 1, keys


def _optics_table(keys: np.ndarray, apix: float, box: int) -> pd.DataFrame:
    g = len(keys)
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(g)],
            "rlnOpticsGroup": np.arange(1, g + 1),
            "rlnMicrographOriginalPixelSize": np.full(g, apix),
            "rlnVoltage": keys[:, 0],
            "rlnSphericalAberration": keys[:, 1],
            "rlnAmplitudeContrast": keys[:, 2],
            "rlnImagePixelSize": np.full(g, apix),
            "rlnImageSize": np.full(g, box),
            "rlnImageDimensionality": np.full(g, 2),
        }
    )


def image_names(ps: ParticleSet, relative_to: str | os.PathLike) -> pd.Series:
    """``rlnImageName`` strings (N,) for the particles, stack paths relative to ``relative_to``."""
    rel = np.asarray(relative_paths(ps.source.files, relative_to), dtype=object)
    stacks = pd.Series(rel[ps.source.file_index], dtype=str)
    numbers = pd.Series(ps.source.frames + 1).astype(str).str.zfill(6)
    return numbers + "@" + stacks


def write_star(path: str | os.PathLike, ps: ParticleSet, image_paths_relative_to: str | os.PathLike | None = None) -> None:
    """Atomically write ``ps`` as a RELION 3.1 particle STAR file.

    Particles read from a STAR file are written as their original rows (every column, in the
    kept order) with ``rlnImageName`` rewritten to reach the same stacks from the new file's
    folder (or from ``image_paths_relative_to``); RELION 3.0 rows gain ``rlnOpticsGroup`` and
    their pixel origins become ``rlnOriginXAngst/YAngst``. Other particle sets are written from
    their poses and CTFs with one optics group per distinct (voltage, Cs, amplitude contrast).
    ``rlnImagePixelSize`` and ``rlnImageSize`` are those of the stacks the names point to (a
    stack ``cryospire downsample`` wrote has its own), whatever box ``ps`` is read at.
    """
    path = Path(path)
    names = image_names(ps, image_paths_relative_to if image_paths_relative_to is not None else path.parent)
    prov = ps.provenance
    stacks = ps.at_box(ps.source.box)  # the images as the stacks hold them
    if prov.format == "relion3.1" and prov.rows is not None:
        rows = prov.rows.copy()
        rows["rlnImageName"] = names.to_numpy()
        optics = prov.extra["optics"].copy()
        optics["rlnImagePixelSize"] = stacks.apix
        optics["rlnImageSize"] = stacks.box
        blocks = {"optics": optics, "particles": rows}
    else:
        groups, keys = optics_groups(ps.ctf)
        optics = _optics_table(keys, stacks.apix, stacks.box)
        if prov.format == "relion3.0" and prov.rows is not None:
            rows = _relion30_rows_as_31(prov.rows, ps, names, groups)
        else:
            rows = _rows_from_particles(ps, names, groups)
        blocks = {"optics": optics, "particles": rows}
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format=_FLOAT_FORMAT)


def _relion30_rows_as_31(rows: pd.DataFrame, ps: ParticleSet, names: pd.Series, groups: np.ndarray) -> pd.DataFrame:
    """RELION 3.0 rows with every column kept, origins in Å in place of pixels, optics groups;
    a per-particle pixel size or image size moves to data_optics (as the stacks' values)."""
    out = {}
    for col in rows.columns:
        if col in ("rlnOriginX", "rlnOriginY"):
            out[col + "Angst"] = ps.shifts[:, 0 if col == "rlnOriginX" else 1]
        elif col == "rlnImageName":
            out[col] = names.to_numpy()
        elif col not in ("rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize"):
            out[col] = rows[col].to_numpy()
    out["rlnOpticsGroup"] = groups
    return pd.DataFrame(out)


def _rows_from_particles(ps: ParticleSet, names: pd.Series, groups: np.ndarray) -> pd.DataFrame:
    euler = matrix_to_euler(ps.rotations)
    return pd.DataFrame(
        {
            "rlnImageName": names.to_numpy(),
            "rlnAngleRot": euler[:, 0],
            "rlnAngleTilt": euler[:, 1],
            "rlnAnglePsi": euler[:, 2],
            "rlnOriginXAngst": ps.shifts[:, 0],
            "rlnOriginYAngst": ps.shifts[:, 1],
            "rlnDefocusU": ps.ctf[:, 0],
            "rlnDefocusV": ps.ctf[:, 1],
            "rlnDefocusAngle": ps.ctf[:, 2],
            "rlnPhaseShift": ps.ctf[:, 6],
            "rlnCtfBfactor": ps.ctf[:, 7],
            "rlnCtfScalefactor": ps.ctf[:, 8],
            "rlnOpticsGroup": groups,
        }
    )
