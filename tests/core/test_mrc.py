"""mrc.py: maps and stacks against the mrcfile package; clear errors for broken files."""

import mrcfile
import numpy as np
import pytest

from cryospire_core.errors import InputError
from cryospire_core.io.mrc import (
    MapData,
    StackWriter,
    read_header,
    read_map,
    write_map,
    write_stack,
)


def _vol(d=12, seed=0):
    return np.random.default_rng(seed).standard_normal((d, d, d)).astype(np.float32)


def test_write_map_read_map_round_trip(tmp_path):
    vol = _vol()
    p = tmp_path / "v.mrc"
    write_map(p, vol, 2.5, origin=(1.0, -2.0, 3.5))
    with mrcfile.open(p) as m:  # independent reader
        np.testing.assert_array_equal(m.data, vol)
        np.testing.assert_allclose(m.voxel_size.tolist(), (2.5, 2.5, 2.5))
        np.testing.assert_allclose(m.header.origin.tolist(), (1.0, -2.0, 3.5))
    got = read_map(p)
    assert isinstance(got, MapData)
    assert got.data.dtype == np.float32
    np.testing.assert_array_equal(got.data, vol)
    assert got.apix == pytest.approx(2.5)
    np.testing.assert_allclose(got.origin, (1.0, -2.0, 3.5))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v.mrc"]


def test_read_map_converts_modes_and_axis_order(tmp_path):
    vol = (_vol(6) * 10).astype(np.int16)
    p = tmp_path / "i16.mrc"
    with mrcfile.new(p) as m:
        m.set_data(vol)
        m.voxel_size = 1.2
    got = read_map(p)
    assert got.data.dtype == np.float32
    np.testing.assert_array_equal(got.data, vol.astype(np.float32))
    # A map stored with columns = Z, rows = Y, sections = X (mapc, mapr, maps = 3, 2, 1).
    vol = np.random.default_rng(1).standard_normal((4, 5, 6)).astype(np.float32)  # (z, y, x)
    p = tmp_path / "zyx.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # file (sections=x, rows=y, cols=z)
        m.header.mapc, m.header.mapr, m.header.maps = 3, 2, 1
        m.voxel_size = 1.0
    np.testing.assert_array_equal(read_map(p, require_cubic=False).data, vol)


def test_read_header_is_cheap_and_complete(tmp_path):
    p = tmp_path / "s.mrcs"
    write_stack(p, np.zeros((7, 10, 10), np.float32), 1.7)
    h = read_header(p)
    assert h.shape == (7, 10, 10)
    assert h.apix == pytest.approx(1.7)
    assert h.mode == 2
    # A 10^6-image stack announced by its header: only 1 kB is read (the data are sparse zeros).
    big = tmp_path / "big.mrcs"
    with mrcfile.new(big) as m:
        m.set_data(np.zeros((1, 64, 64), np.float32))
        m.set_image_stack()
        m.header.nz = 1_000_000
    with open(big, "r+b") as f:
        f.truncate(1024 + 1_000_000 * 64 * 64 * 4)
    assert read_header(big).shape == (1_000_000, 64, 64)


def test_stack_writer_streams_batches(tmp_path):
    rng = np.random.default_rng(2)
    imgs = rng.standard_normal((50, 16, 16)).astype(np.float32)
    p = tmp_path / "p.mrcs"
    with StackWriter(p, 16, 1.5) as w:
        assert not p.exists()  # appears only when complete
        for start in range(0, 50, 13):
            w.append(imgs[start : start + 13].astype(np.float64))
        w.append(imgs[:0])
    with mrcfile.open(p) as m:
        assert m.is_image_stack()
        np.testing.assert_array_equal(m.data, imgs)
        np.testing.assert_allclose(m.voxel_size.tolist(), (1.5, 1.5, 1.5))
        assert m.header.dmin == pytest.approx(imgs.min())
        assert m.header.dmax == pytest.approx(imgs.max())
        assert m.header.dmean == pytest.approx(imgs.mean(), abs=1e-6)
        assert m.header.rms == pytest.approx(imgs.std(), rel=1e-5)
        assert m.validate()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p.mrcs"]


