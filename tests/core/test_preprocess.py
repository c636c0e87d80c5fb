"""Real-image handling: the soft window, normalisation detection, the noise spectrum and its
weighting of the data term, the simulator's coloured noise and clutter, and the proof that the
weighting helps on coloured noise with clutter and is harmless on white noise."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from cryospire_core.errors import InputError
from cryospire_core.imaging.fsc import auc, fsc
from cryospire_core.imaging.misfit import ImageMisfit
from cryospire_core.imaging.noise import (
    background_power,
    background_stats,
    classify_backgrounds,
    finish_spectrum,
    n_shells,
    whitening_weights,
)
from cryospire_core.imaging.window import (
    background_mask,
    background_taper,
    radii,
    soft_window,
)
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import read_map
from cryospire_core.models.consensus import (
    ConsensusConfig,
    ConsensusFiles,
    fit_consensus,
)
from cryospire_core.pipeline.config import TrainConfig, migrate_config
from cryospire_core.pipeline.preprocess import (
    NoiseSpectrum,
    PreprocessConfig,
    inspect_normalization,
    measure_noise_spectrum,
    prepared,
    stage_misfit,
)
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import train
from cryospire_core.services.training import TrainOptions, new_config, resumed_config
from cryospire_core.sim import simulate as sim
from tests.conftest import tiny_config

BOX = 32
CPU = torch.device("cpu")


# -- the window ------------------------------------------------------------------------------------


def test_window_is_flat_inside_its_radius_and_zero_in_the_corners():
    for box, radius in ((32, 0.85), (48, 0.5)):
        w, r = soft_window(box, radius), radii(box)
        assert w.shape == (box, box) and w.dtype == np.float32
        assert np.all(w[r <= radius] == 1.0) and np.all(w[r >= 1.0] == 0.0)
        ramp = (r > radius) & (r < 1.0)
        assert np.all((w[ramp] > 0) & (w[ramp] < 1))
        assert np.all(np.diff(w[box // 2, box // 2:]) <= 0)  # falls monotonically towards the edge
        np.testing.assert_allclose(w, w[::-1, ::-1][np.r_[-1, : box - 1]][:, np.r_[-1, : box - 1]], atol=1e-7)
    assert soft_window(32, 1.0).sum() == (radii(32) <= 1).sum()  # radius 1: the hard inscribed disc
    with pytest.raises(ValueError, match="window radius"):
        soft_window(32, 0.0)
    mask, taper = background_mask(32, 0.85), background_taper(32, 0.85)
    assert not mask[16, 16] and mask[0, 0] and taper[16, 16] == 0 and taper[0, 0] == 1


def test_misfit_is_the_plain_mean_without_window_and_weights_and_keeps_its_scale():
    g = torch.Generator().manual_seed(0)
    p, o = torch.randn(6, BOX, BOX, generator=g), torch.randn(6, BOX, BOX, generator=g)
    assert torch.equal(ImageMisfit()(p, o), (p - o).pow(2).mean())
    w = soft_window(BOX)
    windowed = ImageMisfit(w)(p, o)
    ones = whitening_weights(np.ones((1, n_shells(BOX))), BOX)
    assert np.allclose(ones, 1.0)
    torch.testing.assert_close(ImageMisfit(w, ones)(p, o), windowed)  # Parseval: unit weights change nothing
    # pure noise scores its variance whether or not it is windowed (image_var keeps its meaning)
    noise = 2.0 * torch.randn(400, BOX, BOX, generator=g)
    assert float(ImageMisfit(w)(noise, torch.zeros_like(noise))) == pytest.approx(4.0, rel=0.02)
    # only the residual inside the window counts
    corner = torch.zeros(1, BOX, BOX)
    corner[0, 0, 0] = 5.0
    assert float(ImageMisfit(w)(corner, torch.zeros_like(corner))) == 0.0


def test_misfit_weights_each_image_by_its_optics_group():
    psd = np.stack([np.ones(n_shells(BOX)), 1.0 / (1.0 + np.arange(n_shells(BOX)))])
    misfit = ImageMisfit(None, whitening_weights(psd, BOX), np.array([3, 7]))
    x = torch.randn(2, BOX, BOX, generator=torch.Generator().manual_seed(1))
    per_group = [float(misfit(x[:1], torch.zeros_like(x[:1]), torch.tensor([g]))) for g in (3, 7)]
    assert per_group[0] == pytest.approx(float(x[0].pow(2).mean()), rel=1e-5) and per_group[1] != per_group[0]
    with pytest.raises(ValueError, match="optics group"):
        misfit(x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="no measured noise spectrum"):
        misfit(x, torch.zeros_like(x), torch.tensor([3, 5]))


# -- normalisation ---------------------------------------------------------------------------------


def _noise_stack(n=2000, seed=0):
    """Images of noise around a faint disc: (backgrounds of unit variance, whole-image stds)."""
    rng = np.random.default_rng(seed)
    disc = (radii(BOX) < 0.6).astype(np.float32)
    return rng.standard_normal((n, BOX, BOX)).astype(np.float32) + 0.3 * disc, rng


def _verdict(images):
    mask = background_mask(BOX, 0.85)
    return classify_backgrounds(*background_stats(images, mask), images.std(axis=(1, 2))).verdict


def test_normalisation_is_told_apart_on_normalised_scaled_and_offset_stacks():
    images, rng = _noise_stack()
    assert _verdict(images) == "normalized"
    assert _verdict(5.0 * images) == "scaled"
    assert _verdict(images + rng.normal(0, 3, (len(images), 1, 1)).astype(np.float32)) == "unnormalized"
    assert _verdict(images + 2.0) == "unnormalized"  # one common offset the model cannot render
    assert _verdict(images * rng.lognormal(0, 0.5, (len(images), 1, 1)).astype(np.float32)) == "unnormalized"
    # noise-free images: the background is the particle's fringes, never normalised
    assert _verdict(0.01 * images[:, :, :] * (radii(BOX) < 0.9) + (radii(BOX) < 0.6)) == "low-noise"
    # the verdict does not flip with the sample: many small samples of the same stack agree
    assert {_verdict(_noise_stack(300, seed)[0]) for seed in range(8)} == {"normalized"}


def test_simulated_stacks_are_detected_and_normalised_per_image(homogeneous_32, tmp_path):
    ps = load_particles(homogeneous_32 / "particles.star")
    noise_std = json.loads((homogeneous_32 / "metadata.json").read_text())["noise_std"]
    reports = [inspect_normalization(ps, 0.85, n=500, seed=s) for s in range(4)]
    # white noise of one level over the whole stack: never "unnormalized", whatever the sample
    expected = "normalized" if 0.7 <= noise_std <= 1.4 else "scaled"
    assert {r.verdict for r in reports} == {expected}
    assert all(r.level == pytest.approx(noise_std, rel=0.05) for r in reports)
    scaled = dataclasses.replace(ps, contrast=-10.0 / noise_std)
    assert inspect_normalization(scaled, 0.85, n=500).verdict == "scaled"
    cfg = PreprocessConfig(stack_normalization="unnormalized")
    assert prepared(ps, cfg).normalize_radius == 0.85 and prepared(ps, PreprocessConfig()).normalize_radius is None
    normed = prepared(ps, dataclasses.replace(cfg, normalize="auto"))
    means, stds = background_stats(normed.images(np.arange(50)), background_mask(BOX, 0.85))
    np.testing.assert_allclose(means, 0, atol=1e-5)
    np.testing.assert_allclose(stds, 1, rtol=1e-5)
    assert inspect_normalization(normed, 0.85, n=500).verdict == expected  # inspection reads the stack as stored
    assert normed.at_box(16).images(np.arange(2)).shape == (2, 16, 16)  # normalised, then cropped
    clean = sim.write_simulation(tmp_path / "clean", sim.simulate("homogeneous", BOX, 200, np.inf, seed=1))
    assert inspect_normalization(load_particles(clean / "particles.star"), 0.85).verdict == "low-noise"


# -- the noise spectrum ----------------------------------------------------------------------------


def test_noise_spectrum_recovers_a_known_coloured_spectrum_from_pure_noise():
    rng = np.random.default_rng(0)
    noise = 2.0 * sim.coloured(rng.standard_normal((2000, BOX, BOX), dtype=np.float32))
    assert noise.var() == pytest.approx(4.0, rel=0.02)  # coloured at the white noise's variance
    estimate = finish_spectrum(background_power(noise, background_taper(BOX, 0.85)) / len(noise))
    f = np.fft.fftfreq(BOX)
    true_full = 4.0 * np.c_[sim.coloured_spectrum(BOX), sim.coloured_spectrum(BOX)[:, 1:-1][:, ::-1]]
    shell = np.round(np.hypot(f[None, :], f[:, None]) * BOX).astype(int)
    truth = np.array([true_full[shell == i].mean() for i in range(n_shells(BOX))])
    # the background taper blurs the spectrum over ~2 shells: the lowest ones are smoothed
    np.testing.assert_allclose(estimate[3:], truth[3:], rtol=0.08)
    assert truth[3] / truth[-1] > 4 and estimate[3] / estimate[-1] > 4
    w = whitening_weights(estimate, BOX)[0]
    mult = np.r_[1, np.full(BOX // 2 - 1, 2), 1]
    assert (w * mult).sum() / BOX**2 == pytest.approx(1.0, rel=1e-5)  # mean weight 1
    assert w[0, BOX // 2] > 3 * w[0, 3]  # high frequencies, where the noise is weak, weigh more
    # a cropped stage sees the same field of view: shell i stays at index i
    np.testing.assert_allclose(whitening_weights(estimate, 16)[0, 0, :5] / whitening_weights(estimate, 16)[0, 0, 0],
                               w[0, :5] / w[0, 0], rtol=1e-5)


# -- the simulator ---------------------------------------------------------------------------------


def test_simulator_coloured_noise_and_clutter(tmp_path):
    white = sim.simulate("homogeneous", BOX, 64, 0.1, seed=4)
    col = sim.simulate("homogeneous", BOX, 64, 0.1, seed=4, noise_spectrum="coloured", clutter=2)
    np.testing.assert_array_equal(col.rotations, white.rotations)  # the clutter's own stream
    assert col.noise_std == white.noise_std  # the SNR is against the total noise variance
    _, clean, images = next(col.batches(64))
    residual = images - col.sign * clean - col.sign * col.clutter_images(np.arange(64))
    assert residual.var() == pytest.approx(col.noise_std**2, rel=0.1)
    clutter = col.clutter_images(np.arange(64))
    edge, centre = radii(BOX) > 0.85, radii(BOX) < 0.3
    assert np.abs(clutter[:, edge]).mean() > 5 * np.abs(clutter[:, centre]).mean() > 0
    out = sim.write_simulation(tmp_path / "c", col)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["options"]["noise_spectrum"] == "coloured" and meta["options"]["clutter"] == 2
    assert "1 / (1 + (f / 0.1)^2) + 0.1" in meta["image_formation"]["noise_spectrum"]
    assert meta["noise_var"] > col.noise_std**2  # the neighbours count as noise in the measured SNR
    with pytest.raises(InputError, match="--noise-spectrum"):
        sim.simulate("homogeneous", BOX, 4, 0.1, noise_spectrum="pink")


# -- config, run folder, resume ---------------------------------------------------------------------


def test_preprocess_config_round_trip_options_and_old_runs():
    cfg = new_config(TrainOptions(window_radius=0.7, normalize="yes", noise_weighting=True))
    assert cfg.preprocess == PreprocessConfig(True, 0.7, "yes", None, True)
    back = TrainConfig.from_dict(dataclasses.asdict(cfg), "config.json")
    assert back.preprocess == cfg.preprocess
    assert not new_config(TrainOptions(no_window=True)).preprocess.window
    bad = dataclasses.asdict(cfg)
    bad["preprocess"]["normalize"] = "maybe"
    with pytest.raises(InputError, match="train.preprocess.normalize: expected auto or yes or no"):
        TrainConfig.from_dict(bad, "config.json")
    # a run from before the section trained without window or normalisation, and resumes so
    old = {"format_version": 1, "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "preprocess"}}
    upgraded = TrainConfig.from_dict(migrate_config(old, "config.json")["train"], "config.json")
    assert upgraded.preprocess == PreprocessConfig(window=False, normalize="no", noise_weighting=False)


def test_noise_weighting_run_saves_its_spectrum_and_resumes_from_it(homogeneous_32, tmp_path):
    ps = load_particles(homogeneous_32 / "particles.star").subset(np.arange(300))
    cfg = tiny_config()
    cfg.consensus = dataclasses.replace(cfg.consensus, map_fit_steps=5)
    cfg.preprocess = dataclasses.replace(cfg.preprocess, noise_weighting=True, stack_normalization="scaled")
    run = RunFolder(tmp_path / "run")
    with run:
        run.update_config(train=cfg, n_particles=len(ps))
        assert train(ps, run, cfg, CPU, stages=("consensus",)) == "finished"
    saved = NoiseSpectrum.from_npz(run.noise_psd_path, ps)
    assert saved.box == BOX and saved.psd.shape == (1, n_shells(BOX)) and list(saved.groups) == [1]
    stamp = run.noise_psd_path.stat().st_mtime_ns
    resumed = resumed_config(TrainOptions(epochs_consensus=2), run.config(), run)
    assert resumed.preprocess == cfg.preprocess
    with run:
        assert train(ps, run, resumed, CPU, stages=("consensus",)) == "finished"
    assert run.noise_psd_path.stat().st_mtime_ns == stamp  # read back, not measured again
    for option in (TrainOptions(no_window=True), TrainOptions(window_radius=0.5), TrainOptions(normalize="no")):
        with pytest.raises(InputError, match="with --resume"):
            resumed_config(option, run.config(), run)
    other = dataclasses.replace(ps, optics_group=np.full(len(ps), 2))
    with pytest.raises(InputError, match="optics groups"):
        NoiseSpectrum.from_npz(run.noise_psd_path, other)


# -- the proof -------------------------------------------------------------------------------------


def _fit_auc(data, weighting: bool, work) -> float:
    """AUC vs the ground truth of a short consensus fit (2 epochs from the ground truth blurred
    by 1.5 px) with the soft window and noise weighting on or off."""
    ps = load_particles(data / "particles.star")
    gt, mask = read_map(data / "gt" / "vol_000.mrc").data, read_map(data / "gt" / "mask.mrc").data
    pre = PreprocessConfig(noise_weighting=weighting)
    spectrum = measure_noise_spectrum(ps, pre.window_radius) if weighting else None
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files = ConsensusFiles(*(work / f for f in ("bp.mrc", "checkpoint.pt", "g.npz", "map.mrc", "history.json")))
    fit_consensus(ps, ndimage.gaussian_filter(gt, 1.5), files, ConsensusConfig(epochs=2, map_fit_steps=100), CPU,
                  misfit=stage_misfit(pre, ps.box, spectrum))
    return auc(*fsc(read_map(files.map).data, gt, mask))


@pytest.mark.parametrize(("noise", "clutter"), [("coloured", 2), ("white", 0)])
def test_noise_weighting_helps_on_coloured_noise_and_is_harmless_on_white(noise, clutter, tmp_path):
    torch.set_num_threads(1)
    data = sim.write_simulation(tmp_path / "data", sim.simulate("homogeneous", BOX, 1500, 0.05, seed=2,
                                                                noise_spectrum=noise, clutter=clutter))
    plain, weighted = _fit_auc(data, False, tmp_path / "plain"), _fit_auc(data, True, tmp_path / "weighted")
    if noise == "coloured":
        assert weighted > plain + 0.004, (plain, weighted)
    else:
        assert abs(weighted - plain) < 0.001, (plain, weighted)
