"""benchmarks/quality.py without cryoDRGN: map picking and scoring of per-state maps, latents
from a cryoDRGN-style z.pkl, finished epochs of a stopped run, the latent and low-frequency
scores, the table and the plot; and benchmarks/meter.py, the timing/memory/budget probe of child
programs."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from cryospire_core.io.mrc import write_map

_SPEC = importlib.util.spec_from_file_location("quality", Path(__file__).parents[1] / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(_SPEC)
sys.modules["quality"] = quality  # dataclasses look their module up there
_SPEC.loader.exec_module(quality)
meter = sys.modules["meter"]  # quality.py put benchmarks/ on the path and imported it

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
    scores = {"scores": quality.score_state_maps(gt, maps, quality.representative_images(latents, labels), "t").to_dict()}
    timing = {"seconds": 30.0, "cpu_seconds": 29.0, "peak_rss": 2e9, "load_mean": 1.25, "load_max": 2.0}
    curve = [{"label": "epoch 1", "seconds": 30.0, "auc_mean": 0.4}]
    measured = quality.row_fields("hinge", "cryoDRGN small", scores, timing, 15, 2, ("R2", 0.8), curve)
    reused = quality.row_fields("hinge", "cryospire", scores, None, 15, 30, ("acc", 0.95), [], part_ari=0.9)
    assert measured["images_per_s"] == pytest.approx(1.0)
    assert measured["res05_median_A"] == pytest.approx(APIX * D / (D // 2 - 1))  # never below 0.5: last shell
    # maps equal to the ground truth: FSC 1 everywhere, so the low-frequency AUC is the whole 0..0.25
    assert measured["auc_low"] == pytest.approx(0.25)
    skipped = {"preset": "mixed", "tool": "cryodrgn", "note": "not run"}
    text = quality.format_table([measured, reused, skipped], "HEAD", ["FOOT"])
    lines = text.splitlines()
    assert lines[0] == "HEAD" and lines[-1] == "FOOT" and len(lines) == 6
    cells = lines[2].split()
    assert cells[:4] == ["hinge", "cryoDRGN", "small", "2"] and "2.00" in cells and "29" in cells and "1.2" in cells
    assert cells[-3:] == ["R2", "0.800", "-"]
    assert lines[3].split()[-8:] == ["-"] * 5 + ["acc", "0.950", "0.900"]  # a reused run: nothing timed
    assert lines[4].split() == ["mixed", "cryodrgn"] + ["-"] * 12 + ["not", "run"]
    assert quality.not_run_pairs(["mixed:cryodrgn", "hinge:cryodrgn-large"]) == {("mixed", "cryodrgn"),
                                                                                ("hinge", "cryodrgn-large")}
    for bad in ("mixed:relion", "mixed:cryodrgn-huge"):
        with pytest.raises(SystemExit):
            quality.not_run_pairs([bad])
    png = quality.plot_curves([measured, reused], "hinge", tmp_path / "q_hinge.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert quality.plot_curves([measured], "assembly", tmp_path / "q_assembly.png") is None


def test_low_frequency_auc_integrates_only_up_to_a_quarter():
    freqs = np.arange(0, 33) / 64  # shells of a 64 px box
    scores = {"freqs": freqs.tolist(), "states": [{"curve": np.where(freqs <= 0.25, 1.0, 0.0).tolist()},
                                                  {"curve": np.where(freqs <= 0.125, 1.0, 0.0).tolist()}]}
    # the second curve drops from 1 to 0 over one shell after 0.125: trapezoid adds half a shell
    assert quality.low_freq_auc(scores) == pytest.approx((0.25 + 0.125 + 0.5 / 64) / 2)


def test_latent_scores():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    on_path = np.c_[labels * 0.3 + rng.normal(0, 0.1, 500), rng.normal(size=500)]
    kind, r2 = quality.latent_score(on_path, labels, "hinge")
    assert kind == "R2" and 0.95 < r2 < 1.0
    kind, r2 = quality.latent_score(rng.normal(size=(500, 2)), labels, "hinge")
    assert r2 < 0.05
    clusters = np.eye(10)[labels] * 3 + rng.normal(0, 0.3, (500, 10))
    assert quality.latent_score(clusters, labels, "assembly") == ("acc", 1.0)
    kind, acc = quality.latent_score(rng.normal(size=(500, 4)), labels, "assembly")
    assert kind == "acc" and acc < 0.4


def test_finished_epochs_and_curve_points(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"(INFO) (train_vae.py) # =====> Epoch: {e} Average gen loss = 0.66, total loss = 0.66; "
                           f"Finished in 0:03:39.5\n" for e in (1, 2, 3)))
    for e in (1, 2, 3, 4):  # epoch 4 has files but no log line: stopped while it was saved
        (tmp_path / f"weights.{e}.pkl").write_bytes(b"w")
        (tmp_path / f"z.{e}.pkl").write_bytes(b"z")
    (tmp_path / "z.3.pkl").unlink()  # and epoch 3's latents are missing
    assert quality.finished_epochs(tmp_path, log) == [1, 2]
    assert quality.finished_epochs(tmp_path, tmp_path / "none.log") == []
    assert quality.curve_epochs(list(range(1, 21)), 4) == [1, 7, 14, 20]
    assert quality.curve_epochs([1, 2], 6) == [1, 2]


def test_budget_is_the_cryospire_wall_time_unless_given():
    args = type("A", (), {"budget_minutes": None})()
    assert quality.budget_seconds(args, {"seconds": 1234.0}) == 1234.0
    with pytest.raises(SystemExit, match="--budget-minutes"):
        quality.budget_seconds(args, {"seconds": None})
    args.budget_minutes = 2.5
    assert quality.budget_seconds(args, None) == 150.0
    totals = quality.combined([{"seconds": 10.0, "cpu_seconds": 9.0, "peak_rss": 5, "load_mean": 1.0, "load_max": 1.5},
                               {"seconds": 30.0, "cpu_seconds": 20.0, "peak_rss": 7, "load_mean": 2.0, "load_max": 2.5}])
    assert totals == {"seconds": 40.0, "cpu_seconds": 29.0, "peak_rss": 7, "load_mean": 1.75, "load_max": 2.5}


def test_carried_rows_are_reused_and_set_the_peers_budget(tmp_path):
    curve = [{"label": "consensus", "seconds": 10.0, "auc_mean": 0.3}, {"label": "stage 2", "seconds": 90.0,
                                                                         "auc_mean": 0.4}]
    ours = {"preset": "hinge", "tool": "cryospire", "auc_mean": 0.4, "seconds": 90.0, "curve": curve}
    theirs = {"preset": "hinge", "tool": "cryoDRGN small", "auc_mean": 0.35, "seconds": 89.0, "curve": []}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"rows": [ours, theirs, {"preset": "hinge", "tool": "cryoDRGN large", "note": "not run"}]}))
    carried = quality.carried_rows(old)
    assert set(carried) == {("hinge", "cryospire"), ("hinge", "cryoDRGN small")}  # a row never run is not carried
    assert quality.budget_seconds(type("A", (), {"budget_minutes": None})(), carried[("hinge", "cryospire")]) == 90.0
    out = tmp_path / "table.txt"
    # nothing can run here (no simulation, no cryoDRGN): the table must come from the carried rows alone
    quality.main(["--work", str(tmp_path / "work"), "--presets", "hinge", "--data", f"hinge={tmp_path / 'none'}",
                  "--tools", "cryospire", "cryodrgn", "--cryodrgn-arch", "small", "--carry", str(old), "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["tool"], r["auc_mean"]) for r in rows] == [("cryospire", 0.4), ("cryoDRGN small", 0.35)]
    assert (tmp_path / "table_hinge.png").is_file()
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(SystemExit, match="bad.json"):
        quality.carried_rows(tmp_path / "bad.json")


def test_profile_device_and_an_installed_cryodrgn_reach_the_commands(tmp_path, monkeypatch):
    """What benchmarks/gpu_quality.sh relies on: cryospire trains with --profile and --device, and
    --cryodrgn-exe is run instead of a virtual environment being made."""
    calls = []

    class Stop(Exception):
        pass

    def record(cmd, *args, **kwargs):
        calls.append([str(c) for c in cmd])
        raise Stop

    monkeypatch.setattr(quality, "run_checked", record)
    data = tmp_path / "data"
    (data / "gt").mkdir(parents=True)
    np.save(data / "gt" / "labels.npy", np.zeros(4, np.int64))
    exe = tmp_path / "bin" / "cryodrgn"
    args = quality.argparse.Namespace(threads=16, cryospire_epochs=None, profile="paper", device="cuda",
                                      cryodrgn_exe=exe, work=tmp_path / "work", epochs=5, seed=0)
    with pytest.raises(Stop):
        quality.cryospire_side("assembly", data, tmp_path / "cs", None, args, {})
    train = calls[-1]
    assert train[train.index("--profile") + 1] == "paper" and train[train.index("--device") + 1] == "cuda"
    with pytest.raises(Stop):
        quality.cryodrgn_side("assembly", data, tmp_path / "cd", "large", 60.0, args, {})
    assert calls[-1][:2] == [str(exe), "train_vae"]
    assert not (tmp_path / "work" / "cryodrgn-venv").exists()


def test_gpu_script_says_why_it_runs_nothing(tmp_path):
    """benchmarks/gpu_quality.sh on a machine without CUDA stops at once, saying so (exit 0), and
    without cryoDRGN's wheels it says where to get them (exit 2)."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_quality.sh"
    env = {**os.environ, "GPU_QUALITY_WHEELS": str(tmp_path / "none")}
    if not torch.cuda.is_available():
        no_gpu = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
        assert no_gpu.returncode == 0 and "no CUDA device visible to torch; nothing run" in no_gpu.stdout
    no_wheels = subprocess.run(["bash", str(script)], env={**env, "GPU_QUALITY_DEVICE": "cpu"}, capture_output=True,
                               text=True, timeout=120)
    assert no_wheels.returncode == 2
    assert "no cryodrgn wheel in " + str(tmp_path / "none") in no_wheels.stdout
    assert "gpu_wheels.sh" in no_wheels.stdout