def test_stack_writer_leaves_nothing_on_error(tmp_path):
    p = tmp_path / "p.mrcs"
    with pytest.raises(KeyError):
        with StackWriter(p, 8, 1.0) as w:
            w.append(np.ones((3, 8, 8)))
            raise KeyError("interrupted")
    with pytest.raises(ValueError):
        with StackWriter(p, 8, 1.0) as w:
            w.append(np.ones((3, 8, 9)))
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_named(tmp_path):
    p = tmp_path / "cut.mrc"
    write_map(p, _vol(), 1.0)
    with open(p, "r+b") as f:
        f.truncate(1024 + 100)
    for reader in (read_map, read_header):
        with pytest.raises(InputError) as err:
            reader(p)
        assert str(p) in str(err.value) and "MRC data" in str(err.value) and "truncated" in str(err.value)


def test_map_errors(tmp_path):
    p = tmp_path / "c.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((4, 4, 4), np.complex64))
    with pytest.raises(InputError, match="MRC mode"):
        read_map(p)

    p = tmp_path / "box.mrc"
    write_map(p, np.zeros((8, 8, 6), np.float32), 1.0)
    with pytest.raises(InputError, match="cubic"):
        read_map(p)
    assert read_map(p, require_cubic=False).data.shape == (8, 8, 6)

    vol = _vol(6)
    vol[1, 2, 3] = np.nan
    p = tmp_path / "nan.mrc"
    with pytest.raises(InputError, match="nan.mrc: map values: expected finite numbers, found 1 NaN/Inf values"):
        write_map(p, vol, 1.0)  # cryospire never writes one (ResultError)
    assert not p.exists()
    with pytest.warns(RuntimeWarning), mrcfile.new(p) as m:  # another program's; mrcfile warns computing stats
        m.set_data(vol)
        m.voxel_size = 1.0
    with pytest.raises(InputError, match="1 NaN/Inf"):
        read_map(p)

    p = tmp_path / "nocell.mrc"
    with mrcfile.new(p) as m:
        m.set_data(_vol(6))
    with pytest.raises(InputError, match="voxel size"):
        read_map(p)
    assert read_map(p, apix=3.0).apix == 3.0

    p = tmp_path / "img.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((6, 6), np.float32))
    with pytest.raises(InputError, match="3D volume"):
        read_map(p)

    with pytest.raises(InputError, match="no such file"):
        read_map(tmp_path / "absent.mrc")
    p = tmp_path / "text.mrc"
    p.write_text("not an mrc")
    with pytest.raises(InputError, match="text.mrc"):
        read_map(p)


@pytest.mark.parametrize("axes", [(2, 1, 3), (3, 2, 1), (2, 3, 1)])
def test_axis_order_is_honoured_for_maps_and_stacks(tmp_path, axes):
    """A file whose header declares columns/rows/sections along other axes reads as the same
    (z, y, x) array, whether it holds a map or a stack (one rule: mrc.to_zyx)."""
    from cryospire_core.io.particles import ImageSource

    vol = np.random.default_rng(1).standard_normal((6, 8, 8)).astype(np.float32)  # (z, y, x): 6 images
    stored = vol.transpose([(3, 2, 1).index(a) for a in axes[::-1]])
    p = tmp_path / "t.mrcs"
    with mrcfile.new(p) as m:
        m.set_data(np.ascontiguousarray(stored))
        m.header.mapc, m.header.mapr, m.header.maps = axes
        m.voxel_size = 1.5
    h = read_header(p)
    assert h.shape == vol.shape and h.axis_order == axes and h.voxel_size == (1.5, 1.5, 1.5)
    np.testing.assert_array_equal(read_map(p, require_cubic=False).data, vol)
    np.testing.assert_array_equal(ImageSource([p], np.zeros(6, int), np.arange(6), 8).read(np.arange(6)), vol)
