"""What the Train dock tells its user: the phase the training is in (label and bar, seeding
included), Cancel honoured within a second during stage 2's seeding, the loss of each stage on
its own axes, stage 2's map preview from its checkpoints, and refusals in the dock's words."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cryospire_core.cli.main import main
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import SEED_FIT_STAGE
from cryospire_core.progress import ProgressEvent
from cryospire_napari._notify import in_gui_words
from cryospire_napari._train_widget import (
    PREVIEW_NAME,
    LossPlot,
    TrainWidget,
    preview_map,
)
from cryospire_napari._workers import progress_text
from tests.conftest import tiny_config

TIMEOUT_MS = 60_000


@pytest.fixture
def dock(make_napari_viewer, tiny_star, tmp_path):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.config = tiny_config()
    widget.torch_threads = 1
    widget.particles.edit.setText(str(tiny_star))
    widget.out.edit.setText(str(tmp_path / "run"))
    return widget


def test_the_label_names_the_phase_its_step_and_the_time_left():
    seed = ProgressEvent(SEED_FIT_STAGE, 120, 400, elapsed=30.0, eta=70.0, unit="step")
    assert progress_text(seed) == "stage 2: fitting the seed to stage 1's map (step 120/400), 01:10 left"
    loop = ProgressEvent("stage 1: part discovery", 30, 100, epoch=3, epochs=10, loss=0.9, eta=252.0)
    assert progress_text(loop) == "stage 1: part discovery, epoch 3/10, 04:12 left"
    assert progress_text(ProgressEvent("parts: clustering the Gaussians into parts", 0, 1)) == \
        "parts: clustering the Gaussians into parts..."


def test_command_line_wording_becomes_the_docks():
    assert in_gui_words("run/config.json: train: expected a new run folder, or --resume to continue this run") == \
        "run/config.json: train: expected a new run folder, or the Resume button to continue this run"
    assert in_gui_words("run/discovery/checkpoint.pt: --epochs-2: expected at least 3, found 2") == \
        "run/discovery/checkpoint.pt: the stage-2 epochs: expected at least 3, found 2"
    assert in_gui_words("run/parts: --stage hierarchical: expected a finished parts stage first (leave out --stage, "
                        "or add --stage parts)") == \
        "run/parts: the hierarchical stage: expected a finished parts stage first (press Resume to train the stages " \
        "in order)"
    assert in_gui_words("/data/a--resume/p.star: --parts-level2: expected 2") == \
        "/data/a--resume/p.star: the level-2 part count: expected 2"  # paths are left alone


def test_each_stage_has_its_own_loss_axis(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    rng = np.random.default_rng(0)
    for value in 7.6 + 0.3 * rng.random(20):
        plot.add("consensus", float(value))
    for value in 0.93 + 0.01 * rng.random(30):
        plot.add("stage 1: part discovery", float(value))
    plot.redraw()
    assert list(plot.axes) == ["consensus", "stage 1: part discovery"]
    low, high = plot.axes["stage 1: part discovery"].get_ylim()
    assert 0.9 < low and high < 0.96  # stage 1's curve fills its axis instead of a line at the bottom
    assert plot.axes["consensus"].get_ylim()[0] > 7
    legend = plot.axes["stage 1: part discovery"].get_legend().get_texts()[0].get_text()
    assert legend.startswith("stage 1: part discovery: 0.9")
    plot.clear()
    assert plot.axes == {}


@pytest.fixture
def seeding_run(parts_run, tmp_path) -> Path:
    """A copy of the run trained up to its parts whose stage-2 seed fit takes minutes."""
    run = RunFolder(tmp_path / "run")
    shutil.copytree(parts_run, run.root)
    cfg = run.train_config()
    cfg.consensus = dataclasses.replace(cfg.consensus, map_fit_steps=5000)
    run.update_config(train=cfg)
    return run.root


def test_cancel_during_stage_2_seeding_returns_within_a_second(dock, qtbot, seeding_run):
    dock.out.edit.setText(str(seeding_run))
    dock.resume()
    qtbot.waitUntil(lambda: "(step " in dock.stage_label.text() and SEED_FIT_STAGE in dock.stage_label.text(),
                    timeout=TIMEOUT_MS)
    assert dock.bar.maximum() == 5000 and dock.bar.value() < 5000
    job = dock.job
    t0 = time.monotonic()
    dock.cancel_button.click()
    assert job.wait(1.0), "the training thread was still running 1 s after Cancel"
    ended = time.monotonic() - t0
    qtbot.waitUntil(lambda: not dock.running, timeout=2000)
    print(f"\ncancel during stage-2 seeding: the thread ended {ended * 1000:.0f} ms after the click")
    assert dock.last_status == "cancelled" and dock.stage_label.text() == "cancelled"
    assert "resumes with Resume" in dock.status.text()
    run = RunFolder(seeding_run)
    assert not run.seed_path("hierarchical").exists() and dock.resume_button.isEnabled()


def test_stage_2_preview_follows_its_checkpoints(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    what, before, apix = preview_map(run)
    assert what == "stage 2 (latest checkpoint)" and before.shape == (32, 32, 32) and apix > 0
    assert main(["train", str(tiny_run.parent / "data" / "particles.star"), "--out", str(run), "--resume",
                 "--epochs-2", "2", "--quiet", "--threads", "1"]) == 0
    _, after, _ = preview_map(run)
    assert not np.allclose(before, after)  # a newer checkpoint: a newer map


def test_a_refusal_in_the_dock_says_what_to_press(dock, qtbot, notes, tmp_path):
    RunFolder(tmp_path / "run").update_config(train=tiny_config(), n_particles=300)
    dock._enable()
    dock.continue_to_stage2()  # stage 2 of a run with no stage finished
    qtbot.waitUntil(lambda: not dock.running, timeout=TIMEOUT_MS)
    (note,) = [n for n in notes if n.severity == "error"]
    message = str(note.message)
    assert message.startswith(f"{tmp_path / 'run' / 'consensus'}") and "the hierarchical stage: expected" in message
    assert "press Resume" in message and "--" not in message
    assert dock.status.text() == f"training failed: {message}"


def test_the_dock_shows_stage_2_training_and_its_map(dock, qtbot, parts_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(parts_run, run, dirs_exist_ok=True)
    dock.out.edit.setText(str(run))
    dock.resume()
    qtbot.waitUntil(lambda: not dock.running and not dock.preview_job.busy, timeout=TIMEOUT_MS)
    assert dock.last_status == "finished"
    assert "stage 2: hierarchical" in dock.plot.axes
    assert dock.viewer.layers[PREVIEW_NAME].metadata["what"] == "stage 2 (latest checkpoint)"
