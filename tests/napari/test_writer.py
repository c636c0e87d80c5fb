"""Writers: Image and Labels layers saved through napari as .mrc keep data and voxel size."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from napari import save_layers
from napari.layers import Image, Labels, Layer
from npe2 import PluginManager

from cryospire_core.io.mrc import read_map, write_map
from cryospire_napari._reader import get_map_reader
from cryospire_napari._writer import NameInUseError, NotAMapError, write_image

PLUGIN = "cryospire-napari"


@pytest.fixture(autouse=True)
def plugins_discovered():
    """napari discovers plugins when it starts a viewer; these tests save without one."""
    PluginManager.instance().discover()


def test_image_round_trip_through_reader_and_writer(tmp_path):
    vol = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    write_map(tmp_path / "in.mrc", vol, 1.7, origin=(3.0, -2.0, 5.5))
    ((data, kw, kind),) = get_map_reader(str(tmp_path / "in.mrc"))(str(tmp_path / "in.mrc"))
    layer = Layer.create(data, kw, kind)
    (written,) = save_layers(str(tmp_path / "out.mrc"), [layer], plugin=PLUGIN)
    m = read_map(written)
    np.testing.assert_array_equal(m.data, vol)
    assert m.apix == pytest.approx(1.7)
    np.testing.assert_allclose(m.origin, (3.0, -2.0, 5.5))  # the origin the map came with


def test_new_image_takes_voxel_size_from_scale(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.float64).reshape(4, 5, 6)
    layer = Image(vol, scale=(2.25, 2.25, 2.25))
    (written,) = save_layers(str(tmp_path / "noext"), [layer], plugin=PLUGIN)
    assert written.endswith("noext.mrc")
    m = read_map(written, require_cubic=False)
    np.testing.assert_array_equal(m.data, vol.astype(np.float32))
    assert m.apix == pytest.approx(2.25)


def test_labels_stored_as_float32_values(tmp_path):
    labels = np.zeros((8, 8, 8), dtype=np.int32)
    labels[1:4, 2:5, 3:6] = 1
    labels[5:7, 5:7, 0:2] = 300
    layer = Labels(labels, scale=(3.0, 3.0, 3.0))
    (written,) = save_layers(str(tmp_path / "parts.mrc"), [layer], plugin=PLUGIN)
    with mrcfile.open(written) as m:
        assert m.header.mode == 2  # float32
    back = read_map(written)
    np.testing.assert_array_equal(back.data, labels.astype(np.float32))
    assert back.apix == pytest.approx(3.0)


def test_writer_refuses_what_is_not_a_map(tmp_path):
    with pytest.raises(NotAMapError, match="voxel size"):
        save_layers(str(tmp_path / "a.mrc"), [Image(np.zeros((4, 4, 4)), scale=(1, 2, 2))], plugin=PLUGIN)
    with pytest.raises(NotAMapError, match="3D"):
        save_layers(str(tmp_path / "b.mrc"), [Image(np.zeros((4, 4)))], plugin=PLUGIN)
    stack = Image(np.zeros((5, 4, 4)), metadata={"kind": "particle stack"})
    with pytest.raises(NotAMapError, match="particle stack"):
        save_layers(str(tmp_path / "c.mrc"), [stack], plugin=PLUGIN)
    assert not list(tmp_path.iterdir())


def test_writer_never_replaces_the_name_it_adds_mrc_to(tmp_path):
    """napari's save dialog, with the MRC writer chosen, passes the typed name as it is: the user
    was asked about "noext", not "noext.mrc". A link napari asked about is replaced itself, its
    target never written."""
    (tmp_path / "noext.mrc").write_text("the user's file")
    with pytest.raises(NameInUseError, match="noext.mrc: map file: expected a file name not in use"):
        write_image(str(tmp_path / "noext"), np.ones((4, 4, 4)), {"scale": (1.0, 1.0, 1.0)})
    assert (tmp_path / "noext.mrc").read_text() == "the user's file"
    (tmp_path / "target.mrc").write_text("kept")
    (tmp_path / "link.mrc").symlink_to(tmp_path / "target.mrc")
    save_layers(str(tmp_path / "link.mrc"), [Image(np.ones((4, 4, 4)))], plugin=PLUGIN)
    assert (tmp_path / "target.mrc").read_text() == "kept" and not (tmp_path / "link.mrc").is_symlink()
    assert read_map(tmp_path / "link.mrc").data.shape == (4, 4, 4)