def test_measure_reports_the_peak_memory_and_cpu_of_the_child_tree(tmp_path):
    # the grandchild holds 200 MB and spins for ~0.5 s: the tree's RSS and CPU time count it
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(200_000_000); b[::4096] = b\"x\" * len(b[::4096]); t = time.process_time()\\n"
            "while time.process_time() - t < 0.5: pass\\ntime.sleep(0.5)'])")
    m = meter.measure([sys.executable, "-c", code], tmp_path / "log.txt")
    assert m.returncode == 0 and m.seconds >= 1.0 and not m.stopped
    assert m.peak_rss > 190e6
    assert 0.5 <= m.cpu_seconds < m.seconds + 1.0
    assert m.load_max >= m.load_mean >= 0
    with pytest.raises(RuntimeError, match="exited 3"):
        meter.run_checked([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "bad.txt")


def test_measure_stops_the_whole_tree_at_the_budget(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            f"'import os, time, pathlib\\npathlib.Path(r\"{pid_file}\").write_text(str(os.getpid()))\\ntime.sleep(60)'])")
    m = meter.run_checked([sys.executable, "-c", code], tmp_path / "log.txt", budget_s=1.5)  # no raise: a stop
    assert m.stopped and m.returncode != 0 and 1.5 <= m.seconds < 10.0
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the grandchild got the signal too (its own process group was stopped)
        if not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"grandchild {grandchild} still running after the stop")


