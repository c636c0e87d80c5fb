"""The explorer dock on a run that was moved and is opened from another working directory: with
its data beside it (found relative to the run) or left in place (found by the absolute path)
every feature works (ground-truth colouring, Write selection); with neither, the dock says which
file it expected and where it looked, with a field to choose it, and choosing it restores them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cryospire_core.analysis.explorer import ColourMode
from cryospire_core.io.load import load_particles
from cryospire_core.io.selection import read_selection
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.services import select
from cryospire_napari._explorer_widget import ExplorerWidget
from tests.conftest import project_run


def _loaded(make_napari_viewer, qtbot, run: Path) -> ExplorerWidget:
    widget = ExplorerWidget(make_napari_viewer())
    widget.viewer.window.add_dock_widget(widget)
    widget.load_run(run)
    qtbot.waitUntil(lambda: widget.session.explorer is not None and not widget.busy, timeout=30_000)
    return widget


def _features_work(widget: ExplorerWidget, star: Path, out: Path) -> None:
    """Ground-truth colouring is on, and Write selection writes a state's particles of ``star``."""
    e = widget.session.explorer
    assert e.particles == star.resolve() and e.gt_labels is not None
    assert widget.session.colouring.mode == ColourMode.GROUND_TRUTH
    assert widget.particle_row.isHidden()
    widget.session.select_state(0)
    written, index = widget.actions.write_selection(out)
    rows = np.flatnonzero(widget.session.selected)
    assert read_selection(written, load_particles(star, invert=False)).tolist() == rows.tolist()
    assert np.loadtxt(index, dtype=int).tolist() == rows.tolist()


@pytest.mark.parametrize("moved", ["with its data", "alone"])
def test_a_moved_run_opened_from_elsewhere_keeps_every_feature(make_napari_viewer, qtbot, tiny_run, tmp_path,
                                                                monkeypatch, moved):
    project = project_run(tiny_run, tmp_path / "proj", monkeypatch)
    new = tmp_path / "moved" / "here"
    new.mkdir(parents=True)
    shutil.move(project / "runs", new / "runs")
    if moved == "with its data":
        shutil.move(project / "data", new / "data")
    monkeypatch.chdir(tmp_path)
    star = (new if moved == "with its data" else project) / "data" / "particles.star"
    widget = _loaded(make_napari_viewer, qtbot, new / "runs" / "run")
    _features_work(widget, star, tmp_path / "keep.star")


def test_a_particle_file_found_nowhere_is_asked_for_in_the_dock(make_napari_viewer, qtbot, tiny_run, tmp_path,
                                                                 monkeypatch, notes):
    project = project_run(tiny_run, tmp_path / "proj", monkeypatch)
    shutil.move(project / "data", tmp_path / "renamed")
    monkeypatch.chdir(tmp_path)
    run = RunFolder(project / "runs" / "run")
    widget = _loaded(make_napari_viewer, qtbot, run.root)
    e = widget.session.explorer
    assert e.particles is None and e.gt_labels is None
    # one line: the file expected (config.json's key) and every place it was looked for
    text = widget.particle_row.message.text()
    assert not widget.particle_row.isHidden() and "\n" not in text
    assert text.startswith(f"particle file not found: {run.config_path}: inputs.particles: expected the particle "
                           "file the run was trained on, found none of ")
    assert all(str(p) in text for p in run.input_candidates("particles"))
    assert widget.session.colouring.mode == ColourMode.STATE  # no ground truth without the particles
    widget.session.select_state(0)
    assert widget.actions.write_selection(tmp_path / "refused.star") is None
    assert any("choose it at the top of the dock" in str(n.message) for n in notes)
    # A file with another particle count is refused, naming it; the run's own is used and remembered.
    star = tmp_path / "renamed" / "particles.star"
    other, _ = select.write_selection(tmp_path / "other.star", np.arange(295), star)
    widget.particle_row.edit.setText(str(other))
    widget.particle_row.edit.returnPressed.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert any(f"{other}: particles: expected the 300 particles the run was trained on, found 295"
               in str(n.message) for n in notes)
    assert widget.session.explorer.particles is None
    widget.particle_row.edit.setText(str(star))
    widget.particle_row.edit.returnPressed.emit()
    qtbot.waitUntil(lambda: not widget.busy and widget.session.explorer.particles is not None, timeout=30_000)
    _features_work(widget, star, tmp_path / "keep.star")
    assert run.particles_path() == star.resolve()  # remembered in the run's config.json
