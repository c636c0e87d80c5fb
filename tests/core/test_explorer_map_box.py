"""The explorer's map box: frames (map and part labels) on any lattice of the model's field of
view, the boxes offered, and the session's map-box state and its event."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryospire_core.analysis import explorer as ex
from cryospire_core.analysis.session import ActionRefused, ExplorerSession
from cryospire_core.imaging.fourier import downsample

from .test_explorer import _two_part_model
from .test_session import _explorer, _record


def test_frames_at_another_box_keep_the_field_of_view():
    model = _two_part_model(30.0, 6.0)  # 32 px at 3 Å
    e = ex.Explorer(model, np.zeros((10, 4), np.float32), model.part_index.numpy())
    z = np.zeros(4, np.float32)
    own, fine = e.frame(z, labels=True), e.frame(z, labels=True, box=64)
    assert own.lattice == e.lattice == model.lattice
    assert fine.lattice.box == 64 and fine.lattice.apix == pytest.approx(1.5)
    assert fine.volume.shape == fine.labels.shape == (64, 64, 64)
    # the same density, sampled twice as finely: cropped back it is the map at 32
    back = downsample(torch.as_tensor(fine.volume), 32, ndim=3).numpy()
    assert np.corrcoef(back.ravel(), own.volume.ravel())[0, 1] > 0.999
    # the part labels sit where they did: voxel i at 32 is voxel 2i at 64 (same position in Å)
    agree = (fine.labels[::2, ::2, ::2] == own.labels).mean()
    assert agree > 0.95, agree
    np.testing.assert_array_equal(fine.readout.angle_deg, own.readout.angle_deg)  # one decode, any box
    np.testing.assert_array_equal(e.map_at(z, 64), e.frame(z, readout=False, box=64).volume)
    assert e.map_boxes() == [32, 64, 128, 256]
    for bad in (33, 4, 2048, 64.0):
        with pytest.raises(ValueError, match="map box"):
            e.map_lattice(bad)


def test_the_session_keeps_a_map_box_and_announces_it():
    session = ExplorerSession()
    seen = _record(session)
    assert session.map_lattice is None  # no run yet
    session.set_map_box(128)
    assert seen == [("map_box_changed", (128,))]
    e = _explorer()
    session.load(e, e.embedding(ex.EmbeddingMethod.PCA))
    assert session.map_box == 128 and session.map_lattice == e.lattice.cropped(128)  # kept for the run loaded
    seen.clear()
    session.set_map_box(128)  # unchanged: nothing to announce
    session.set_map_box(None)
    assert seen == [("map_box_changed", (None,))] and session.map_lattice == e.lattice
    for bad in (16, 31, 65, 2048):
        with pytest.raises(ActionRefused, match="map box"):
            session.set_map_box(bad)
    assert session.map_box is None and len(seen) == 1
