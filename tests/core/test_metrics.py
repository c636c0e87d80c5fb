"""FSC, AUC, resolution and the CryoBench per-conformation protocol (metrics.py, cli/evaluate.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryospire_core.analysis.metrics import (
    auc,
    ceiling,
    freq_to_angstrom,
    freq_to_pixels,
    fsc,
    homogeneous_floor,
    load_ground_truth,
    per_conformation,
    population_mean,
    representative_images,
    resolution,
)
from cryospire_core.cli.main import main
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.mrc import write_map


def _blobby(D: int, seed: int) -> np.ndarray:
    """A positive random map with power in every shell."""
    rng = np.random.default_rng(seed)
    return (rng.random((D, D, D)) + 1.0).astype(np.float32)


def _fsc_by_definition(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """Independent slow FSC: loop over voxels, shell i holds radii in [i - 1, i)."""
    D = v1.shape[0]
    F1 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v1)))
    F2 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v2)))
    out = [1.0]
    for i in range(1, D // 2):
        num = p1 = p2 = 0.0
        for z in range(D):
            for y in range(D):
                for x in range(D):
                    r = np.sqrt((z - D // 2) ** 2 + (y - D // 2) ** 2 + (x - D // 2) ** 2)
                    if i - 1 <= r < i:
                        num += (F1[z, y, x] * np.conj(F2[z, y, x])).real
                        p1 += abs(F1[z, y, x]) ** 2
                        p2 += abs(F2[z, y, x]) ** 2
        out.append(num / np.sqrt(p1 * p2))
    return np.array(out)


def test_fsc_of_a_map_with_itself_is_one_and_auc_is_the_maximum():
    for D in (16, 32):
        vol = _blobby(D, 0)
        freqs, curve = fsc(vol, vol)
        assert len(freqs) == len(curve) == D // 2
        np.testing.assert_allclose(freqs, np.arange(D // 2) / D)
        np.testing.assert_allclose(curve, 1.0, atol=1e-12)
        assert auc(freqs, curve) == pytest.approx((D / 2 - 1) / D, abs=1e-12)
    assert auc(*fsc(_blobby(64, 1), _blobby(64, 1))) == pytest.approx(0.484375)


@pytest.mark.parametrize("D", [8, 9])
def test_fsc_matches_the_shell_definition_on_a_tiny_example(D):
    # fsc sums over the half transform with mirror weights; the definition over the full one.
    # An odd box has no Nyquist plane, so both parities are checked.
    rng = np.random.default_rng(3)
    v1, v2 = rng.standard_normal((2, D, D, D))
    np.testing.assert_allclose(fsc(v1, v2)[1], _fsc_by_definition(v1, v2), atol=1e-10)


def test_fsc_shells_by_hand():
    # Constant + a wave of frequency 2 along x (radius 2: shell [2, 3), reported at 3/D) in both
    # maps; map 2 also has a wave of frequency 1 along y (shell [1, 2), reported at 2/D), which
    # map 1 lacks: that shell scores 0.
    D = 8
    z, y, x = np.meshgrid(*(np.arange(D) - D // 2,) * 3, indexing="ij")
    v1 = 1.0 + np.cos(2 * np.pi * 2 * x / D)
    v2 = v1 + 0.5 * np.cos(2 * np.pi * 1 * y / D)
    freqs, curve = fsc(v1, v2)
    np.testing.assert_allclose(freqs, [0, 1 / 8, 2 / 8, 3 / 8])
    np.testing.assert_allclose(curve, [1.0, 1.0, 0.0, 1.0], atol=1e-12)


def test_fsc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 32, 32, 32))
    curve = fsc(a, b)[1]
    assert np.all(np.abs(curve[4:]) < 0.2)  # shells with >= 100 independent Fourier samples
    assert np.abs(curve[4:]).mean() < 0.05


def test_fsc_is_invariant_to_scaling_one_map_and_uses_the_mask():
    rng = np.random.default_rng(5)
    a = _blobby(16, 6)
    b = a + 0.5 * rng.standard_normal(a.shape)
    np.testing.assert_allclose(fsc(a, 3.7 * b)[1], fsc(a, b)[1], atol=1e-12)
    mask = np.zeros_like(a)
    mask[4:12, 4:12, 4:12] = 1.0
    np.testing.assert_allclose(fsc(a, b, mask)[1], fsc(a * mask, b * mask)[1], atol=1e-12)
    assert not np.allclose(fsc(a, b, mask)[1], fsc(a, b)[1])


def test_auc_is_the_trapezoid_rule():
    freqs = np.array([0.0, 0.25, 0.5])
    assert auc(freqs, np.array([1.0, 0.5, 0.0])) == pytest.approx(0.25 * 0.75 + 0.25 * 0.25)


def test_resolution_picks_the_first_crossing():
    freqs = np.arange(8) / 16
    curve = np.array([1.0, 0.95, 0.7, 0.45, 0.6, 0.3, 0.1, 0.0])
    assert resolution(freqs, curve, 0.5) == freqs[3]  # not the later 0.3
    assert resolution(freqs, curve, 0.143) == freqs[6]
    assert resolution(freqs, np.ones(8), 0.5) == freqs[-1]  # never crosses: Nyquist side
    assert freq_to_pixels(0.25) == 4.0
    assert freq_to_angstrom(0.25, 3.0) == 12.0


def test_representative_image_is_nearest_to_the_state_mean():
    latents = np.array([[0.0, 0.0], [2.0, 0.0], [1.2, 0.9], [5.0, 5.0], [9.0, 9.0], [10.0, 10.0], [9.6, 9.4]])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    # state 0 mean (2, 1.475): image 2 (1.2, 0.9) is nearest; state 1 mean (9.53, 9.47): image 6
    assert representative_images(latents, labels) == {0: 2, 1: 6}


def test_per_conformation_renders_at_the_representative_latent():
    gt = np.stack([_blobby(16, 10), _blobby(16, 11)])
    latents = np.array([[0.0], [1.0], [3.0], [10.0], [12.0], [11.2]])
    labels = np.array([0, 0, 0, 1, 1, 1])  # means 1.33 and 11.07: images 1 and 5
    rendered = []

    def render(z: np.ndarray) -> np.ndarray:
        rendered.append(float(z[0]))
        # The right state's map only at exactly the representative latents.
        return {1.0: gt[0], 11.2: gt[1]}.get(float(z[0]), np.zeros_like(gt[0]))

    table = per_conformation(latents, labels, gt, render, apix=2.0)
    assert rendered == [1.0, 11.2]
    assert [s.image for s in table.states] == [1, 5]
    np.testing.assert_allclose(table.aucs(), 7 / 16)
    assert table.summary()["mean_auc"] == pytest.approx(7 / 16)
    text = table.format()
    assert "AUC mean 0.4375" in text and "res@0.5 Å" in text


def test_floor_and_ceiling(tmp_path):
    gt = np.stack([_blobby(16, 20), _blobby(16, 21)])
    top = ceiling(gt)
    np.testing.assert_allclose(top.aucs(), 7 / 16)
    floor = homogeneous_floor(gt[0], gt)
    assert floor.states[0].auc == pytest.approx(7 / 16)
    assert floor.states[1].auc < 0.3
    floor.save_json(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["summary"]["n_states"] == 2
    assert data["states"][1]["auc"] == pytest.approx(floor.states[1].auc)
    assert len(data["states"][0]["curve"]) == len(data["freqs"]) == 8


def test_population_mean_weights_states_by_their_images():
    gt = np.stack([_blobby(16, 22), _blobby(16, 23), _blobby(16, 24)])
    labels = np.array([0, 0, 0, 1] * 5)  # state 2 has no images
    np.testing.assert_allclose(population_mean(gt, labels), 0.75 * gt[0] + 0.25 * gt[1], rtol=1e-6)


def _write_gt(folder, maps, apix=3.0, n=30):
    folder.mkdir(parents=True)
    for k, m in enumerate(maps):
        write_map(folder / f"vol_{k:03d}.mrc", m, apix)
    write_map(folder / "mask.mrc", np.ones_like(maps[0]), apix)
    np.save(folder / "labels.npy", np.arange(n) % len(maps))


def test_evaluate_cli_scores_maps_against_ground_truth(tmp_path, capsys):
    maps = [_blobby(16, 30 + k) for k in range(3)]
    _write_gt(tmp_path / "gt", maps)
    gt = load_ground_truth(tmp_path / "gt")
    assert len(gt) == 3 and gt.lattice == Lattice(16, 3.0) and len(gt.labels) == 30
    per_state = tmp_path / "maps"
    per_state.mkdir()
    for k, m in enumerate(maps):  # names that sort wrongly as plain strings
        write_map(per_state / f"state_{[2, 10, 11][k]}.mrc", m, 3.0)

    gt_args = ["evaluate", "--gt", str(tmp_path / "gt")]
    assert main(gt_args + ["--maps", str(per_state), "--out", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    np.testing.assert_allclose([s["auc"] for s in scores["scores"]["states"]], 7 / 16)
    assert scores["ceiling"]["summary"]["mean_auc"] == pytest.approx(7 / 16)

    assert main(["evaluate", "--gt", str(tmp_path / "gt"), "--map", str(per_state / "state_2.mrc")]) == 0
    out = capsys.readouterr().out
    assert "homogeneous floor" in out and "ceiling" in out
    ideal = homogeneous_floor(population_mean(gt, gt.labels), gt, gt.mask).summary()
    assert f"ideal homogeneous (noise-free population-mean map vs every state): AUC mean {ideal['mean_auc']:.4f}" in out
    assert scores["ideal_homogeneous"]["summary"]["mean_auc"] == pytest.approx(ideal["mean_auc"])

    # Wrong number of maps, wrong box: one clean error line each.
    (per_state / "state_11.mrc").unlink()
    assert main(["evaluate", "--gt", str(tmp_path / "gt"), "--maps", str(per_state)]) == 1
    assert "expected 3 maps" in capsys.readouterr().err
    write_map(tmp_path / "small.mrc", np.ones((8, 8, 8), np.float32), 3.0)
    assert main(["evaluate", "--gt", str(tmp_path / "gt"), "--map", str(tmp_path / "small.mrc")]) == 1
    err = capsys.readouterr().err
    assert "small.mrc: map dimensions: expected 16^3" in err
