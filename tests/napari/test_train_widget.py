"""Train dock: trains a tiny data set in a worker to completion with live progress, a loss
curve and map/parts layers; Pause leaves a run that Resume finishes; the review stop lets the
user re-cluster before stage 2; worker errors become notifications; closing the viewer stops
training and leaves a resumable run. The event loop's longest stall during training is printed
(not asserted: timings depend on the machine)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from cryospire_core.models.parts import PartClustering
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_napari import _train_widget
from cryospire_napari._parts_widget import LABELS_NAME, POINTS_NAME
from cryospire_napari._train_widget import PREVIEW_NAME, TrainWidget
from tests.conftest import tiny_config

TIMEOUT_MS = 60_000


@pytest.fixture
def dock(make_napari_viewer, tiny_star, tmp_path, monkeypatch):
    monkeypatch.setattr(_train_widget, "REFRESH_MS", 500)
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.config = tiny_config()
    widget.particles.edit.setText(str(tiny_star))
    widget.out.edit.setText(str(tmp_path / "run"))
    return widget


class StallMeter:
    """A 10 ms QTimer recording the gaps between its ticks (the event loop's responsiveness)."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def stop(self) -> float:
        """Longest gap between ticks, ms."""
        self.timer.stop()
        return 1000.0 * float(np.diff(self.ticks).max())


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.running and not widget.parts.busy and not widget.preview_job.busy,
                    timeout=TIMEOUT_MS)


def test_dock_trains_to_completion_with_live_layers(dock, qtbot, tmp_path):
    meter = StallMeter()
    dock.start()
    assert dock.running and not dock.start_button.isEnabled() and dock.pause_button.isEnabled()
    wait_idle(qtbot, dock)
    stall = meter.stop()
    print(f"\nlongest event-loop stall during the tiny training: {stall:.0f} ms over {len(meter.ticks)} ticks")
    assert len(meter.ticks) > 10
    assert dock.last_status == "finished", dock.status.text()
    run = tmp_path / "run"
    for rel in ("consensus/map.mrc", "discovery/model.pt", "parts/clustering.npz", "hierarchical/model.pt", "latents.npy"):
        assert (run / rel).is_file(), rel
    cfg = RunFolder(run).config()
    assert cfg["train_command"]["gui"] and cfg["train"]["hierarchical"]["n_gaussians"] == 256
    assert dock.stage_label.text() == "finished" and dock.bar.value() == dock.bar.maximum()
    assert sum(len(v) for v in dock.plot.losses.values()) >= 10  # every step's loss
    assert any("stage 1" in stage for stage in dock.plot.losses)
    layers = dock.viewer.layers
    assert layers[PREVIEW_NAME].data.shape == (32, 32, 32)
    assert layers[PREVIEW_NAME].metadata["what"] == "stage 2 (latest checkpoint)"
    assert LABELS_NAME in layers and POINTS_NAME in layers
    assert dock.resume_button.isEnabled() and not dock.pause_button.isEnabled()


def test_pause_leaves_a_run_that_resume_finishes(dock, qtbot, tmp_path):
    run = tmp_path / "run"
    dock.start()
    qtbot.waitUntil((run / "config.json").is_file, timeout=TIMEOUT_MS)  # the particles read and checked
    dock.pause()  # honoured within a second, in whatever phase the consensus is
    wait_idle(qtbot, dock)
    assert dock.last_status == "cancelled" and "paused" in dock.status.text()
    assert not (run / "consensus" / "gaussians.npz").exists()
    assert dock.resume_button.isEnabled()
    dock.start()  # Start over an existing run is refused, as `cryospire train` without --resume
    wait_idle(qtbot, dock)
    assert dock.last_status == "error" and "the Resume button" in dock.status.text()
    assert "--resume" not in dock.status.text()  # the dock's words, not the command line's
    dock.resume()
    wait_idle(qtbot, dock)
    assert dock.last_status == "finished" and (run / "hierarchical" / "model.pt").is_file()


def test_review_recluster_then_continue_to_stage2(dock, qtbot, tmp_path):
    dock.review.setChecked(True)
    dock.start()
    wait_idle(qtbot, dock)
    run = tmp_path / "run"
    assert dock.last_status == "finished" and not (run / "hierarchical").exists()
    assert dock.tabs.currentIndex() == 1 and dock.continue_button.isEnabled()
    labels = dock.viewer.layers[LABELS_NAME]
    dock.parts.recluster(3, 1)
    qtbot.waitUntil(lambda: not dock.parts.busy and dock.parts.state.n_parts == 3, timeout=TIMEOUT_MS)
    assert set(np.unique(labels.data)) == {0, 1, 2, 3}
    assert PartClustering.from_npz(run / "parts" / "clustering.npz").n_parts == 3
    dock.continue_to_stage2()
    wait_idle(qtbot, dock)
    assert dock.last_status == "finished" and (run / "hierarchical" / "model.pt").is_file()
    seed = np.load(run / "hierarchical" / "seed.npz")
    assert set(np.unique(seed["anchor_centres"].shape[:1])) == {3}  # stage 2 uses the 3 reviewed parts


def test_worker_exception_becomes_a_notification(dock, qtbot, monkeypatch, notes, tmp_path):
    import cryospire_core.services.training

    def broken(*args, **kwargs):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(cryospire_core.services.training, "train", broken)
    dock.start()
    wait_idle(qtbot, dock)
    assert dock.last_status == "error"
    assert any("boom in training" in str(n.message) for n in notes)
    # Bad input: the InputError sentence reaches the user.
    dock.out.edit.setText(str(tmp_path / "run2"))
    dock.particles.edit.setText(str(tmp_path / "missing.star"))
    dock.start()
    wait_idle(qtbot, dock)
    assert any("missing.star" in str(n.message) for n in notes)
    # The viewer stays usable, and the run's lock was released.
    dock.viewer.add_image(np.zeros((4, 4)))
    RunFolder(tmp_path / "run").lock()


def test_closing_the_viewer_stops_training_and_leaves_a_resumable_run(dock, qtbot, tmp_path, tiny_star):
    import torch

    from cryospire_core.io.load import load_particles
    from cryospire_core.pipeline.config import TrainConfig
    from cryospire_core.pipeline.train import train

    dock.start()
    job = dock.job
    qtbot.waitUntil((tmp_path / "run" / "config.json").is_file, timeout=TIMEOUT_MS)  # the run has started
    dock.viewer.close()
    assert job.wait(30) and job.monitor.stop.is_set()
    run = RunFolder(tmp_path / "run")
    run.lock()  # released by the stopped worker
    assert not (run.root / "hierarchical" / "model.pt").exists()
    cfg = TrainConfig.from_dict(run.config()["train"], run.config_path)
    assert train(load_particles(tiny_star), run, cfg, torch.device("cpu")) == "finished"


def test_docks_open_from_the_plugins_menu(make_napari_viewer):
    from cryospire_napari._parts_widget import PartsWidget

    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget("cryospire-napari", "Train")
    _, parts = viewer.window.add_plugin_dock_widget("cryospire-napari", "Parts")
    assert isinstance(train, TrainWidget) and isinstance(parts, PartsWidget)
    assert not train.resume_button.isEnabled()
    assert len(viewer.layers) == 0  # the warm-up layers are gone


def test_removing_the_dock_stops_training(dock, qtbot, tmp_path):
    dock.start()
    job = dock.job
    dock.viewer.window.remove_dock_widget(dock)
    assert job.wait(30) and job.monitor.stop.is_set()
    RunFolder(tmp_path / "run").lock()