def test_the_preset_of_a_simulation_folder_decides_its_latent_score(tmp_path):
    (tmp_path / "metadata.json").write_text('{"options": {"preset": "hinge", "box": 128}}')
    assert quality.simulated_preset(tmp_path, "hinge128") == "hinge"
    assert quality.simulated_preset(tmp_path / "elsewhere", "assembly") == "assembly"


_FAKE_RELION_INTERP = '''
import numpy as np
def _pixel_frequencies(image_shape, half_image=False):
    return np.array([[1.0, 0.0], [0.0, -2.0]])
def backproject(imgs, rotations, image_shape, volume_shape, order=1, half_volume=False, half_image=False, max_r=None):
    return _pixel_frequencies(image_shape, half_image=half_image), max_r
project = backproject
'''
_FAKE_COMMAND_LINE = '''
import json, sys
from recovar.core import relion_interp as ri
def main_commands():
    out = {}
    for name in ("project", "backproject"):
        for box in (64, 128):
            freqs, max_r = getattr(ri, name)(None, None, (64, 64), (box, box, box), max_r=31)
            out[f"{name} {box}"] = [freqs.tolist(), max_r]
    out["restored"] = ri._pixel_frequencies((64, 64)).tolist()
    out["argv"] = sys.argv
    print(json.dumps(out))
    return 0
'''


