"""Hostile command-line cases: inputs (see ``hostile_cli``).

Every case copies the valid data set into ``bad/`` (never touching ``data/``), damages the copy
and runs ``backproject`` on it. Categories:

- ``physics``: CTF and optics values no microscope gives, per format (STAR, .cs, ctf.pkl), as a
  product of field x bad value;
- ``numbers``: values finite in float64 but not in float32, NaN/Inf in poses and shifts, shifts
  beyond the box; unusual but possible values (a huge defocus) read with a warning;
- ``metadata``: inconsistent or malformed files: a second data block, comments in loop headers,
  duplicate cryoSPARC uids, transposed MRC axes, box mismatches, malformed pickles and lists.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import starfile

from cryospire_core.io.safe_pickle import load_pickle

from .hostile_cli import BOX, N_IMAGES, Case, Expect, error, ok, sound_map

CASES: list[Case] = []

APIX = 12.0  # of the simulated data set in the template
FILES = ("particles.star", "particles.mrcs", "particles.cs", "poses.pkl", "ctf.pkl")
ROW = 7  # the particle damaged where one is (0-based): errors name particle 8
OUT = ["--out", "out/bp.mrc"]
STAR = ["backproject", "bad/particles.star", *OUT]
CS = ["backproject", "bad/particles.cs", *OUT]
PKL = ["backproject", "bad/particles.mrcs", "--poses", "bad/poses.pkl", "--ctf", "bad/ctf.pkl", *OUT]


def _bad(ws: Path) -> Path:
    """A copy of the data set in ws/bad (the stack too: metadata names it relative to itself)."""
    bad = ws / "bad"
    bad.mkdir()
    for name in FILES:
        shutil.copy(ws / "data" / name, bad / name)
    return bad


def _argv(argv: list[str]) -> Callable[[Path], list[str]]:
    return lambda ws: list(argv)


def _bp_ok() -> Expect:
    return ok(lambda ws: sound_map(ws / "out" / "bp.mrc"))


# -- file editors: each returns a setup(ws) ------------------------------------------------------


def _star(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """setup: bad/particles.star with ``change(blocks)`` applied to its tables."""
    def setup(ws: Path) -> None:
        path = _bad(ws) / "particles.star"
        blocks = starfile.read(path, always_dict=True)
        change(blocks)
        starfile.write(blocks, path, overwrite=True, float_format="%.9g")
    return setup


def _set(block: str, column: str, value: float, row: int | None = None) -> Callable[[Path], None]:
    """setup: one STAR value (``row`` None: the whole column) set to ``value``."""
    def change(blocks: dict) -> None:
        table = blocks[block]
        table[column] = table[column].astype(np.float64)
        if row is None:
            table[column] = value
        else:
            table.loc[row, column] = value
    return _star(change)


def _star_text(edit: Callable[[str], str]) -> Callable[[Path], None]:
    """setup: bad/particles.star with its text rewritten by ``edit``."""
    def setup(ws: Path) -> None:
        path = _bad(ws) / "particles.star"
        text = path.read_text()
        new = edit(text)
        assert new != text, "the edit changed nothing"
        path.write_text(new)
    return setup


def _cs(edit: Callable[[np.ndarray], None]) -> Callable[[Path], None]:
    """setup: bad/particles.cs with ``edit(rows)`` applied in place."""
    def setup(ws: Path) -> None:
        path = _bad(ws) / "particles.cs"
        rows = np.load(path)
        edit(rows)
        with open(path, "wb") as f:
            np.save(f, rows)
    return setup


def _cs_set(field: str, value: float, row: int | None = ROW) -> Callable[[Path], None]:
    def edit(rows: np.ndarray) -> None:
        if row is None:
            rows[field] = value
        else:
            rows[field][row] = value
    return _cs(edit)


def _pickle(name: str, make: Callable[[object], object]) -> Callable[[Path], None]:
    """setup: bad/NAME replaced by ``make(its current content)``, pickled as cryoDRGN does."""
    def setup(ws: Path) -> None:
        path = _bad(ws) / name
        obj = load_pickle(path)
        with open(path, "wb") as f:
            pickle.dump(make(obj), f, protocol=4)
    return setup


def _ctf_set(column: int, value: float, row: int | None = ROW) -> Callable[[Path], None]:
    def make(ctf: np.ndarray) -> np.ndarray:
        ctf = ctf.astype(np.float64)  # float64, so 1e39 stays 1e39 in the file
        ctf[slice(None) if row is None else row, column] = value
        return ctf
    return _pickle("ctf.pkl", make)


def _poses_set(edit: Callable[[np.ndarray, np.ndarray], None]) -> Callable[[Path], None]:
    def make(poses: tuple) -> tuple:
        rots, trans = (np.asarray(a, dtype=np.float64).copy() for a in poses)
        edit(rots, trans)
        return rots, trans
    return _pickle("poses.pkl", make)


def _row(k: int) -> str:
    """How an error names the damaged particle."""
    return rf"at particle {k + 1}\b"


# -- physics: impossible CTF and optics values, per format ----------------------------------------

_VOLTAGE = r"expected a voltage in kV, > 0 and <= 3000"
_CS = r"expected a spherical aberration in mm, \|Cs\| <= 100"
_W = r"expected an amplitude contrast w with 0 <= w < 1"
_APIX = r"expected a pixel size in Å between 0\.01 and 10000"
_DEFOCUS = r"expected a defocus in Å, \|defocus\| <= 1e\+07"
_ALL = rf"at particle 1\b.*\({N_IMAGES} of {N_IMAGES} particles\)"  # an optics-table value
_ONE = rf"{_row(ROW)}.*\(1 of {N_IMAGES} particles\)"  # one particle's value

# STAR: optics-table values (every particle) and per-particle values (one row).
for _field, _values, _expected in (
    ("rlnVoltage", ("0", "-300", "nan", "inf", "1e39", "300000"), _VOLTAGE),  # 300000: volts, not kV
    ("rlnSphericalAberration", ("nan", "inf", "-inf", "2700"), _CS),  # 2700: µm, not mm
    ("rlnAmplitudeContrast", ("-0.1", "1", "1.5", "nan"), _W),
    ("rlnImagePixelSize", ("0", "-1", "nan", "inf", "1e-30", "1e39"), _APIX),
):
    for _v in _values:
        CASES.append(Case("physics", f"star {_field} = {_v}", _argv(STAR),
                          error(rf"bad/particles\.star: {_field}: {_expected}.*{_ALL}"),
                          setup=_set("optics", _field, float(_v))))
for _field, _values, _expected in (
    ("rlnDefocusU", ("nan", "inf", "1e8"), _DEFOCUS),
    ("rlnDefocusV", ("-inf", "-1e9"), _DEFOCUS),
    ("rlnCtfScalefactor", ("0", "-1", "nan"), r"expected a CTF scale factor > 0"),
    ("rlnCtfBfactor", ("-1e6", "nan"), r"expected a B-factor in Å² >= -101376"),
):
    for _v in _values:
        CASES.append(Case("physics", f"star {_field} = {_v} at one particle", _argv(STAR),
                          error(rf"bad/particles\.star: {_field}: {_expected}.*{_ONE}"),
                          setup=_set("particles", _field, float(_v), ROW)))

# cryoSPARC .cs: float32 fields, so 1e39 cannot occur; one particle's value.
for _field, _values, _expected in (
    ("ctf/accel_kv", ("0", "-300", "nan", "inf"), _VOLTAGE),
    ("ctf/cs_mm", ("nan", "inf", "2700"), _CS),
    ("ctf/amp_contrast", ("-0.1", "1", "nan"), _W),
    ("ctf/df1_A", ("nan", "-inf", "1e8"), _DEFOCUS),
    ("blob/psize_A", ("0", "-1", "nan"), _APIX),
):
    for _v in _values:
        CASES.append(Case("physics", f"cs {_field} = {_v}", _argv(CS),
                          error(rf"bad/particles\.cs: {_field}: {_expected}.*{_ONE}"),
                          setup=_cs_set(_field, float(_v))))

# cryoDRGN ctf.pkl: [D, apix, dfU, dfV, dfang, kV, Cs, w, phase] per image.
for _column, _values, _expected in (
    ("5 \\(voltage\\)", ("0", "-300", "nan", "1e39"), _VOLTAGE),
    ("6 \\(cs\\)", ("nan", "inf"), _CS),
    ("7 \\(amplitude_contrast\\)", ("-0.1", "1", "nan"), _W),
    ("1 \\(apix\\)", ("0", "-1", "nan", "inf"), _APIX),
    ("2 \\(defocus_u\\)", ("nan", "1e39"), _DEFOCUS),
):
    for _v in _values:
        CASES.append(Case("physics", f"ctf.pkl column {_column[0]} = {_v}", _argv(PKL),
                          error(rf"bad/ctf\.pkl: column {_column}: {_expected}.*{_ONE}"),
                          setup=_ctf_set(int(_column[0]), float(_v))))

# --apix overrides every format's pixel size: the same rule.
for _v in ("0", "-2", "nan", "inf", "1e-30"):
    CASES.append(Case("physics", f"--apix {_v}", _argv([*STAR, "--apix", _v]),
                      error(rf": error: --apix: {_APIX}, found {_v.replace('+', '')}")))


# -- numbers: float32 range, NaN/Inf in poses and shifts, shifts beyond the box -------------------

_SHIFT = rf"expected a shift smaller than the box, \|shift\| < {BOX * APIX:g} Å \({BOX} px\)"
_ANGLE = r"expected an angle in degrees, \|angle\| <= 1e\+06"
_ROTATION = r"expected rotation matrices \(orthonormal, det \+1"
_FINITE_CTF = r"expected .*"  # columns without bounds: finite (in float32) is all they need

for _field, _v, _expected in (
    ("rlnOriginXAngst", "1e39", _SHIFT),  # finite in float64, inf in float32
    ("rlnOriginYAngst", "nan", _SHIFT),
    ("rlnOriginXAngst", "-inf", _SHIFT),
    ("rlnOriginXAngst", "500", _SHIFT),  # 500 Å > 32 px x 12 Å
    ("rlnOriginYAngst", "-384", _SHIFT),  # exactly one box
    ("rlnAngleRot", "1e39", _ANGLE),
    ("rlnAngleTilt", "nan", _ANGLE),
    ("rlnAnglePsi", "inf", _ANGLE),
    ("rlnAngleRot", "1e20", _ANGLE),  # finite in float32, but no angle at all in float64
    ("rlnDefocusAngle", "1e39", _FINITE_CTF),
    ("rlnPhaseShift", "1e39", _FINITE_CTF),
    ("rlnPhaseShift", "nan", _FINITE_CTF),
    ("rlnCtfBfactor", "1e39", _FINITE_CTF),
):
    CASES.append(Case("numbers", f"star {_field} = {_v} at one particle", _argv(STAR),
                      error(rf"bad/particles\.star: {_field}: {_expected}.*{_ONE}"),
                      setup=_set("particles", _field, float(_v), ROW)))

# RELION 3.0 origins are in pixels: a box in pixels is still the limit.
def _pixel_origins(blocks: dict) -> None:
    parts = blocks["particles"]
    for axis in "XY":
        parts[f"rlnOrigin{axis}"] = parts.pop(f"rlnOrigin{axis}Angst") / APIX
    parts.loc[ROW, "rlnOriginX"] = 40.0


CASES.append(Case("numbers", "star rlnOriginX (pixels) = 40 px at one particle", _argv(STAR),
                  error(rf"bad/particles\.star: rlnOriginX: {_SHIFT}, found 480 Å {_row(ROW)}"),
                  setup=_star(_pixel_origins)))


# Unusual but possible: read, with a warning (defocus) or without (angles of several turns).
for _field, _v in (("rlnDefocusU", 5e5), ("rlnDefocusV", 500.0), ("rlnDefocusU", -1e4)):
    CASES.append(Case("numbers", f"star {_field} = {_v:g} everywhere (unusual: a warning)", _argv(STAR),
                      _bp_ok(), setup=_set("particles", _field, _v)))


def _whole_turns(blocks: dict) -> None:
    blocks["particles"]["rlnAngleRot"] -= 720
    blocks["particles"]["rlnAnglePsi"] += 1080


CASES.append(Case("numbers", "star angles shifted by whole turns (-720, +1080)", _argv(STAR), _bp_ok(),
                  setup=_star(_whole_turns)))
CASES.append(Case("numbers", "star shift of 0.9 box", _argv(STAR), _bp_ok(),
                  setup=_set("particles", "rlnOriginXAngst", 0.9 * BOX * APIX, ROW)))

# cryoSPARC: shifts in pixels of alignments3D/psize_A, poses as rotation vectors (radians).
for _field, _v, _expected in (
    ("alignments3D/shift", 1e30, _SHIFT),  # finite in float32, 1.2e31 Å after x 12 Å/px
    ("alignments3D/shift", np.nan, _SHIFT),
    ("alignments3D/shift", 33.0, _SHIFT),
    ("alignments3D/pose", np.nan, _ANGLE),
    ("alignments3D/pose", np.inf, _ANGLE),
    ("alignments3D/pose", 1e30, _ANGLE),
    ("alignments3D/psize_A", 0.0, _APIX),
    ("ctf/phase_shift_rad", 1e38, _FINITE_CTF),  # float32 in the file, inf in degrees
    ("ctf/df_angle_rad", np.inf, _FINITE_CTF),
):
    CASES.append(Case("numbers", f"cs {_field} = {_v:g} at one particle", _argv(CS),
                      error(rf"bad/particles\.cs: {_field}: {_expected}.*{_ONE}"), setup=_cs_set(_field, _v)))


def _scale_rot(rots, trans):
    rots[ROW] *= 2.0


def _reflect(rots, trans):
    rots[ROW] = -rots[ROW]  # det -1: a reflection


def _nan_rot(rots, trans):
    rots[ROW, 1, 2] = np.nan


def _shear(rots, trans):
    rots[ROW] = rots[ROW] @ np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # det 1


def _trans(value):
    def edit(rots, trans):
        trans[ROW, 0] = value
    return edit


for _name, _edit, _field, _expected in (
    ("rots scaled by 2", _scale_rot, "rots", _ROTATION),
    ("rots a reflection", _reflect, "rots", _ROTATION),
    ("rots with NaN", _nan_rot, "rots", _ROTATION),
    ("rots sheared (det 1)", _shear, "rots", _ROTATION),
    ("trans NaN", _trans(np.nan), "trans", _SHIFT),
    ("trans 1e39 (float64 pickle)", _trans(1e39), "trans", _SHIFT),
    ("trans 1.5 boxes", _trans(1.5), "trans", _SHIFT),
):
    CASES.append(Case("numbers", f"poses.pkl {_name}", _argv(PKL),
                      error(rf"bad/poses\.pkl: {_field}: {_expected}.*{_ONE}"), setup=_poses_set(_edit)))
CASES.append(Case("numbers", "ctf.pkl phase shift 1e39 (float64 pickle)", _argv(PKL),
                  error(rf"bad/ctf\.pkl: column 8 \(phase_shift\): expected .*{_ONE}"), setup=_ctf_set(8, 1e39)))
CASES.append(Case("numbers", "ctf.pkl defocus 3e5 everywhere (unusual: a warning)", _argv(PKL), _bp_ok(),
                  setup=_ctf_set(2, 3e5, None)))


# -- metadata: blocks, comments, duplicates, axes, boxes, malformed pickles and lists ------------


def _second_block(name: str) -> Callable[[str], str]:
    """The STAR text with its data_NAME block appended a second time."""
    def edit(text: str) -> str:
        start = text.index(f"data_{name}")
        end = text.find("data_", start + 1)
        return text + "\n" + text[start:end if end >= 0 else len(text)]
    return edit


def _insert_after(anchor: str, lines: str) -> Callable[[str], str]:
    return lambda text: text.replace(anchor, anchor + lines, 1)


CASES += [
    Case("metadata", "star second data_particles block", _argv(STAR),
         error(r"bad/particles\.star: data_particles: expected one data_particles block .*found 2 blocks, at lines "
               r"\d+, \d+"), setup=_star_text(_second_block("particles"))),
    Case("metadata", "star second data_optics block", _argv(STAR),
         error(r"bad/particles\.star: data_optics: expected one data_optics block .*found 2 blocks"),
         setup=_star_text(_second_block("optics"))),
    Case("metadata", "star comment between loop_ and the labels", _argv(STAR), _bp_ok(),
         setup=_star_text(_insert_after("data_particles\n\nloop_\n", "# particles of a test\n"))),
    Case("metadata", "star comments and a blank line between labels", _argv(STAR), _bp_ok(),
         setup=_star_text(_insert_after("_rlnAngleRot #2\n", "# Euler angles follow\n\n   # indented\n"))),
    Case("metadata", "star comment in the optics labels", _argv(STAR), _bp_ok(),
         setup=_star_text(_insert_after("_rlnVoltage #4\n", "# kV\n"))),
    Case("metadata", "star comment between the labels and the rows", _argv(STAR), _bp_ok(),
         setup=_star_text(_insert_after("_rlnOpticsGroup #13\n", "# rows follow\n"))),
    Case("metadata", "star rlnImageSize 64 for a 32 px stack", _argv(STAR),
         error(rf"bad/particles\.star: rlnImageSize: expected {BOX} px, the box of the images in particles\.mrcs, "
               rf"found 64 px {_ALL}"), setup=_set("optics", "rlnImageSize", 64.0)),
    Case("metadata", "star rlnImageSize NaN", _argv(STAR), error(r"bad/particles\.star: rlnImageSize: expected 32 px"),
         setup=_set("optics", "rlnImageSize", np.nan)),
]


def _passthrough(duplicate_changes: dict[str, float]) -> Callable[[Path], None]:
    """setup: bad/particles.cs without its CTF fields, which move to bad/J1_passthrough_particles.cs
    where particle ROW's uid appears twice, the copy with ``duplicate_changes``."""
    def setup(ws: Path) -> None:
        bad = _bad(ws)
        rows = np.load(bad / "particles.cs")
        ctf = [n for n in rows.dtype.names if n.startswith("ctf/")]
        main = _fields(rows, [n for n in rows.dtype.names if n not in ctf])
        other = _fields(rows, ["uid", *ctf])
        dup = other[ROW:ROW + 1].copy()
        for name, value in duplicate_changes.items():
            dup[name] = value
        for path, arr in ((bad / "particles.cs", main), (bad / "J1_passthrough_particles.cs", np.concatenate([other, dup]))):
            with open(path, "wb") as f:
                np.save(f, arr)
    return setup


