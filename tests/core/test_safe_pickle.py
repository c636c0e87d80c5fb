"""safe_pickle: numpy pickles load, anything that could run code is refused before it runs."""

import codecs
import os
import pickle
import time

import numpy as np
import pytest

from cryospire_core.errors import InputError
from cryospire_core.io.safe_pickle import load_pickle, save_pickle


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_load(tmp_path, protocol):
    rng = np.random.default_rng(0)
    obj = (
        rng.standard_normal((5, 3, 3)).astype(np.float32),
        rng.standard_normal((5, 2)),
        {"name": "x", "n": 3, "scale": np.float32(1.5), "flags": [True, False], "z": 1 + 2j},
    )
    p = tmp_path / "a.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = load_pickle(p)
    np.testing.assert_array_equal(got[0], obj[0])
    assert got[0].dtype == np.float32
    np.testing.assert_array_equal(got[1], obj[1])
    assert got[2] == obj[2]


def test_numpy1_module_names_load(tmp_path):
    """Files written by numpy < 2 name numpy.core.multiarray."""
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = pickle.dumps(arr, protocol=2)
    assert b"numpy._core.multiarray" in data
    p = tmp_path / "old.pkl"
    p.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(load_pickle(p), arr)


class _WritesFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class _RunsShell:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("evil", [_WritesFile, _RunsShell])
def test_malicious_pickle_is_refused_and_does_nothing(tmp_path, evil):
    target = tmp_path / "pwned"
    p = tmp_path / "poses.pkl"
    p.write_bytes(pickle.dumps((np.eye(3)[None], evil(target))))
    with pytest.raises(InputError) as err:
        load_pickle(p)
    assert not target.exists()
    msg = str(err.value)
    assert str(p) in msg
    assert ("open" in msg) or ("system" in msg)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_pickle(tmp_path / "nope.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputError, match="bad.pkl"):
        load_pickle(bad)


def test_save_pickle_round_trip_and_leaves_no_temp_files(tmp_path):
    obj = (np.eye(3)[None].astype(np.float32), np.zeros((1, 2), np.float32))
    p = tmp_path / "out" / "poses.pkl"
    save_pickle(p, obj)
    got = load_pickle(p)
    np.testing.assert_array_equal(got[0], obj[0])
    assert sorted(x.name for x in p.parent.iterdir()) == ["poses.pkl"]


class _Reduces:
    """Pickles as a call of ``fn(*args)`` with callables the loader allows by name."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct


@pytest.mark.parametrize("payload, found", [
    (_Reduces(_reconstruct, (np.ndarray, (10**12,), b"b")), "reconstruction"),  # 1 TB from nothing
    (_Reduces(np.ndarray, ((10**12,),)), "takes no arguments"),
    (_Reduces(codecs.encode, (b"x" * 100, "zlib")), "codec"),
])
def test_allowed_names_cannot_allocate_or_decode_beyond_the_file(tmp_path, payload, found):
    p = tmp_path / "big.pkl"
    p.write_bytes(pickle.dumps((np.zeros(2), payload), protocol=4))
    with pytest.raises(InputError, match=found):
        load_pickle(p)


def test_shared_reference_bomb_is_refused_without_expanding_it(tmp_path):
    row = [0.5] * 1000
    bomb = [[row] * 1000] * 1000  # 10^9 floats once converted by np.asarray; ~12 kB pickled
    p = tmp_path / "poses.pkl"
    p.write_bytes(pickle.dumps(bomb, protocol=4))
    assert p.stat().st_size < 20_000
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="share references"):
        load_pickle(p)
    assert time.perf_counter() - t0 < 2.0
    honest = [list(np.arange(100.0))] * 2  # two references to one list: still within the file size
    p.write_bytes(pickle.dumps(honest, protocol=4))
    assert load_pickle(p) == honest
