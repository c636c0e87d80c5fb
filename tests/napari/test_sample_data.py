"""Sample data: made once into $CRYOSPIRE_CACHE, then served from there; the manifest is valid
and its sample entries reach the generator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Layer

from cryospire_napari import _sample_data
from cryospire_napari._sample_data import (
    SampleSpec,
    cache_dir,
    consensus_sample,
    hinge_sample,
)

SMALL = SampleSpec(box=32, n=256, snr=1.0, epochs=1, map_fit_steps=20)


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CRYOSPIRE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CRYOSPIRE_CACHE")
    assert "cryospire" in str(cache_dir())


def test_samples_are_made_once_and_return_layers(monkeypatch, tmp_path):
    monkeypatch.setenv("CRYOSPIRE_CACHE", str(tmp_path))
    hinge = hinge_sample(SMALL)
    assert [kw["name"] for _, kw, _ in hinge] == ["ground truth vol_050", "backprojection"]
    for data, kw, kind in hinge:
        assert kind == "image" and data.shape == (32, 32, 32) and data.dtype == np.float32
        assert kw["scale"] == pytest.approx((12.0,) * 3)  # 384 Å field of view / 32 px
        assert kw["translate"] == pytest.approx((-16 * 12.0,) * 3)
    root = tmp_path / SMALL.folder_name
    assert (root / "data" / "metadata.json").is_file() and not (root / "run").exists()

    run = consensus_sample(SMALL)
    assert [kw["name"] for _, kw, _ in run] == ["consensus gaussians", "consensus map", "ground truth vol_050"]
    points = Layer.create(*run[0])
    assert points.data.shape[1] == 3 and len(points.data) >= 512
    # Gaussians lie inside the box (world Å about the centre).
    assert np.all(np.abs(points.data * points.scale + points.translate) <= 16 * 12.0)

    def refuse(*args, **kwargs):
        raise AssertionError(f"sample data remade: {args}")

    for step in ("simulate", "backproject", "consensus_run"):
        monkeypatch.setattr(_sample_data, step, refuse)
    assert len(consensus_sample(SMALL)) == 3 and len(hinge_sample(SMALL)) == 2


def test_manifest_validates_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    res = subprocess.run([str(npe2), "validate", "--imports", "cryospire-napari"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout


@pytest.mark.slow
def test_default_samples_open_from_napari_menu_entries(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """The real sample data (64 px, 2,000 images) through the manifest's sample_data entries."""
    monkeypatch.setenv("CRYOSPIRE_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.open_sample("cryospire-napari", "consensus")  # first use: made in a worker
    qtbot.waitUntil(lambda: "consensus gaussians" in viewer.layers, timeout=900_000)
    assert {layer.name for layer in viewer.layers} == {"consensus map", "consensus gaussians", "ground truth vol_050"}
    assert viewer.layers["consensus map"].data.shape == (64, 64, 64)
    viewer.open_sample("cryospire-napari", "hinge")  # made by then: at once
    assert viewer.layers["backprojection"].data.shape == (64, 64, 64)


def test_first_use_from_the_menu_does_not_block_the_viewer(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """Through the manifest's entry, a sample not made yet returns its ground-truth map at once
    (rendered from the phantom, equal to the simulation's) and the rest arrives from a worker."""
    import time

    from cryospire_core.io.mrc import read_map

    monkeypatch.setenv("CRYOSPIRE_CACHE", str(tmp_path))
    monkeypatch.setattr(_sample_data, "DEFAULT_SPEC", SMALL)
    viewer = make_napari_viewer()
    t0 = time.perf_counter()
    viewer.open_sample("cryospire-napari", "consensus")
    took = time.perf_counter() - t0
    print(f"\nsample menu returned after {took:.2f} s")
    assert [layer.name for layer in viewer.layers] == ["ground truth vol_050"]
    qtbot.waitUntil(lambda: "consensus gaussians" in viewer.layers, timeout=120_000)
    assert {"consensus map", "consensus gaussians", "ground truth vol_050"} == {layer.name for layer in viewer.layers}
    written = read_map(tmp_path / SMALL.folder_name / "data" / "gt" / "vol_050.mrc").data
    np.testing.assert_allclose(viewer.layers["ground truth vol_050"].data, written, rtol=1e-4, atol=1e-4 * written.max())
    assert _sample_data.is_made(SMALL, with_run=True)
    viewer.layers.clear()
    viewer.open_sample("cryospire-napari", "consensus")  # made: served at once, all layers
    assert len(viewer.layers) == 3
