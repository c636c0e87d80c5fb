"""Latent analysis: PCA, traversals, k-means states, and the `analyze` products of a run folder."""

from __future__ import annotations

import argparse

import mrcfile
import numpy as np
import pytest

from cryospire_core.analysis import latentspace as analysis
from cryospire_core.cli import analyze as cli_analyze
from cryospire_core.errors import InputError
from cryospire_core.models import parts
from cryospire_core.pipeline.runfolder import RunFolder

BOX, APIX = 16, 3.0


def _latents(n=300, seed=0):
    """Two clusters in 4D, stretched along one oblique direction."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * [3.0, 1.0, 0.5, 0.2]
    x[: n // 2] += [0, 8, 0, 0]
    rot, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    return (x @ rot).astype(np.float32)


def _fake_render(z: np.ndarray) -> np.ndarray:
    """A blob whose x position follows z[0] (a stand-in for a trained model)."""
    ax = (np.arange(BOX) - BOX // 2) * APIX
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    return np.exp(-((xx - 2.0 * z[0]) ** 2 + yy**2 + zz**2) / (2 * 4.0**2)).astype(np.float32)


def test_pca_inverse_is_exact_and_components_are_ordered():
    x = _latents()
    fit = analysis.pca(x)
    scores = fit.transform(x)
    np.testing.assert_allclose(fit.inverse_transform(scores), x, atol=1e-5)
    np.testing.assert_allclose(fit.components @ fit.components.T, np.eye(4), atol=1e-12)
    assert np.all(np.diff(fit.explained_variance) <= 0)
    np.testing.assert_allclose(scores.var(axis=0, ddof=1), fit.explained_variance, rtol=1e-10)
    assert fit.explained_variance_ratio.sum() == pytest.approx(1.0)
    # An arbitrary point of PC space maps back exactly too (the GUI moves in PC space).
    p = np.array([[1.5, -2.0, 0.3, 4.0]])
    np.testing.assert_allclose(fit.transform(fit.inverse_transform(p)), p, atol=1e-12)


def test_traversal_runs_along_pc1():
    x = _latents()
    fit = analysis.pca(x)
    pts = analysis.traversal(x, pc=1, n_steps=7, fit=fit)
    s = fit.transform(pts)
    assert pts.shape == (7, 4)
    assert np.all(np.diff(s[:, 0]) > 0)
    np.testing.assert_allclose(s[:, 1:], 0.0, atol=1e-9)
    np.testing.assert_allclose(s[[0, -1], 0], np.percentile(fit.transform(x)[:, 0], [5, 95]), rtol=1e-9)
    span = analysis.traversal(x, pc=2, n_steps=5, span=2.0)
    np.testing.assert_allclose(fit.transform(span)[[0, -1], 1], np.array([-2.0, 2.0]) * np.sqrt(fit.explained_variance[1]), rtol=1e-9)
    with pytest.raises(ValueError):
        analysis.traversal(x, pc=5)


def test_kmeans_states_are_deterministic_and_find_the_clusters():
    x = _latents()
    a, ca = analysis.kmeans_states(x, 2, seed=3)
    b, cb = analysis.kmeans_states(x, 2, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)
    assert parts.adjusted_rand(a, np.repeat([0, 1], 150)) == 1.0
    assert ca.shape == (2, 4)


def test_nearest_particles_and_embedding_fallback():
    x = _latents()
    z = np.array([1.0, -1.0, 0.5, 0.0])
    brute = np.argsort(np.linalg.norm(x - z, axis=1))[:5]
    np.testing.assert_array_equal(analysis.nearest_particles(x, z, 5), brute)
    emb, method = analysis.umap_embedding(x, seed=0)
    assert emb.shape == (300, 2) and method in ("umap", "pca")
    if method == "pca":  # umap-learn is not a dependency: the first two PC scores stand in
        np.testing.assert_allclose(emb, analysis.pca(x).transform(x)[:, :2])


def _mixture(rng, n_per):
    """Two groups of Gaussians (export format) around x = -10 and +10 Å, and the group of each."""
    centres = np.concatenate([rng.normal(scale=2, size=(n_per, 3)) + [-10, 0, 0],
                              rng.normal(scale=2, size=(n_per, 3)) + [10, 0, 0]]).astype(np.float32)
    g = {"centres": centres, "widths": np.full(2 * n_per, 3.0, np.float32), "amplitudes": np.ones(2 * n_per, np.float32),
         "box": np.int64(BOX), "apix": np.float64(APIX)}
    return g, np.repeat([0, 1], n_per)


def _run_folder(tmp_path, with_parts=True, stage2=False):
    """A run folder as `cryospire train` leaves it: latents, stage-1 seed Gaussians, the part
    clustering, and (``stage2``) the stage-2 seed with its own part index."""
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "latents.npy", _latents())
    if with_parts:
        rng = np.random.default_rng(0)
        g, group = _mixture(rng, 30)
        feats = 5.0 * group[:, None] + rng.normal(scale=0.1, size=(60, 8))
        parts.discover_parts(feats, g["centres"], g["amplitudes"], seed=0).to_npz(run / "parts" / "clustering.npz")
        (run / "discovery").mkdir()
        np.savez(run / "discovery" / "seed.npz", **g)
        if stage2:
            g2, group2 = _mixture(rng, 100)
            (run / "hierarchical").mkdir()
            np.savez(run / "hierarchical" / "seed.npz", **g2, part_index=group2)
    return run


def test_analyze_writes_the_products(tmp_path):
    run = _run_folder(tmp_path)
    res = analysis.analyze(run, _fake_render, APIX, ksample=3, pc_steps=4, n_pcs=2)
    out = run / "analysis"
    assert res.out_dir == out
    for name in ("pca.npz", "kmeans_3.npz", "latent_pca.png", "pc_histograms.png", "embedding.png",
                 "state_000.mrc", "state_002.mrc", "pc1/vol_000.mrc", "pc1/vol_003.mrc", "pc2/vol_003.mrc",
                 "pc1/latents.npy", "parts/part_labels.mrc", "parts/mask_part_01.mrc", "parts/mask_part_02.mrc"):
        assert (out / name).is_file(), name
    assert not (out / "state_003.mrc").exists() and not (out / "pc1/vol_004.mrc").exists()
    assert (out / "latent_pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latents = np.load(run / "latents.npy")
    with np.load(out / "kmeans_3.npz") as km:
        assert km["labels"].shape == (300,) and km["centres"].shape == (3, 4)
        first = latents[km["on_data_index"][0]]
    with mrcfile.open(out / "state_000.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(APIX)
        np.testing.assert_allclose(m.data, _fake_render(first))
    with np.load(out / "pca.npz") as p:
        fit = analysis.LatentPCA(p["mean"], p["components"], p["explained_variance"])
        assert p["scores"].shape == (300, 4)
    pc1 = fit.transform(np.load(out / "pc1" / "latents.npy"))[:, 0]
    assert np.all(np.diff(pc1) > 0)
    with mrcfile.open(out / "parts" / "part_labels.mrc") as m:
        labels = np.asarray(m.data)
        assert float(m.voxel_size.x) == pytest.approx(APIX)
    assert set(np.unique(labels)) == {0, 1, 2}
    with mrcfile.open(out / "parts" / "mask_part_01.mrc") as m:
        mask = np.asarray(m.data)
        assert float(m.voxel_size.x) == pytest.approx(APIX)
    assert mask.min() >= 0 and mask.max() == 1.0 and np.all(mask[labels == 1] == 1.0)
    assert not res.notes or all("umap" in n for n in res.notes)


def test_part_maps_use_the_stage2_gaussians_when_present(tmp_path):
    run = _run_folder(tmp_path, stage2=True)
    g, part_index, source = RunFolder(run).part_gaussians()
    assert source == run / "hierarchical" / "seed.npz" and len(part_index) == 200
    analysis.analyze(run, _fake_render, APIX, ksample=2, pc_steps=2)
    with mrcfile.open(run / "analysis" / "parts" / "part_labels.mrc") as m:
        labels = np.asarray(m.data)
    assert labels[BOX // 2, BOX // 2, BOX // 2 - 3] == 1 and labels[BOX // 2, BOX // 2, BOX // 2 + 3] == 2
    (run / "hierarchical" / "seed.npz").unlink()
    assert RunFolder(run).part_gaussians()[2] == RunFolder(run).seed_path("discovery")


def test_a_second_analysis_replaces_files_only_with_overwrite(tmp_path):
    run = _run_folder(tmp_path)
    analysis.analyze(run, _fake_render, APIX, ksample=2, pc_steps=2)
    written = sorted(p for p in (run / "analysis").rglob("*") if p.is_file())
    latents = RunFolder(run).latents()
    checked = analysis.check_outputs(run, len(latents), latents.shape[1], 2, 2, 1, None, RunFolder(run).part_gaussians(),
                                     overwrite=True)
    assert written == sorted(checked.all())  # the list checked before computing is what is written
    before = {p: p.read_bytes() for p in written}
    with pytest.raises(InputError, match="analysis/pca.npz: --out: expected a file name not in use"):
        analysis.analyze(run, _fake_render, APIX, ksample=2, pc_steps=2)
    assert {p: p.read_bytes() for p in written} == before
    analysis.analyze(run, _fake_render, APIX, ksample=2, pc_steps=2, overwrite=True)


def test_analyze_without_parts_notes_the_skip(tmp_path):
    run = _run_folder(tmp_path, with_parts=False)
    res = analysis.analyze(run, _fake_render, APIX, ksample=2, pc_steps=2, out_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "state_001.mrc").is_file()
    assert not (tmp_path / "elsewhere" / "parts").exists()
    assert any("part maps skipped" in n for n in res.notes)


def _cli_args(run, *extra):
    parser = argparse.ArgumentParser()
    cli_analyze.add_args(parser)
    return parser.parse_args([str(run), *extra])


def test_cli_writes_the_files_and_refuses_incomplete_runs(tmp_path, monkeypatch, capsys):
    run = _run_folder(tmp_path)
    with pytest.raises(InputError, match="config.json: train"):  # not trained by `cryospire train`
        cli_analyze.run(_cli_args(run))
    monkeypatch.setattr(cli_analyze, "load_renderer", lambda run_dir, latents, box: (_fake_render, APIX))
    assert cli_analyze.run(_cli_args(run, "--ksample", "2", "--pc-steps", "3", "--out", str(tmp_path / "a"))) == 0
    assert (tmp_path / "a" / "state_001.mrc").is_file() and (tmp_path / "a" / "pc1" / "vol_002.mrc").is_file()
    assert (tmp_path / "a" / "parts" / "mask_part_02.mrc").is_file()
    assert "wrote" in capsys.readouterr().out

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="latents.npy: latents"):
        cli_analyze.run(_cli_args(empty))
    np.save(empty / "latents.npy", np.zeros(5))
    with pytest.raises(InputError, match="latents.npy: latents: expected a finite float"):
        cli_analyze.run(_cli_args(empty))
    with pytest.raises(SystemExit):  # refused while the command line is read (cli.options.COUNT)
        _cli_args(run, "--ksample", "0")
    assert "--ksample: expected a whole number >= 1, found 0" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_analyzes_a_trained_run_end_to_end(tmp_path, capsys):
    """simulate -> train (tiny, 1 epoch per stage) -> analyze through the `cryospire` command."""
    import torch

    from cryospire_core.cli.main import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problem: worker threads only fight the other tests for the CPU
    try:
        _simulate_train_analyze(main, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert "wrote" in capsys.readouterr().out


def _simulate_train_analyze(main, tmp_path):
    sim, run = tmp_path / "sim", tmp_path / "run"
    assert main(["simulate", "--preset", "hinge", "--box", "32", "--n", "300", "--snr", "1", "--out", str(sim),
                 "--quiet"]) == 0
    assert main(["train", str(sim / "particles.star"), "--out", str(run), "--epochs-consensus", "1", "--epochs-1", "1",
                 "--epochs-2", "1", "--gaussians-1", "128", "--gaussians-2", "256", "--quiet"]) == 0
    assert main(["analyze", str(run), "--ksample", "3", "--pc-steps", "2"]) == 0
    out = run / "analysis"
    assert (out / "state_002.mrc").is_file() and (out / "pc1" / "vol_001.mrc").is_file()
    assert (out / "parts" / "part_labels.mrc").is_file() and (out / "parts" / "mask_part_01.mrc").is_file()
    with mrcfile.open(out / "state_000.mrc") as m:
        assert m.data.shape == (32, 32, 32) and float(m.voxel_size.x) == pytest.approx(12.0)
        assert float(np.abs(m.data).max()) > 0
