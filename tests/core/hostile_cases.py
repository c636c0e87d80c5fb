"""Generators of hostile and broken inputs and the rule every reader must follow on them.

Shared by ``tests/core/test_hostile_inputs.py`` (hypothesis, a few hundred cases per run) and
``benchmarks/hostile_tally.py`` (a fixed seed and thousands of cases). A *family* is one kind of
damage to one file of a small valid data set; :func:`run_case` applies a drawn case to a fresh
copy of the data set, runs the matching reader and classifies the outcome:

- ``error``: an InputError naming a file, a field and what was expected;
- ``repair``: a documented repair (NaN/Inf pixels set to 0 with a RuntimeWarning; missing
  origins taken as 0 and missing optional CTF columns at RELION's defaults);
- ``read``: the damage did not matter (e.g. an unused header word) and the data read is sound.

Anything else (another exception, a result that is not sound, more than ``TIMEOUT_S`` seconds,
more than ``MAX_ALLOC_BYTES`` of Python/numpy allocations) raises :class:`Unexpected`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import pickle
import shutil
import signal
import struct
import tempfile
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from hypothesis import strategies as st
from numpy.lib import format as npy_format

from cryospire_core.errors import InputError
from cryospire_core.imaging.geometry import matrix_to_euler, random_rotations
from cryospire_core.io.cryodrgn import write_ctf_pkl, write_poses_pkl
from cryospire_core.io.cryosparc import write_cs
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import read_map, write_map, write_stack

N, D, APIX = 12, 16, 2.0
TIMEOUT_S = 10
# The valid data set is ~20 kB: a reader that allocates more than this was talked into it.
MAX_ALLOC_BYTES = 64 << 20
OUTCOMES = ("error", "repair", "read")


class Unexpected(AssertionError):
    """A case that did not end in an InputError, a documented repair or a sound read."""


# -- the valid data set ---------------------------------------------------------------------------


def make_template(folder: Path) -> Path:
    """A valid data set in ``folder``: stack.mrcs with particles.star, particles.cs, poses.pkl and
    ctf.pkl describing it, and a map.mrc."""
    rng = np.random.default_rng(0)
    write_stack(folder / "stack.mrcs", rng.standard_normal((N, D, D)).astype(np.float32), APIX)
    ang = matrix_to_euler(random_rotations(N, rng))
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(N)],
        "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
        "rlnOriginXAngst": rng.uniform(-2, 2, N), "rlnOriginYAngst": rng.uniform(-2, 2, N),
        "rlnDefocusU": rng.uniform(1e4, 2e4, N), "rlnDefocusV": rng.uniform(1e4, 2e4, N),
        "rlnDefocusAngle": rng.uniform(0, 180, N), "rlnOpticsGroup": np.ones(N, int),
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [APIX], "rlnImageSize": [D]})
    starfile.write({"optics": optics, "particles": particles}, folder / "particles.star")
    ps = load_particles(folder / "particles.star", invert=False)
    write_cs(folder / "particles.cs", ps)
    write_poses_pkl(folder / "poses.pkl", ps)
    write_ctf_pkl(folder / "ctf.pkl", ps)
    write_map(folder / "map.mrc", rng.standard_normal((D, D, D)).astype(np.float32), APIX)
    return folder


# -- readers and soundness checks -----------------------------------------------------------------


def _read_particles(name: str, **kw) -> Callable[[Path], object]:
    def read(folder: Path):
        ps = load_particles(folder / name, invert=False, **{k: folder / v for k, v in kw.items()})
        return ps, ps.images(np.arange(len(ps)))

    return read


def _sound_particles(result) -> None:
    ps, imgs = result
    assert ps.box == D and len(ps) >= 1, (ps.box, len(ps))
    assert np.isfinite(ps.rotations).all() and np.isfinite(ps.ctf).all() and np.isfinite(ps.shifts).all()
    assert imgs.shape == (len(ps), D, D) and imgs.dtype == np.float32 and np.isfinite(imgs).all()


def _sound_map(m) -> None:
    assert m.data.dtype == np.float32 and m.data.ndim == 3 and np.isfinite(m.data).all() and m.apix > 0


# -- MRC damage -----------------------------------------------------------------------------------

# Header words: 4-byte little-endian ints/floats at these byte offsets.
HEADER_INT = {"nx": 0, "ny": 4, "nz": 8, "mx": 28, "my": 32, "mz": 36, "mapc": 64, "mapr": 68, "maps": 72,
              "nsymbt": 92}
HEADER_FLOAT = {"cella_x": 40, "cella_y": 44, "cella_z": 48}
HUGE = [2**31 - 1, 10**9, 10**6, 65536]
LYING = [0, -1, 1, 2, 3, 7, 12, 100, *HUGE]
UNKNOWN_MODES = [-1, 3, 4, 5, 7, 8, 11, 13, 101, 2**31 - 1]


def _edit_bytes(path: Path, edit: Callable[[bytearray], bytearray]) -> None:
    path.write_bytes(bytes(edit(bytearray(path.read_bytes()))))


def _mrc_damage(kind: str):
    """(strategy, corrupt(path, value)) for one kind of MRC damage."""
    def put(fmt, offset):
        def corrupt(path, value):
            def edit(raw):
                raw[offset:offset + 4] = struct.pack(fmt, value)
                return raw
            _edit_bytes(path, edit)
        return corrupt

    if kind == "lying header":
        strat = st.tuples(st.sampled_from(sorted(HEADER_INT)), st.sampled_from(LYING))
        return strat, lambda p, c: put("<i", HEADER_INT[c[0]])(p, c[1])
    if kind == "huge claimed size":
        strat = st.tuples(st.sampled_from(["nx", "ny", "nz", "nsymbt"]), st.sampled_from(HUGE))
        return strat, lambda p, c: put("<i", HEADER_INT[c[0]])(p, c[1])
    if kind == "bad cell":
        strat = st.tuples(st.sampled_from(sorted(HEADER_FLOAT)), st.sampled_from([0.0, -1.0, np.nan, np.inf, 1e30]))
        return strat, lambda p, c: put("<f", HEADER_FLOAT[c[0]])(p, c[1])
    if kind == "unknown mode":
        return st.sampled_from(UNKNOWN_MODES), put("<i", 12)
    if kind == "truncated":
        return st.integers(0, 1024 + 4 * N * D * D - 1), lambda p, n: _edit_bytes(p, lambda raw: raw[:n])
    if kind == "NaN/Inf values":
        strat = st.tuples(st.integers(0, N * D * D - 1), st.sampled_from([np.nan, np.inf, -np.inf]))

        def corrupt(path, case):
            put("<f", 1024 + 4 * case[0])(path, case[1])
        return strat, corrupt
    if kind == "random bytes":
        return st.binary(max_size=4096), lambda p, b: p.write_bytes(b)
    if kind == "empty file":
        return st.just(b""), lambda p, b: p.write_bytes(b)
    raise KeyError(kind)


MRC_KINDS = ("lying header", "huge claimed size", "bad cell", "unknown mode", "truncated", "NaN/Inf values",
             "random bytes", "empty file")


# -- STAR damage ----------------------------------------------------------------------------------

STAR_COLUMNS = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"]
OPTICS_COLUMNS = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnOpticsGroup"]
# Dropping these applies a documented default (origins 0, as RELION does).
STAR_DEFAULTED = {"rlnOriginXAngst", "rlnOriginYAngst"}


def _rewrite_star(path: Path, change: Callable[[dict], None]) -> None:
    blocks = starfile.read(path, always_dict=True)
    blocks = {k: v.astype(object) for k, v in blocks.items()}
    change(blocks)
    starfile.write(blocks, path, overwrite=True)


def _star_damage(kind: str):
    if kind == "missing column":
        strat = st.one_of(st.tuples(st.just("particles"), st.sampled_from(STAR_COLUMNS)),
                          st.tuples(st.just("optics"), st.sampled_from(OPTICS_COLUMNS)))
        return strat, lambda p, c: _rewrite_star(p, lambda b: b.__setitem__(c[0], b[c[0]].drop(columns=[c[1]])))
    if kind == "non-numeric value":
        strat = st.tuples(st.sampled_from(STAR_COLUMNS[1:]), st.integers(0, N - 1),
                          st.sampled_from(["abc", "nan", "inf", "-inf", "1e999", "", "0x10", "1,5", "--1"]))

        def corrupt(path, c):
            def change(b):
                b["particles"].loc[c[1], c[0]] = c[2] if c[2] else '""'
            _rewrite_star(path, change)
        return strat, corrupt
    if kind == "duplicated column":
        def corrupt(path, col):
            text = path.read_text()
            path.write_text(text.replace(f"_{col} ", f"_{col} #99\n_{col} ", 1))
        return st.sampled_from(STAR_COLUMNS), corrupt
    if kind == "mismatched count":
        # More rows than the stack holds (a reference past its end), or a row pointing past it.
        strat = st.tuples(st.integers(1, 5), st.sampled_from(["append", "renumber"]))

        def corrupt(path, c):
            def change(b):
                parts = b["particles"]
                if c[1] == "append":
                    parts = pd.concat([parts] + [parts.iloc[[0]]] * c[0], ignore_index=True)
                    parts.loc[len(parts) - 1, "rlnImageName"] = f"{N + c[0]:06d}@stack.mrcs"
                else:
                    parts.loc[c[0], "rlnImageName"] = f"{N + c[0]:06d}@stack.mrcs"
                b["particles"] = parts
            _rewrite_star(path, change)
        return strat, corrupt
    if kind == "bad image name":
        strat = st.tuples(st.integers(0, N - 1), st.sampled_from(
            ["0@stack.mrcs", "-3@stack.mrcs", "x@stack.mrcs", "1.5@stack.mrcs", "@stack.mrcs", "1@", "stack.mrcs",
             "1@missing.mrcs", "1@../../../etc/passwd", "1@/nonexistent/x.mrcs", "99999999999999999999@stack.mrcs"]))
        return strat, lambda p, c: _rewrite_star(p, lambda b: b["particles"].__setitem__(
            "rlnImageName", [c[1] if i == c[0] else v for i, v in enumerate(b["particles"]["rlnImageName"])]))
    if kind == "missing stack":
        return st.just("stack.mrcs"), lambda p, name: (p.parent / name).unlink()
    if kind == "truncated":
        return st.floats(0.0, 1.0), lambda p, f: p.write_text(p.read_text()[: int(len(p.read_text()) * f)])
    if kind == "no optics table":
        return st.just(None), lambda p, _: _rewrite_star(p, lambda b: b.pop("optics"))
    if kind == "impossible value":
        # Physics and float32 range: every particle's value (optics) or one particle's.
        strat = st.tuples(st.sampled_from([("optics", c) for c in PHYSICS_OPTICS] +
                                          [("particles", c) for c in PHYSICS_PARTICLES]),
                          st.integers(0, N - 1), st.sampled_from(IMPOSSIBLE))

        def corrupt(path, c):
            (block, column), row, value = c

            def change(b):
                b[block].loc[row if block == "particles" else 0, column] = value
            _rewrite_star(path, change)
        return strat, corrupt
    if kind == "second block":
        def corrupt(path, name):
            text = path.read_text()
            start = text.index(f"data_{name}")
            end = text.find("data_", start + 1)
            path.write_text(text + "\n" + text[start:end if end >= 0 else len(text)])
        return st.sampled_from(["optics", "particles"]), corrupt
    if kind == "header comments":
        # RELION skips comment and blank lines in loop headers: a documented read.
        def corrupt(path, c):
            label, lines = c
            text = path.read_text()
            anchor = text.index(f"_{label} ")
            path.write_text(text[:anchor] + lines + text[anchor:])
        return st.tuples(st.sampled_from(STAR_COLUMNS + OPTICS_COLUMNS),
                         st.sampled_from(["# a comment\n", "\n", "  # indented\n\n", "#\n#\n"])), corrupt
    if kind == "random bytes":
        return st.binary(max_size=4096), lambda p, b: p.write_bytes(b)
    if kind == "empty file":
        return st.just(b""), lambda p, b: p.write_bytes(b)
    raise KeyError(kind)


# Values no microscope gives or float32 cannot hold, for the columns of the physics checks.
PHYSICS_OPTICS = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize"]
PHYSICS_PARTICLES = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOriginXAngst", "rlnOriginYAngst",
                     "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
IMPOSSIBLE = [0.0, -1.0, 1.0, -300.0, 3e5, 2700.0, 1e8, 1e-30, 1e20, 1e39, -1e39, np.nan, np.inf, -np.inf]

STAR_KINDS = ("missing column", "non-numeric value", "duplicated column", "mismatched count", "bad image name",
              "missing stack", "truncated", "no optics table", "impossible value", "second block", "header comments",
              "random bytes", "empty file")


# -- cryoSPARC .cs damage ---------------------------------------------------------------------------

CS_FIELDS = ["uid", "blob/path", "blob/idx", "blob/shape", "blob/psize_A", "alignments3D/pose", "alignments3D/shift",
             "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast"]
CS_FLOAT_FIELDS = ["blob/psize_A", "alignments3D/pose", "alignments3D/shift", "alignments3D/psize_A", "ctf/df1_A",
                   "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast"]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=True)


def _with_fields(arr: np.ndarray, fields: dict[str, tuple[str, tuple] | None]) -> np.ndarray:
    """``arr`` with some fields dropped (None) or retyped ((dtype, shape)), values cast or zero."""
    descr = []
    for name in arr.dtype.names:
        if name in fields and fields[name] is None:
            continue
        dt, shape = fields.get(name) or (arr.dtype[name].base.str, arr.dtype[name].shape)
        descr.append((name, dt, shape))
    out = np.zeros(len(arr), dtype=descr)
    for name in out.dtype.names:
        with contextlib.suppress(ValueError, TypeError):
            out[name] = arr[name]
    return out


def _edit_cs(path: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    _save_npy(path, edit(np.load(path, allow_pickle=False)))


def _cs_damage(kind: str):
    if kind == "missing field":
        return st.sampled_from(CS_FIELDS), lambda p, f: _edit_cs(p, lambda a: _with_fields(a, {f: None}))
    if kind == "NaN/Inf values":
        strat = st.tuples(st.sampled_from(CS_FLOAT_FIELDS), st.integers(0, N - 1),
                          st.sampled_from([np.nan, np.inf, -np.inf]))

        def corrupt(path, c):
            def edit(a):
                a = a.copy()
                a[c[0]][c[1]] = c[2]
                return a
            _edit_cs(path, edit)
        return strat, corrupt
    if kind == "wrong field type":
        strat = st.tuples(st.sampled_from(CS_FIELDS), st.sampled_from([("<f4", ()), ("|S4", ()), ("<i8", (2,)),
                                                                        ("<f4", (5,)), ("|b1", ())]))
        return strat, lambda p, c: _edit_cs(p, lambda a: _with_fields(a, {c[0]: c[1]}))
    if kind == "mismatched count":
        strat = st.tuples(st.integers(0, N - 1), st.sampled_from([N, N + 5, 2**31, 2**32 - 1]))

        def corrupt(path, c):
            def edit(a):
                a = a.copy()
                a["blob/idx"][c[0]] = c[1]
                return a
            _edit_cs(path, edit)
        return strat, corrupt
    if kind == "bad stack path":
        strat = st.sampled_from([b"", b">", b"missing.mrcs", b">J1/missing.mrcs", b"../../../etc/passwd",
                                 b"/nonexistent/stack.mrcs", b"\xff\xfe"])

        def corrupt(path, name):
            def edit(a):
                a = _with_fields(a, {"blob/path": ("|S64", ())})
                a["blob/path"][3] = name
                return a
            _edit_cs(path, edit)
        return strat, corrupt
    if kind == "missing stack":
        return st.just("stack.mrcs"), lambda p, name: (p.parent / name).unlink()
    if kind == "huge claimed size":
        def corrupt(path, rows):
            arr = np.load(path, allow_pickle=False)
            head = io.BytesIO()
            npy_format.write_array_header_1_0(head, {"descr": npy_format.dtype_to_descr(arr.dtype),
                                                     "fortran_order": False, "shape": (rows,)})
            path.write_bytes(head.getvalue() + arr.tobytes())
        return st.sampled_from([N + 1, 10**6, 10**9, 2**40]), corrupt
    if kind == "pickled objects":
        def corrupt(path, _):
            arr = np.empty(N, dtype=[("uid", "<u8"), ("blob/path", "O")])
            arr["blob/path"] = "stack.mrcs"
            _save_npy(path, arr)
        return st.just(None), corrupt
    if kind == "truncated":
        return st.integers(0, 4000), lambda p, n: _edit_bytes(p, lambda raw: raw[:n] if n < len(raw) else raw[:-1])
    if kind == "random bytes":
        return st.one_of(st.binary(max_size=4096), st.binary(max_size=600).map(lambda b: b"\x93NUMPY" + b)), \
            lambda p, b: p.write_bytes(b)
    if kind == "empty file":
        return st.just(b""), lambda p, b: p.write_bytes(b)
    raise KeyError(kind)


CS_KINDS = ("missing field", "NaN/Inf values", "wrong field type", "mismatched count", "bad stack path",
            "missing stack", "huge claimed size", "pickled objects", "truncated", "random bytes", "empty file")


# -- cryoDRGN pickle damage -------------------------------------------------------------------------


def _pkl_damage(kind: str):
    if kind == "mismatched count":
        strat = st.tuples(st.sampled_from(["poses.pkl", "ctf.pkl"]), st.sampled_from([0, 1, N - 1, N + 1, 10 * N]))

        def corrupt(path, c):
            from cryospire_core.io.safe_pickle import load_pickle, save_pickle
            target = path.parent / c[0]
            obj = load_pickle(target)
            if c[0] == "poses.pkl":
                save_pickle(target, tuple(np.resize(a, (c[1], *a.shape[1:])) for a in obj))
            else:
                save_pickle(target, np.resize(obj, (c[1], obj.shape[1])))
        return strat, corrupt
    if kind == "wrong values":
        strat = st.tuples(st.sampled_from(["rots", "trans", "ctf_D", "ctf_apix", "ctf_any"]), st.integers(0, N - 1),
                          st.sampled_from([np.nan, np.inf, 0.0, -1.0, 1e30, 7.0]))

        def corrupt(path, c):
            from cryospire_core.io.safe_pickle import load_pickle, save_pickle
            rots, trans = load_pickle(path.parent / "poses.pkl")
            ctf = load_pickle(path.parent / "ctf.pkl")
            field, row, value = c
            if field == "rots":
                rots[row, 1, 2] = value
            elif field == "trans":
                trans[row, 0] = value
            else:
                ctf[row, {"ctf_D": 0, "ctf_apix": 1, "ctf_any": 2 + row % 7}[field]] = value
            save_pickle(path.parent / "poses.pkl", (rots, trans))
            save_pickle(path.parent / "ctf.pkl", ctf)
        return strat, corrupt
    if kind == "wrong structure":
        strat = st.sampled_from([None, 3, "x", [], {}, (np.eye(3),), ([1, 2], [3]), np.zeros((N, 3)),
                                 np.zeros((N, 3, 3), dtype=np.complex64), (np.zeros((N, 9)), np.zeros((N, 2)))])
        return strat, lambda p, obj: (p.parent / "poses.pkl").write_bytes(pickle.dumps(obj, protocol=4))
    if kind == "malformed arrays":
        # One array of the pickles replaced by a malformed one: ragged rows, text, complex
        # numbers, booleans, deep nesting, objects.
        malformed = {"ragged": lambda a: [list(r) for r in a.reshape(len(a), -1)][:-1] + [[1.0]],
                     "text": lambda a: a.astype(str), "complex": lambda a: a.astype(complex),
                     "bool": lambda a: a > 0, "deep": lambda a: functools.reduce(lambda x, _: [x], range(80), 1.0),
                     "objects": lambda a: np.array([None] * len(a), dtype=object)}
        strat = st.tuples(st.sampled_from(["rots", "trans", "ctf"]), st.sampled_from(sorted(malformed)))

        def corrupt(path, c):
            from cryospire_core.io.safe_pickle import load_pickle
            which, how = c
            name = "ctf.pkl" if which == "ctf" else "poses.pkl"
            obj = load_pickle(path.parent / name)
            if which == "ctf":
                obj = malformed[how](obj)
            else:
                obj = tuple(malformed[how](a) if k == ("rots", "trans").index(which) else a for k, a in enumerate(obj))
            (path.parent / name).write_bytes(pickle.dumps(obj, protocol=4))
        return strat, corrupt
    if kind == "truncated":
        def corrupt(path, n):
            _edit_bytes(path.parent / "poses.pkl", lambda raw: raw[: min(n, len(raw) - 1)])
        return st.integers(0, 500), corrupt
    if kind == "random bytes":
        return st.tuples(st.sampled_from(["poses.pkl", "ctf.pkl"]), st.binary(max_size=4096)), \
            lambda p, c: (p.parent / c[0]).write_bytes(c[1])
    if kind == "empty file":
        return st.sampled_from(["poses.pkl", "ctf.pkl"]), lambda p, name: (p.parent / name).write_bytes(b"")
    raise KeyError(kind)


PKL_KINDS = ("mismatched count", "wrong values", "wrong structure", "malformed arrays", "truncated", "random bytes",
             "empty file")


# -- families ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One kind of damage: ``target`` is the damaged file, ``read`` the reader run on the folder,
    ``sound`` the check of what it returns, ``defaulted(case)`` whether a clean read of this case
    is a documented repair."""

    name: str
    target: str
    strategy: st.SearchStrategy
    corrupt: Callable[[Path, object], None]
    read: Callable[[Path], object]
    sound: Callable[[object], None]
    defaulted: Callable[[object], bool] = lambda case: False