def _fields(rows: np.ndarray, names: list[str]) -> np.ndarray:
    """A packed copy of some fields of a structured array."""
    out = np.zeros(len(rows), dtype=[(n, rows.dtype[n]) for n in names])
    for n in names:
        out[n] = rows[n]
    return out


CASES += [
    Case("metadata", "cs passthrough: a uid twice with different defocus", _argv(CS),
         error(r"bad/J1_passthrough_particles\.cs: uid: expected one row per particle uid \(or identical duplicates\), "
               r"found uid \d+ in 2 rows with different ctf/df1_A"), setup=_passthrough({"ctf/df1_A": 12345.0})),
    Case("metadata", "cs passthrough: a uid twice with different voltage", _argv(CS),
         error(r"J1_passthrough_particles\.cs: uid: .*different ctf/accel_kv"), setup=_passthrough({"ctf/accel_kv": 200.0})),
    Case("metadata", "cs passthrough: a uid twice, identical", _argv(CS), _bp_ok(), setup=_passthrough({})),
    Case("metadata", "cs passthrough: an extra row of another uid", _argv(CS), _bp_ok(), setup=_passthrough({"uid": 1})),
    Case("metadata", "cs blob/shape 64 for a 32 px stack", _argv(CS), error(r"bad/particles\.cs: blob/shape: expected 32 x 32"),
         setup=_cs_set("blob/shape", 64, None)),
]


