"""benchmarks/quality.py without cryoDRGN: map picking and scoring of per-state maps, latents
from a cryoDRGN-style z.pkl, the table, and the timing/peak-memory probe of child programs."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from cryospire_core.io.mrc import write_map

_SPEC = importlib.util.spec_from_file_location("quality", Path(__file__).parents[1] / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(_SPEC)
sys.modules["quality"] = quality  # dataclasses look their module up there
_SPEC.loader.exec_module(quality)

D, APIX = 16, 6.0


def _chiral(D: int, seed: int) -> np.ndarray:
    """A smooth positive map with no mirror symmetry along z (so the other hand scores lower)."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((D, D, D), np.float32)
    z, y, x = np.mgrid[:D, :D, :D]
    for c in rng.uniform(3, D - 3, size=(6, 3)):
        vol += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 3.0).astype(np.float32)
    return vol


@pytest.fixture
def gt_folder(tmp_path):
    """A ground-truth folder of 3 states (vol_###.mrc, labels.npy) and clustered latents whose
    image nearest each state's mean is known."""
    gt = tmp_path / "gt"
    gt.mkdir()
    for k in range(3):
        write_map(gt / f"vol_{k:03d}.mrc", _chiral(D, k), APIX)
    labels = np.repeat(np.arange(3), 5)
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(15, 8)) * 0.1 + labels[:, None]
    np.save(gt / "labels.npy", labels)
    return gt, labels, latents


def test_zfile_rows_are_the_latents_nearest_each_state_mean(gt_folder, tmp_path):
    _, labels, latents = gt_folder
    reps = quality.write_zfile(tmp_path / "z.txt", latents, labels)
    rows = np.loadtxt(tmp_path / "z.txt")
    assert rows.shape == (3, 8)
    for k in range(3):
        members = np.nonzero(labels == k)[0]
        expected = members[np.argmin(((latents[members] - latents[members].mean(0)) ** 2).sum(1))]
        assert reps[k] == expected
        np.testing.assert_allclose(rows[k], latents[expected], rtol=1e-6)


def test_state_maps_scored_in_state_order_and_the_other_hand_scores_lower(gt_folder, tmp_path):
    gt_dir, labels, latents = gt_folder
    gt = quality.load_ground_truth(gt_dir)
    reps = quality.representative_images(latents, labels)
    maps = []
    for i in range(3):  # map i is exactly state i: the ceiling
        maps.append(tmp_path / f"vol_{i:03d}.mrc")
        write_map(maps[-1], gt[i], APIX)
    table = quality.score_state_maps(gt, maps, reps, "same hand")
    flipped = quality.score_state_maps(gt, maps, reps, "flipped", flip=True)
    assert [s.state for s in table.states] == [0, 1, 2]
    assert [s.image for s in table.states] == [reps[k] for k in range(3)]
    np.testing.assert_allclose(table.aucs(), (D // 2 - 1) / D, atol=1e-9)
    assert flipped.summary()["mean_auc"] < table.summary()["mean_auc"] - 0.05
    swapped = quality.score_state_maps(gt, maps[::-1], reps, "wrong order")
    assert swapped.states[0].auc < table.states[0].auc


def test_latents_read_from_a_cryodrgn_z_pickle(tmp_path):
    z_mu = np.arange(12, dtype=np.float32).reshape(3, 4)
    with open(tmp_path / "z.4.pkl", "wb") as f:  # cryoDRGN pickles the means, then the log-variances
        pickle.dump(z_mu, f)
        pickle.dump(np.zeros_like(z_mu), f)
    np.testing.assert_array_equal(quality.read_latents(tmp_path / "z.4.pkl"), z_mu)


def test_rows_and_table(gt_folder, tmp_path):
    gt_dir, labels, latents = gt_folder
    gt = quality.load_ground_truth(gt_dir)
    maps = [tmp_path / f"m{i}.mrc" for i in range(3)]
    for i, p in enumerate(maps):
        write_map(p, gt[i], APIX)
    scores = quality.score_state_maps(gt, maps, quality.representative_images(latents, labels), "t").to_dict()
    measured = quality.row_fields("hinge", "cryoDRGN", scores, {"seconds": 30.0, "peak_rss": 2e9}, 15, 2, None)
    reused = quality.row_fields("hinge", "cryospire", scores, {"seconds": None, "peak_rss": None}, 15, 30, 0.9)
    assert measured["images_per_s"] == pytest.approx(1.0)
    assert measured["res05_median_A"] == pytest.approx(APIX * D / (D // 2 - 1))  # never below 0.5: last shell
    skipped = {"preset": "mixed", "tool": "cryoDRGN", "note": "not run"}
    text = quality.format_table([measured, reused, skipped], "HEAD", ["FOOT"])
    lines = text.splitlines()
    assert lines[0] == "HEAD" and lines[-1] == "FOOT" and len(lines) == 6
    assert lines[2].split()[:3] == ["hinge", "cryoDRGN", "2"] and "2.00" in lines[2].split()
    assert lines[3].split()[-4:] == ["-", "-", "-", "0.900"]
    assert lines[4].split() == ["mixed", "cryoDRGN"] + ["-"] * 8 + ["not", "run"]
    assert quality.not_run_pairs(["mixed:cryodrgn"]) == {("mixed", "cryodrgn")}
    with pytest.raises(SystemExit):
        quality.not_run_pairs(["mixed:relion"])


def test_measure_reports_the_peak_memory_of_the_child_tree(tmp_path):
    # the grandchild holds 200 MB: the tree's RSS counts it
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(200_000_000); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1.0)'])")
    m = quality.measure([sys.executable, "-c", code], tmp_path / "log.txt")
    assert m.returncode == 0 and m.seconds >= 1.0
    assert m.peak_rss > 190e6
    with pytest.raises(RuntimeError, match="exited 3"):
        quality.run_checked([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "bad.txt")


def test_per_preset_counts():
    assert quality.per_preset(["mixed=1", "2"], "--epochs") == {"hinge": 2, "random-hinge": 2, "assembly": 2, "mixed": 1}
    assert quality.per_preset(["hinge=3"], "--score-epoch") == {"hinge": 3}
    for bad in (["ribosome=2"], ["0"], ["hinge=x"]):
        with pytest.raises(SystemExit):
            quality.per_preset(bad, "--epochs")


def test_epoch_seconds_from_a_train_vae_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("(INFO) (train_vae.py) (24-Nov-2026 12:50:11) # [Train Epoch: 1/2] [2000/2000 particles] loss=0.6\n"
                   "(INFO) (train_vae.py) (24-Nov-2026 12:50:11) # =====> Epoch: 1 Average gen loss = 0.66, KLD = 1.8, "
                   "total loss = 0.66; Finished in 0:03:39.5\n"
                   "(INFO) (train_vae.py) (24-Nov-2026 13:55:11) # =====> Epoch: 2 Average gen loss = 0.64, KLD = 6.2, "
                   "total loss = 0.64; Finished in 1:04:57.25\n")
    assert quality.epoch_seconds(log) == pytest.approx([219.5, 3897.25])