def _families() -> dict[str, Family]:
    fams = []
    for kind in MRC_KINDS:
        strat, corrupt = _mrc_damage(kind)
        fams.append(Family(f"map: {kind}", "map.mrc", strat, corrupt, lambda f: read_map(f / "map.mrc"), _sound_map))
        fams.append(Family(f"stack: {kind}", "stack.mrcs", strat, corrupt, _read_particles("particles.star"),
                           _sound_particles))
    fams.append(Family("stack: missing", "stack.mrcs", st.just(None), lambda p, _: p.unlink(),
                       _read_particles("particles.star"), _sound_particles))
    for kind in STAR_KINDS:
        strat, corrupt = _star_damage(kind)
        defaulted = (lambda c: c[0] == "particles" and c[1] in STAR_DEFAULTED) if kind == "missing column" else \
            (lambda c: False)
        fams.append(Family(f"star: {kind}", "particles.star", strat, corrupt, _read_particles("particles.star"),
                           _sound_particles, defaulted))
    for kind in CS_KINDS:
        strat, corrupt = _cs_damage(kind)
        fams.append(Family(f"cs: {kind}", "particles.cs", strat, corrupt, _read_particles("particles.cs"),
                           _sound_particles))
    for kind in PKL_KINDS:
        strat, corrupt = _pkl_damage(kind)
        fams.append(Family(f"pkl: {kind}", "stack.mrcs", strat, corrupt,
                           _read_particles("stack.mrcs", poses="poses.pkl", ctf="ctf.pkl"), _sound_particles))
    return {f.name: f for f in fams}