def _transposed_stack(axes: tuple[int, int, int]) -> Callable[[Path], None]:
    """setup: bad/particles.mrcs stored in the axis order ``axes`` (mapc, mapr, maps), the same
    images once the header's order is honoured."""
    def setup(ws: Path) -> None:
        bad = _bad(ws)
        with mrcfile.open(bad / "particles.mrcs", permissive=True) as m:
            images = m.data.copy()  # (n, y, x)
        file_axes = axes[::-1]  # the file's (sections, rows, columns) run along these axes
        stored = images.transpose([(3, 2, 1).index(a) for a in file_axes])
        with mrcfile.new(bad / "particles.mrcs", overwrite=True) as m:
            m.set_data(np.ascontiguousarray(stored))
            m.header.mapc, m.header.mapr, m.header.maps = axes
    return setup


def _same_images(ws: Path) -> None:
    from cryospire_core.io.load import load_particles

    sound_map(ws / "out" / "bp.mrc")
    got = load_particles(ws / "bad" / "particles.star", invert=False)
    want = load_particles(ws / "data" / "particles.star", invert=False)
    idx = np.arange(N_IMAGES)
    assert np.array_equal(got.images(idx), want.images(idx)), "transposed stack read untransposed"


CASES += [
    Case("metadata", f"mrcs stack in axis order {axes}", _argv(STAR), ok(_same_images), setup=_transposed_stack(axes))
    for axes in ((2, 1, 3), (3, 2, 1), (2, 3, 1))
]


