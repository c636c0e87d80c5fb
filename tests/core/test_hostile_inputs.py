"""Hostile and broken inputs: every reader ends in one clear InputError (file, field, what was
expected) or reads the file correctly; never another exception, a hang or a giant allocation.

Hypothesis draws the corruptions; the number of cases tried per family is ``max_examples``.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryospire_core.errors import InputError
from cryospire_core.geometry import random_rotations, matrix_to_euler
from cryospire_core.load import load_particles
from cryospire_core.mrc import read_map, write_map, write_stack
from cryospire_core.safe_pickle import load_pickle

N, D, APIX = 12, 16, 2.0
SETTINGS = dict(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_set(folder: Path) -> Path:
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
    write_map(folder / "map.mrc", rng.standard_normal((D, D, D)).astype(np.float32), APIX)
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return _valid_set(tmp_path_factory.mktemp("valid"))


def _copy(template: Path) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="hostile-"))
    for f in template.iterdir():
        shutil.copy(f, dest / f.name)
    return dest


def _ends_cleanly(fn, path: Path):
    """Run a reader: it returns, or raises an InputError that names the file."""
    try:
        return fn()
    except InputError as exc:
        assert exc.path and Path(exc.path).name, exc
        assert exc.field and exc.expected
        return None


# MRC header words (4-byte little-endian ints/floats at these byte offsets).
HEADER_INT = {"nx": 0, "ny": 4, "nz": 8, "mode": 12, "mx": 28, "my": 32, "mz": 36, "mapc": 64, "mapr": 68,
              "maps": 72, "nsymbt": 92}
HEADER_FLOAT = {"cella_x": 40, "cella_y": 44, "cella_z": 48}
mrc_corruption = st.one_of(
    st.tuples(st.just("int"), st.sampled_from(sorted(HEADER_INT)),
              st.sampled_from([0, -1, 1, 2, 3, 4, 5, 7, 12, 100, 2**31 - 1, 10**6, 10**9])),
    st.tuples(st.just("float"), st.sampled_from(sorted(HEADER_FLOAT)),
              st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e30])),
    st.tuples(st.just("truncate"), st.just(""), st.integers(0, 1024 + 4 * D**3 - 1)),
    st.tuples(st.just("nan_pixel"), st.just(""), st.integers(0, D**3 - 1)),
    st.tuples(st.just("garbage"), st.just(""), st.binary(min_size=0, max_size=2048)),
)


def _corrupt_mrc(path: Path, kind: str, field: str, value) -> None:
    raw = bytearray(path.read_bytes())
    if kind == "int":
        raw[HEADER_INT[field] : HEADER_INT[field] + 4] = struct.pack("<i", value)
    elif kind == "float":
        raw[HEADER_FLOAT[field] : HEADER_FLOAT[field] + 4] = struct.pack("<f", value)
    elif kind == "truncate":
        raw = raw[:value]
    elif kind == "nan_pixel":
        raw[1024 + 4 * value : 1028 + 4 * value] = struct.pack("<f", float("nan"))
    else:
        raw = bytearray(value)
    path.write_bytes(bytes(raw))


@settings(**SETTINGS)
@given(mrc_corruption)
def test_corrupt_maps_end_in_a_clear_error_or_a_sound_map(template, corruption):
    folder = _copy(template)
    _corrupt_mrc(folder / "map.mrc", *corruption)
    m = _ends_cleanly(lambda: read_map(folder / "map.mrc"), folder / "map.mrc")
    if m is not None:
        assert m.data.dtype == np.float32 and m.data.ndim == 3 and np.isfinite(m.data).all() and m.apix > 0
    shutil.rmtree(folder)


@settings(**SETTINGS)
@given(mrc_corruption)
def test_corrupt_stacks_end_in_a_clear_error_or_sound_images(template, corruption):
    folder = _copy(template)
    _corrupt_mrc(folder / "stack.mrcs", *corruption)

    def read_all():
        ps = load_particles(folder / "particles.star", invert=False)
        return ps.images(np.arange(len(ps)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imgs = _ends_cleanly(read_all, folder / "stack.mrcs")
    if imgs is not None:
        assert imgs.shape == (N, D, D) and np.isfinite(imgs).all()
        if corruption[0] == "nan_pixel" and corruption[2] < N * D * D:  # the documented repair: zeroed, and the user is told
            assert any("NaN/Inf pixels" in str(w.message) for w in caught)
    shutil.rmtree(folder)


COLUMNS = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnDefocusU",
           "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"]
star_corruption = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(COLUMNS), st.just(None)),
    st.tuples(st.just("text"), st.sampled_from(COLUMNS), st.sampled_from(["abc", "nan", "inf", "", "1e999", "-0"])),
    st.tuples(st.just("duplicate"), st.sampled_from(COLUMNS), st.just(None)),
    st.tuples(st.just("extra_rows"), st.just(""), st.integers(1, 5)),
    st.tuples(st.just("cut"), st.just(""), st.floats(0.0, 1.0)),
    st.tuples(st.just("drop_optics"), st.just(""), st.just(None)),
    st.tuples(st.just("bad_index"), st.sampled_from(["0@stack.mrcs", "99@stack.mrcs", "x@stack.mrcs", "stack.mrcs",
                                                      "1@missing.mrcs", "1@../../../etc/passwd"]), st.just(None)),
)


def _corrupt_star(path: Path, kind: str, field: str, value) -> None:
    text = path.read_text()
    if kind == "cut":
        path.write_text(text[: int(len(text) * value)])
        return
    blocks = starfile.read(path, always_dict=True)
    parts = blocks["particles"].astype(object)
    if kind == "drop":
        parts = parts.drop(columns=[field])
    elif kind == "text":
        parts.loc[3, field] = value
    elif kind == "duplicate":
        text = text.replace(f"_{field} ", f"_{field} #99\n_{field} ", 1)
        path.write_text(text)
        return
    elif kind == "extra_rows":
        parts = pd.concat([parts] + [parts.iloc[[0]]] * value, ignore_index=True)
        parts.loc[len(parts) - 1, "rlnImageName"] = f"{N + value:06d}@stack.mrcs"
    elif kind == "drop_optics":
        blocks.pop("optics")
    elif kind == "bad_index":
        parts.loc[5, "rlnImageName"] = field
    blocks["particles"] = parts
    starfile.write(blocks, path, overwrite=True)


@settings(**SETTINGS)
@given(star_corruption)
def test_corrupt_star_files_end_in_a_clear_error_or_sound_particles(template, corruption):
    folder = _copy(template)
    _corrupt_star(folder / "particles.star", *corruption)
    ps = _ends_cleanly(lambda: load_particles(folder / "particles.star", invert=False), folder / "particles.star")
    if ps is not None:
        assert ps.box == D and np.isfinite(ps.rotations).all() and np.isfinite(ps.ctf).all()
        assert ps.images(np.arange(len(ps))).shape == (len(ps), D, D)
    shutil.rmtree(folder)


@settings(**SETTINGS)
@given(st.binary(max_size=4096), st.sampled_from(["poses.pkl", "particles.cs", "particles.star", "stack.mrcs"]))
def test_random_bytes_never_crash_a_reader(template, payload, name):
    folder = _copy(template)
    target = folder / name
    target.write_bytes(payload)
    if name == "poses.pkl":
        _ends_cleanly(lambda: load_pickle(target), target)
    elif name == "stack.mrcs":
        _ends_cleanly(lambda: load_particles(folder / "particles.star", invert=False).images(np.arange(N)), target)
    else:
        _ends_cleanly(lambda: load_particles(target, invert=False), target)
    shutil.rmtree(folder)