FAMILIES = _families()


# -- running a case ---------------------------------------------------------------------------------


class Timeout(BaseException):
    """Raised by the alarm; a BaseException so no reader's ``except Exception`` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def fire(signum, frame):
        raise Timeout

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def fresh_copy(template: Path):
    """A private copy of the valid data set, removed afterwards whatever happens."""
    with tempfile.TemporaryDirectory(prefix="hostile-", dir=template.parent) as d:
        folder = Path(d)
        for f in template.iterdir():
            shutil.copy(f, folder / f.name)
        yield folder


def run_case(family: Family, template: Path, case) -> str:
    """Apply ``case`` to a copy of ``template`` and run the family's reader: ``error``,
    ``repair`` or ``read`` (see the module docstring), else :class:`Unexpected`."""
    with fresh_copy(template) as folder:
        family.corrupt(folder / family.target, case)
        tracemalloc.start()
        try:
            with warnings.catch_warnings(record=True) as caught, time_limit(TIMEOUT_S):
                warnings.simplefilter("always")
                result = family.read(folder)
        except InputError as exc:
            if not (exc.path and Path(exc.path).name and exc.field and exc.expected):
                raise Unexpected(f"{family.name} {case!r}: InputError without file/field/expected: {exc}") from exc
            return "error"
        except Timeout:
            raise Unexpected(f"{family.name} {case!r}: no answer within {TIMEOUT_S} s") from None
        except Exception as exc:
            raise Unexpected(f"{family.name} {case!r}: {type(exc).__name__}: {exc}") from exc
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        if peak > MAX_ALLOC_BYTES:
            raise Unexpected(f"{family.name} {case!r}: allocated {peak / 2**20:.0f} MiB")
        try:
            family.sound(result)
        except AssertionError as exc:
            raise Unexpected(f"{family.name} {case!r}: unsound result ({exc})") from exc
        repaired = any("NaN/Inf pixels" in str(w.message) for w in caught)
        return "repair" if repaired or family.defaulted(case) else "read"


class Tally:
    """Outcome counts per family: tried, error, repair, read, unexpected."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {}

    def add(self, family: str, outcome: str) -> None:
        self.counts.setdefault(family, Counter())[outcome] += 1

    def table(self) -> str:
        cols = ("tried", "InputError", "repair", "read ok", "other")
        keys = ("error", "repair", "read", "unexpected")
        width = max([len("case kind"), *map(len, self.counts)])
        lines = [f"{'case kind':<{width}}  " + "  ".join(f"{c:>10}" for c in cols)]
        total = Counter()
        for name in sorted(self.counts):
            c = self.counts[name]
            total.update(c)
            lines.append(f"{name:<{width}}  {sum(c.values()):>10}  " + "  ".join(f"{c[k]:>10}" for k in keys))
        lines.append(f"{'total':<{width}}  {sum(total.values()):>10}  " + "  ".join(f"{total[k]:>10}" for k in keys))
        return "\n".join(lines)