def _txt(content: bytes) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        (_bad(ws) / "stacks.txt").write_bytes(content)
    return setup


TXT = ["backproject", "bad/stacks.txt", "--poses", "bad/poses.pkl", "--ctf", "bad/ctf.pkl", *OUT]
_RAGGED = [[1.0, 0.0], [0.0]] * (N_IMAGES // 2)
_DEEP: object = 1.0
for _ in range(200):
    _DEEP = [_DEEP]

CASES += [
    Case("metadata", "txt list: binary data", _argv(TXT),
         error(r"bad/stacks\.txt: stack list: expected a text file with one \.mrcs path per line, found binary data"),
         setup=_txt(bytes(range(256)) * 8)),
    Case("metadata", "txt list: a NUL byte in a name", _argv(TXT),
         error(r"bad/stacks\.txt: stack list: expected one \.mrcs path per line, found a line 'particles\\x00\.mrcs'"),
         setup=_txt(b"particles\x00.mrcs\n")),
    Case("metadata", "txt list: a 5000-character name", _argv(TXT),
         error(r"bad/stacks\.txt: stack path: expected an existing stack 'x{60}\.\.\.x{60}' .*no such file"), setup=_txt(b"x" * 5000 + b"\n")),
    Case("metadata", "txt list: the stack, a comment and blank lines", _argv(TXT), _bp_ok(),
         setup=_txt(b"# my stacks\n\nparticles.mrcs\n\n")),
    Case("metadata", "poses.pkl ragged rows", _argv(PKL),
         error(r"bad/poses\.pkl: rots: expected numbers of shape \(300, 3, 3\) \(one row per image\), found a list "
               r"of ragged or too deeply nested rows"), setup=_pickle("poses.pkl", lambda p: (_RAGGED, p[1]))),
    Case("metadata", "poses.pkl rotations as text", _argv(PKL),
         error(r"bad/poses\.pkl: rots: expected numbers of shape \(300, 3, 3\).*found <U\d+ of shape \(300, 3, 3\)"),
         setup=_pickle("poses.pkl", lambda p: (p[0].astype(str), p[1]))),
    Case("metadata", "poses.pkl 200-deep nested lists", _argv(PKL),
         error(r"bad/poses\.pkl: rots: expected numbers of shape \(300, 3, 3\)"),
         setup=_pickle("poses.pkl", lambda p: (_DEEP, p[1]))),
    Case("metadata", "poses.pkl complex rotations", _argv(PKL),
         error(r"bad/poses\.pkl: rots: expected numbers .*found complex128"),
         setup=_pickle("poses.pkl", lambda p: (p[0].astype(complex), p[1]))),
    Case("metadata", "poses.pkl rotations of shape (N, 9)", _argv(PKL),
         error(r"bad/poses\.pkl: rots: expected numbers of shape \(300, 3, 3\) .*found float32 of shape \(300, 9\)"),
         setup=_pickle("poses.pkl", lambda p: (p[0].reshape(-1, 9), p[1]))),
    Case("metadata", "poses.pkl one pose short", _argv(PKL),
         error(r"bad/poses\.pkl: rots: expected numbers of shape \(300, 3, 3\).*found float32 of shape \(299, 3, 3\)"),
         setup=_pickle("poses.pkl", lambda p: (p[0][:-1], p[1][:-1]))),
    Case("metadata", "poses.pkl trans as text", _argv(PKL),
         error(r"bad/poses\.pkl: trans: expected numbers of shape \(300, 2\)"),
         setup=_pickle("poses.pkl", lambda p: (p[0], [["0.1", "0.2"]] * N_IMAGES))),
    Case("metadata", "poses.pkl a dict", _argv(PKL), error(r"bad/poses\.pkl: poses: expected a tuple .*found dict"),
         setup=_pickle("poses.pkl", lambda p: {"rots": p[0], "trans": p[1]})),
    Case("metadata", "ctf.pkl ragged rows", _argv(PKL),
         error(r"bad/ctf\.pkl: ctf parameters: expected numbers of shape \(300, 9\).*found a list of ragged or too deeply nested rows"),
         setup=_pickle("ctf.pkl", lambda c: [list(r) for r in c[:-1]] + [list(c[-1][:5])])),
    Case("metadata", "ctf.pkl strings", _argv(PKL), error(r"bad/ctf\.pkl: ctf parameters: expected numbers .*found <U"),
         setup=_pickle("ctf.pkl", lambda c: c.astype(str))),
    Case("metadata", "ctf.pkl 8 columns", _argv(PKL),
         error(r"bad/ctf\.pkl: ctf parameters: expected numbers of shape \(300, 9\).*found float32 of shape \(300, 8\)"),
         setup=_pickle("ctf.pkl", lambda c: c[:, :8])),
    Case("metadata", "ctf.pkl ten rows more", _argv(PKL),
         error(r"bad/ctf\.pkl: ctf parameters: expected numbers of shape \(300, 9\).*found float32 of shape \(310, 9\)"),
         setup=_pickle("ctf.pkl", lambda c: np.concatenate([c, c[:10]]))),
    Case("metadata", "ctf.pkl box column 64 for a 32 px stack", _argv(PKL),
         error(rf"bad/ctf\.pkl: column 0 \(D\): expected 32 \(the box of particles\.mrcs\), found 64 {_row(ROW)}"),
         setup=_ctf_set(0, 64.0)),
]


# -- valid files as RELION 3.0/3.1/4/5, cryoSPARC v3/v4 and other tools write them ---------------


def _star_text(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """setup: bad/particles.star with ``edit`` applied to its bytes."""
    def setup(ws: Path) -> None:
        path = _bad(ws) / "particles.star"
        path.write_bytes(edit(path.read_bytes()))
    return setup


def _relion30(blocks: dict) -> None:
    """RELION 3.0: one table, no optics block, origins in pixels, the pixel size from the detector
    pixel size and the magnification."""
    optics, particles = blocks.pop("optics"), blocks.pop("particles")
    for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        particles[column] = float(optics[column][0])
    particles["rlnDetectorPixelSize"] = APIX
    particles["rlnMagnification"] = 10000.0
    for axis in "XY":
        particles[f"rlnOrigin{axis}"] = particles.pop(f"rlnOrigin{axis}Angst") / APIX
    blocks[""] = particles.drop(columns=["rlnOpticsGroup"])


def _relion5(blocks: dict) -> None:
    """RELION 5 columns a Refine3D job adds (class, half set, micrograph, coordinates, norm, ...)."""
    p, n = blocks["particles"], len(blocks["particles"])
    p["rlnMicrographName"] = [f"MotionCorr/job002/mic{i % 7:03d}.mrc" for i in range(n)]
    p["rlnCoordinateX"], p["rlnCoordinateY"] = np.arange(n) * 3.0, np.arange(n) * 5.0
    p["rlnClassNumber"], p["rlnRandomSubset"] = 1, np.arange(n) % 2 + 1
    p["rlnNormCorrection"], p["rlnLogLikeliContribution"], p["rlnMaxValueProbDistribution"] = 1.0, 1e5, 0.5
    p["rlnNrOfSignificantSamples"], p["rlnGroupNumber"] = 1, 1
    o = blocks["optics"]
    o["rlnBeamTiltX"], o["rlnBeamTiltY"], o["rlnOddZernike"] = 0.0, 0.0, "[0,0,0,0,0,0]"


def _cs_extra_fields(ws: Path) -> None:
    """bad/particles.cs with the fields cryoSPARC v4 adds (blob/sign, ctf/anisomag, alignment
    errors, ...)."""
    path = _bad(ws) / "particles.cs"
    rows = np.load(path)
    extra = [("blob/sign", "<f4"), ("ctf/anisomag", "<f4", (4,)), ("ctf/tetra_A", "<f4", (4,)),
             ("alignments3D/error", "<f4"), ("alignments3D/class", "<u4"), ("location/micrograph_uid", "<u8")]
    out = np.zeros(len(rows), dtype=rows.dtype.descr + extra)
    for name in rows.dtype.names:
        out[name] = rows[name]
    out["blob/sign"] = -1.0
    with open(path, "wb") as f:
        np.save(f, out)


FORMATS = [
    ("RELION 3.0 (one table, origins in pixels)", _star(_relion30)),
    ("RELION 3.1/4 '# version 30001' line", _star_text(lambda b: b"\n# version 30001\n" + b)),
    ("RELION 5 '# version 50001' and its extra columns", _star(_relion5)),
    ("Windows line endings", _star_text(lambda b: b.replace(b"\n", b"\r\n"))),
    ("a UTF-8 byte-order mark", _star_text(lambda b: b"\xef\xbb\xbf" + b)),
    ("a Latin-1 comment (micrograph folder 'Ångström')", _star_text(lambda b: b"# data from /d/\xc5ngstr\xf6m\n" + b)),
    ("no newline at the end", _star_text(lambda b: b.rstrip(b"\n"))),
    ("blank lines and spaces between the rows", _star_text(lambda b: b.replace(b"\t", b"   ").replace(b"1\n0000", b"1\n\n  0000"))),
]
CASES += [Case("metadata", f"a valid STAR file: {name}", _argv(STAR), _bp_ok(), setup=setup) for name, setup in FORMATS]
CASES += [Case("metadata", "a valid cryoSPARC v4 .cs with its extra fields", _argv(CS), _bp_ok(), setup=_cs_extra_fields)]


# -- stacks whose header lies about the data, and stacks without signal (red-team additions) -----


def _mrcs_bytes(edit: Callable[[bytearray], bytes]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = _bad(ws) / "particles.mrcs"
        path.write_bytes(edit(bytearray(path.read_bytes())))
    return setup


def _header_mode(mode: int) -> Callable[[bytearray], bytes]:
    def edit(raw: bytearray) -> bytes:
        raw[12:16] = np.int32(mode).tobytes()  # the float32 data stays: read as int16, garbage
        return bytes(raw)
    return edit


_BLANK = r"bad/particles\.mrcs: images: expected particle images \(pixel values that vary\), found \d+ of \d+ images read blank"
CASES += [
    Case("metadata", f"mrcs header mode {mode} over float32 data", _argv(STAR),
         error(rf"bad/particles\.mrcs: MRC data: expected \d+ bytes for a \(300, 32, 32\) mode-{mode} array, found "
               rf"1229824 bytes \(\d+ more: a wrong mode or nz in the header\?\)"), setup=_mrcs_bytes(_header_mode(mode)))
    for mode in (0, 1, 6, 12)
] + [
    Case("metadata", "mrcs header nz one image short", _argv(STAR),
         error(r"bad/particles\.mrcs: MRC data: expected \d+ bytes for a \(299, 32, 32\) mode-2 array, found 1229824 "
               r"bytes \(4096 more"), setup=_mrcs_bytes(lambda raw: bytes(raw[:8]) + np.int32(299).tobytes() + bytes(raw[12:]))),
    Case("metadata", "mrcs with 100 stray bytes at the end (read, with a warning)", _argv(STAR), _bp_ok(),
         setup=_mrcs_bytes(lambda raw: bytes(raw) + b"x" * 100)),
    Case("numbers", "mrcs stack of all zeros", _argv(STAR), error(_BLANK),
         setup=_mrcs_bytes(lambda raw: bytes(raw[:1024]) + bytes(len(raw) - 1024))),
    Case("numbers", "mrcs stack of one constant value, --invert yes", lambda ws: [*STAR, "--invert", "yes"],
         error(_BLANK), setup=_mrcs_bytes(lambda raw: bytes(raw[:1024]) + np.ones((len(raw) - 1024) // 4, "<f4").tobytes())),
]
