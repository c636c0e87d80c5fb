"""The hand of the view: after set_chimerax_view a map looks as in ChimeraX (x right, y up,
z toward the viewer). Three blobs on +x, +y (twice as far) and +z (three times as far), each in
its own colour, are found in real screenshots of the canvas."""

from __future__ import annotations

import numpy as np
import pytest

from cryospire_napari._layers import (
    CHIMERAX_ORIENTATION,
    map_layer,
    set_chimerax_view,
    viewer_camera,
)

D, APIX = 48, 1.0
OFFSET = 6  # voxels along +x; +y at 2x, +z at 3x


def blob(at_xyz: tuple[int, int, int]) -> np.ndarray:
    zz, yy, xx = np.mgrid[:D, :D, :D] - D // 2
    r2 = (xx - at_xyz[0]) ** 2 + (yy - at_xyz[1]) ** 2 + (zz - at_xyz[2]) ** 2
    return np.exp(-r2 / (2 * 1.5**2)).astype(np.float32)


@pytest.fixture
def blob_viewer(make_napari_viewer):
    """x blob red, y blob green, z blob blue, additive MIP so each colour channel shows one blob."""
    viewer = make_napari_viewer(show=True)  # an unshown canvas draws nothing under xvfb
    for name, at, cmap in (("x", (OFFSET, 0, 0), "red"), ("y", (0, 2 * OFFSET, 0), "green"),
                           ("z", (0, 0, 3 * OFFSET), "blue")):
        data, kw, _ = map_layer(blob(at), APIX, name, rendering="mip", colormap=cmap)
        viewer.add_image(data, **{**kw, "blending": "additive", "contrast_limits": (0.0, 1.0)})
    return viewer


def blobs_on_screen(viewer) -> dict[str, tuple[float, float, int]]:
    """Per blob: (right, up) offset in pixels of its centroid from the canvas centre, and its
    area in pixels."""
    img = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)
    h, w = img.shape[:2]
    out = {}
    for name, c in (("x", 0), ("y", 1), ("z", 2)):
        mask = img[..., c] > 100
        assert mask.sum() > 4, f"blob {name} not visible"
        rows, cols = np.nonzero(mask)
        out[name] = (cols.mean() - (w - 1) / 2, (h - 1) / 2 - rows.mean(), int(mask.sum()))
    return out


def test_3d_view_matches_chimerax(blob_viewer):
    viewer = blob_viewer
    set_chimerax_view(viewer)
    assert viewer.dims.ndisplay == 3
    assert tuple(map(str, viewer_camera(viewer).orientation)) == CHIMERAX_ORIENTATION
    np.testing.assert_allclose(viewer_camera(viewer).view_direction, (-1, 0, 0), atol=1e-9)  # looking down -z

    flat = blobs_on_screen(viewer)
    (xr, xu, x_area), (yr, yu, _), (zr, zu, z_area) = flat["x"], flat["y"], flat["z"]
    px = xr / OFFSET  # screen pixels per Å
    assert px > 2
    assert abs(xu) < 0.5 * px  # x blob: right of centre, on the horizontal axis
    assert abs(yr) < 0.5 * px and yu == pytest.approx(2 * OFFSET * px, rel=0.1)  # y blob: above, twice as far
    assert abs(zr) < 0.5 * px and abs(zu) < 0.5 * px  # z blob: on the line of sight

    # In perspective, things nearer the camera look larger: the z blob must be in front
    # (toward the viewer) for a right-handed (x, y, z); the x blob, in the focal plane, keeps its size.
    viewer_camera(viewer).perspective = 60
    persp = blobs_on_screen(viewer)
    assert persp["z"][2] > 1.3 * z_area
    assert persp["x"][2] == pytest.approx(x_area, rel=0.2)


def test_napari_default_view_is_the_mirror_image(blob_viewer):
    """Why the helper exists: napari's default camera draws +y downward."""
    viewer = blob_viewer
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    default = blobs_on_screen(viewer)
    assert default["x"][0] > 0 and default["y"][1] < 0


def test_2d_slice_matches_chimerax(blob_viewer):
    viewer = blob_viewer
    set_chimerax_view(viewer, ndisplay=2)
    viewer.dims.set_point(0, 0.0)  # the z = 0 plane, through the x and y blobs
    img = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)
    h, w = img.shape[:2]
    for c, (right, up) in ((0, (1, 0)), (1, (0, 1))):
        rows, cols = np.nonzero(img[..., c] > 100)
        assert len(rows) > 4
        dx, dy = cols.mean() - (w - 1) / 2, (h - 1) / 2 - rows.mean()
        if right:
            assert dx > 10 and abs(dy) < 0.3 * dx
        if up:
            assert dy > 10 and abs(dx) < 0.3 * dy
    assert not (img[..., 2] > 100).any()  # z blob (at z = +18 Å) is not in the z = 0 slice
