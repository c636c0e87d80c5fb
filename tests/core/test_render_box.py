"""Maps of a trained run at any map box (`render`, `traverse`, `analyze` with ``--box``, the
explorer's map lattice): the Gaussians are in Å, so a map at B = 2D samples per side, Fourier-
cropped back to D, is the map at D; headers say voxel size apix * D / B and origin 0; without
``--box`` the maps are the model's own, bit for bit."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from cryospire_core.analysis import explorer as ex
from cryospire_core.cli.main import main
from cryospire_core.imaging.fourier import downsample
from cryospire_core.imaging.fsc import fsc
from cryospire_core.imaging.lattice import MRC_ORIGIN
from cryospire_core.io.mrc import read_map
from cryospire_core.pipeline.runfolder import RunFolder


@pytest.fixture(scope="module")
def model(tiny_run):
    return RunFolder(tiny_run).model()


def _band_limited_match(fine: np.ndarray, coarse: np.ndarray) -> tuple[float, float]:
    """(correlation, lowest FSC up to 3/4 Nyquist) of ``fine`` Fourier-cropped to the box of
    ``coarse`` against ``coarse``."""
    back = downsample(torch.as_tensor(np.array(fine)), coarse.shape[0], ndim=3).numpy()
    corr = float(np.corrcoef(back.ravel(), coarse.ravel())[0, 1])
    curve = fsc(back, coarse)[1]
    return corr, float(np.min(curve[1: 3 * len(curve) // 4]))


def test_render_at_twice_the_box_is_the_same_map_finer(tiny_run, model, tmp_path, capsys):
    d = model.lattice.box
    np.savetxt(tmp_path / "idx.txt", [0, 5], fmt="%d")
    idx = str(tmp_path / "idx.txt")
    assert main(["render", str(tiny_run), "--particles", idx, "--out", str(tmp_path / "d")]) == 0
    assert main(["render", str(tiny_run), "--particles", idx, "--box", str(2 * d), "--out", str(tmp_path / "2d")]) == 0
    assert f"{2 * d}^3" in capsys.readouterr().out
    z = model.latents.numpy()[[0, 5]]
    for k in range(2):
        at_d, at_2d = read_map(tmp_path / "d" / f"vol_{k:03d}.mrc"), read_map(tmp_path / "2d" / f"vol_{k:03d}.mrc")
        with torch.no_grad():  # without --box: the model's own map, bit for bit
            np.testing.assert_array_equal(at_d.data, model.volume(torch.as_tensor(z[k])).numpy())
        assert at_2d.data.shape == (2 * d,) * 3
        assert at_2d.apix == pytest.approx(model.lattice.apix * d / (2 * d), rel=1e-6)
        np.testing.assert_array_equal(at_2d.origin, MRC_ORIGIN)
        corr, worst = _band_limited_match(at_2d.data, at_d.data)
        assert corr > 0.99 and worst > 0.99, (corr, worst)
    # a box the lattice cannot have is refused while the command line is read
    assert main(["render", str(tiny_run), "--particles", idx, "--box", "33", "--out", str(tmp_path / "odd")]) == 1
    assert "--box: expected an even whole number" in capsys.readouterr().err


def test_a_coarser_map_box_is_the_finer_map_band_limited(model):
    # The other direction: at D/2 the map is the model's map at D, Fourier-cropped (up to the
    # Gaussians' own aliasing at the coarse sampling, well below the band edge).
    d = model.lattice.box
    z = torch.as_tensor(model.latents.numpy()[3])
    with torch.no_grad():
        fine = model.volume(z).numpy()
        coarse = model.volume(z, lattice=model.lattice.cropped(d // 2)).numpy()
    assert coarse.shape == (d // 2,) * 3
    corr, _ = _band_limited_match(fine, coarse)
    assert corr > 0.99, corr


def test_traverse_and_analyze_write_at_the_map_box(tiny_run, model, tmp_path):
    b = 2 * model.lattice.box
    apix = model.lattice.apix / 2
    out = tmp_path / "pc1"
    assert main(["traverse", str(tiny_run), "--pc", "1", "-n", "2", "--box", str(b), "-o", str(out)]) == 0
    e = ex.Explorer.from_run(tiny_run)
    for k, z in enumerate(np.load(out / "latents.npy")):
        m = read_map(out / f"vol_{k:03d}.mrc")
        assert m.apix == pytest.approx(apix, rel=1e-6)
        np.testing.assert_array_equal(m.data, e.map_at(z, b))  # the explorer's map at that box
    with pytest.MonkeyPatch.context() as mp:  # as without umap-learn: its first fit compiles for a minute
        mp.setitem(sys.modules, "umap", None)
        assert main(["analyze", str(tiny_run), "--ksample", "2", "--pc-steps", "2", "--box", str(b),
                     "--out", str(tmp_path / "analysis")]) == 0
    maps = sorted((tmp_path / "analysis").rglob("*.mrc"))
    assert any(p.parent.name == "parts" for p in maps) and len(maps) >= 5  # states, PC1, part labels, masks
    for p in maps:
        m = read_map(p)
        assert m.data.shape == (b,) * 3, p
        assert m.apix == pytest.approx(apix, rel=1e-6), p