def test_recovar_cpu_launcher_scales_frequencies_on_an_oversampled_grid_only(tmp_path):
    """The launcher RECOVAR runs through: on a volume grid k times the image's, its CPU slicing gets
    frequencies and radius cut-off times k (what its CUDA kernels do), at k = 1 nothing changes, the
    plain frequencies are back afterwards, and RECOVAR's command line gets the arguments."""
    package = tmp_path / "site" / "recovar"
    (package / "core").mkdir(parents=True)
    for path, text in {package / "__init__.py": "", package / "core" / "__init__.py": "",
                       package / "core" / "relion_interp.py": _FAKE_RELION_INTERP,
                       package / "command_line.py": _FAKE_COMMAND_LINE}.items():
        path.write_text(text)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    cmd = quality.recovar_cmd(tmp_path / "bin" / "recovar", "pipeline", "x.mrcs")
    assert quality.recovar_cmd(tmp_path / "bin" / "recovar", "pipeline", cpu_fix=False) == [
        str(tmp_path / "bin" / "recovar"), "pipeline", "--gpu-budget-gb", str(quality.RECOVAR_MEMORY_GB)]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    plain = [[1.0, 0.0], [0.0, -2.0]]
    for name in ("project", "backproject"):
        assert out[f"{name} 64"] == [plain, 31]
        assert out[f"{name} 128"] == [[[2.0, 0.0], [0.0, -4.0]], 62]
    assert out["restored"] == plain
    assert out["argv"] == ["recovar", "pipeline", "x.mrcs", "--gpu-budget-gb", str(quality.RECOVAR_MEMORY_GB)]


def test_recovar_runs_to_its_budget_factor_and_a_stopped_row_says_so(tmp_path, monkeypatch, capsys):
    """RECOVAR has no epochs to stop after: it gets ``--recovar-budget-factor`` budgets, and a run
    stopped there is a row without a map that names the factor; a factor under 1 is refused."""
    limits, cmds = [], []

    def stopped(cmd, log, env=None, budget_s=None):
        limits.append(budget_s)
        cmds.append(cmd)
        return meter.Measured(budget_s, budget_s, 1 << 30, -15, 1.0, 1.0, stopped=True)

    monkeypatch.setattr(quality, "run_checked", stopped)
    monkeypatch.setattr(quality, "recovar_venv", lambda work: tmp_path / "venv" / "bin" / "recovar")
    args = quality.argparse.Namespace(work=tmp_path, threads=1, recovar_budget_factor=1.0, recovar_lazy=False)
    row = quality.recovar_side("hinge", tmp_path / "data", tmp_path / "recovar", 600.0, args, {})
    assert limits == [600.0] and "--lazy" not in cmds[-1]
    assert row["note"].endswith("not finished after 1 x the budget") and row["seconds"] == 600.0
    assert "auc_mean" not in row
    args.recovar_lazy = True
    row = quality.recovar_side("hinge", tmp_path / "data", tmp_path / "lazy", 600.0, args, {})
    assert "--lazy" in cmds[-1] and "lazy loading" in row["note"]
    args.recovar_lazy = False  # a cached run keeps the note of the options it ran with
    assert "lazy loading" in quality.recovar_side("hinge", tmp_path / "data", tmp_path / "lazy", 600.0, args, {})["note"]
    assert len(cmds) == 2
    with pytest.raises(SystemExit):
        quality.main(["--work", str(tmp_path), "--recovar-budget-factor", "0.5"])
    assert "--recovar-budget-factor: at least 1" in capsys.readouterr().err


def test_cryospire_epochs_per_stage_and_the_table_header_names_each_set(tmp_path):
    assert quality.stage_epochs(None) == ()
    assert quality.stage_epochs([4]) == (4, 4, 4)
    assert quality.stage_epochs([2, 3, 1]) == (2, 3, 1)
    for bad in ([2, 3], [0, 3, 1]):
        with pytest.raises(SystemExit, match="--cryospire-epochs"):
            quality.stage_epochs(bad)
    big = tmp_path / "big"
    big.mkdir()
    (big / "metadata.json").write_text('{"box": 128, "n_images": 100000, "snr": 0.01, "options": {"preset": "hinge"}}')
    assert quality.set_description(big, 64, 20000, 0.05) == "128 px, 100,000 images, SNR 0.01"
    assert quality.set_description(tmp_path / "none", 64, 20000, 0.05) == "64 px, 20,000 images, SNR 0.05"
    ours = {"preset": "hinge", "tool": "cryospire", "auc_mean": 0.4, "seconds": 90.0, "curve": []}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"rows": [ours, {**ours, "preset": "hinge-128", "auc_mean": 0.3}]}))
    out = tmp_path / "table.txt"
    quality.main(["--work", str(tmp_path / "work"), "--presets", "hinge", "hinge-128", "--data", f"hinge={tmp_path}",
                  f"hinge-128={big}", "--tools", "cryospire", "--carry", str(old), "--out", str(out)])
    header = out.read_text().splitlines()[0]
    assert "hinge: 64 px, 20,000 images, SNR 0.05; hinge-128: 128 px, 100,000 images, SNR 0.01" in header
