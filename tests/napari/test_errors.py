"""Nothing lost, nothing silent, in the GUI: every broken file opened with cryospire and every
failed dock job is one napari notification whose first line is ours (``<file>: <field>:
expected ..., found ...``), no dialog asks anything, nothing is half-opened, and the docks come
back to life (buttons enabled, progress hidden, status saying what failed)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import ErrorNotification
from numpy.lib import recfunctions
from qtpy.QtWidgets import QApplication

from cryospire_core.errors import InputError, ResourceError
from cryospire_core.io.load import load_particles, write_particles
from cryospire_core.io.mrc import write_map
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.sim.simulate import simulate, write_simulation
from cryospire_napari import _layers, _parts_widget
from cryospire_napari._explorer_widget import ExplorerWidget
from cryospire_napari._notify import error_message, status_text
from cryospire_napari._parts_widget import PartsWidget
from cryospire_napari._train_widget import TrainWidget
from cryospire_napari._workers import Failure, dispatch
from tests.conftest import tiny_config

PLUGIN = "cryospire-napari"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A 16 px hinge data set of 8 images: particles.star, particles.mrcs."""
    out = tmp_path_factory.mktemp("errors") / "data"
    write_simulation(out, simulate("hinge", 16, 8, snr=10.0, seed=1))
    return out


# -- broken files: each maker writes one into ``folder`` and returns the file to open and the
# (file, field) pairs the notification may start with (two where a core check may come first) --


def star_copy(data: Path, folder: Path, name: str, edit: Callable[[str], str] = lambda s: s) -> Path:
    """The data set's .star, its stack named by absolute path (so the copy lives anywhere), edited."""
    text = (data / "particles.star").read_text().replace("@particles.mrcs", f"@{data / 'particles.mrcs'}")
    path = folder / name
    path.write_text(edit(text))
    return path


def with_optics_value(text: str, column: str, value: str) -> str:
    """The .star text with ``column`` of the (one) optics group row set to ``value``."""
    lines = text.splitlines()
    start = lines.index("data_optics")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("data_"))
    header = [i for i in range(start, end) if lines[i].startswith("_rln")]
    k = next(j for j, i in enumerate(header) if lines[i].split()[0] == f"_{column}")
    row = next(i for i in range(header[-1] + 1, len(lines)) if lines[i].strip())
    fields = lines[row].split()
    fields[k] = value
    lines[row] = "\t".join(fields)
    return "\n".join(lines) + "\n"


def star_bad_voltage(data, folder):
    path = star_copy(data, folder, "bad_voltage.star", lambda s: with_optics_value(s, "rlnVoltage", "0"))
    return path, [(path, "rlnVoltage")]


def star_missing_stack(data, folder):
    path = star_copy(data, folder, "moved.star", lambda s: s.replace(str(data / "particles.mrcs"), "gone.mrcs"))
    return path, [(path, "rlnImageName")]


def star_not_a_star(data, folder):
    path = folder / "notes.star"
    path.write_text("these are my notes, not particles\n")
    return path, [(path, "rlnImageName")]


def truncated(source: Path, path: Path) -> Path:
    raw = source.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def mrc_truncated(data, folder):
    write_map(folder / "whole.mrc", np.ones((16, 16, 16), np.float32), 2.0)
    path = truncated(folder / "whole.mrc", folder / "half.mrc")
    return path, [(path, "MRC data")]


def mrc_not_mrc(data, folder):
    path = folder / "text.mrc"
    path.write_text("not a map")
    return path, [(path, "MRC header")]


def mrcs_truncated(data, folder):
    path = truncated(data / "particles.mrcs", folder / "half.mrcs")
    return path, [(path, "MRC data")]


def cs_missing_field(data, folder):
    write_particles(folder / "whole.cs", load_particles(data / "particles.star"))
    table = np.load(folder / "whole.cs")
    path = folder / "no_voltage.cs"
    with open(path, "wb") as f:
        np.save(f, recfunctions.drop_fields(table, "ctf/accel_kv"))
    return path, [(path, "ctf/accel_kv")]


def cs_not_npy(data, folder):
    path = folder / "text.cs"
    path.write_text("not a table")
    return path, [(path, "cs format")]


def run_config(folder: Path, text: str) -> Path:
    (folder / "run").mkdir()
    path = folder / "run" / "config.json"
    path.write_text(text)
    return path


def run_wrong_config(data, folder):
    path = run_config(folder, json.dumps({"format_version": 1, "train": 5}))
    # The config schema names the bad section; without one, the run has nothing to show.
    return path, [(path, "train"), (path.parent, "run folder")]


def run_config_not_json(data, folder):
    path = run_config(folder, "{format_version: 1")
    return path, [(path, "config")]


def other_tools_config(data, folder):
    path = run_config(folder, json.dumps({"model": "another tool's settings"}))
    return path, [(path, "format_version")]


BROKEN = (star_bad_voltage, star_missing_stack, star_not_a_star, mrc_truncated, mrc_not_mrc, mrcs_truncated,
          cs_missing_field, cs_not_npy, run_wrong_config, run_config_not_json, other_tools_config)


# -- how a file gets opened ------------------------------------------------------------------


def open_with(viewer, path: Path, how: str):
    """``plugin``: viewer.open(path, plugin="cryospire-napari") (scripts); ``auto``:
    viewer.open(path, plugin=None) (napari picks the reader); ``gui``: what File > Open and drag
    and drop call (may show a reader dialog)."""
    if how == "gui":
        return viewer.window._qt_viewer._qt_open([str(path)], stack=False)
    return viewer.open(path, plugin=PLUGIN if how == "plugin" else None)


def errors(notes) -> list:
    return [n for n in notes if n.severity == "error"]


def first_line(notification) -> str:
    return str(notification.message).splitlines()[0]


def starts_with_one_of(line: str, prefixes: list[tuple[Path, str]]) -> bool:
    return any(line.startswith(f"{path}: {field}: expected ") for path, field in prefixes)


@pytest.fixture
def viewer(make_napari_viewer, notes):
    """A viewer, and the notifications list emptied of napari's own start-up notices."""
    v = make_napari_viewer()
    notes.clear()
    return v


@pytest.mark.parametrize("how", ["plugin", "auto", "gui"])
@pytest.mark.parametrize("broken", BROKEN, ids=lambda f: f.__name__)
def test_a_broken_file_is_one_notification_in_our_words(viewer, data, tmp_path, notes, dialogs, broken, how):
    path, prefixes = broken(data, tmp_path)
    assert not open_with(viewer, path, how)  # nothing raised, nothing opened
    assert len(viewer.layers) == 0 and not dialogs and QApplication.activeModalWidget() is None
    (note,) = errors(notes)
    assert starts_with_one_of(first_line(note), prefixes), note.message
    assert not isinstance(note, ErrorNotification)  # the user's file: no traceback to offer


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # imageio's, when napari tries the folder
def test_a_folder_that_is_not_a_run_is_left_to_napari(viewer, tmp_path, notes, dialogs):
    """No reader dialog and nothing from cryospire: napari's own folder reader alone is asked
    (whatever it makes of a folder of notes is napari's answer, in napari's words)."""
    folder = tmp_path / "my notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("not images")
    for how in ("auto", "gui"):
        try:
            open_with(viewer, folder, how)
        except Exception as exc:  # napari's builtin reader refusing the folder, by napari's design
            assert PLUGIN not in str(exc)
    assert not dialogs and not any("cryospire" in str(n.message) for n in notes)


def test_plain_open_reads_with_napari_builtins_only(viewer, data, tmp_path, notes):
    """napari 0.9's ``viewer.open(path)`` means plugin="napari": a .star is refused by napari,
    which names cryospire as the plugin to use; cryospire is not asked."""
    path, _ = star_bad_voltage(data, tmp_path)
    with pytest.raises(ValueError, match=re.escape(repr([PLUGIN]))):
        viewer.open(path)
    assert not notes


def test_a_fault_while_reading_keeps_its_traceback_behind_a_button(viewer, data, tmp_path, notes, monkeypatch):
    """Not the user's file but a fault: "cryospire: opening <file> failed: <Type>: <message>",
    the traceback on napari's "View Traceback" button, nothing raised."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(_layers, "read_map", broken)
    write_map(tmp_path / "fine.mrc", np.ones((16, 16, 16), np.float32), 2.0)
    assert viewer.open(tmp_path / "fine.mrc", plugin=None) == []
    (note,) = errors(notes)
    assert first_line(note) == f"cryospire: opening {tmp_path / 'fine.mrc'} failed: ZeroDivisionError: a bug"
    assert isinstance(note, ErrorNotification) and "broken" in note.as_text()


def test_the_users_sentence_comes_first():
    """A user's file or a machine limit: its own sentence; anything else: the plugin's words."""
    assert error_message(InputError("a.star", "rlnVoltage", "> 0", 0), "opening a.star") == \
        "a.star: rlnVoltage: expected > 0, found 0"
    assert error_message(ResourceError("disk full writing run/map.mrc: free space"), "training") == \
        "disk full writing run/map.mrc: free space"
    assert error_message(KeyError("x"), "training") == "cryospire: training failed: KeyError: 'x'"
    assert status_text(KeyError("x"), "training") == "training failed: KeyError: 'x'"


def test_a_failure_in_the_gui_half_of_a_job_is_reported_too():
    """dispatch: a Failure from the thread and an exception in the GUI-thread callback both go
    to on_error (neither reaches the event loop as a bare traceback)."""
    seen = []

    def show(result):
        raise KeyError(result)

    slot = dispatch(show, seen.append)
    slot(Failure(ValueError("in the thread")))
    slot("in the callback")
    assert [type(e) for e in seen] == [ValueError, KeyError]


# -- docks: a failed job is one notification, and the dock comes back ------------------------------


@pytest.fixture
def train_dock(viewer, tmp_path):
    dock = TrainWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.config = tiny_config()
    dock.torch_threads = 1
    dock.out.edit.setText(str(tmp_path / "run"))
    return dock


def idle_after_start(qtbot, dock) -> None:
    dock.start_button.click()
    qtbot.waitUntil(lambda: not dock.running and not dock.preview_job.busy, timeout=TIMEOUT_MS)


def assert_train_dock_idle(dock) -> None:
    assert dock.start_button.isEnabled() and not dock.pause_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert not dock.poll_timer.isActive() and not dock.refresh_timer.isActive()


def test_training_on_a_broken_star_is_a_notification_and_the_dock_comes_back(train_dock, data, tmp_path, notes,
                                                                               qtbot):
    star, prefixes = star_bad_voltage(data, tmp_path)
    train_dock.particles.edit.setText(str(star))
    idle_after_start(qtbot, train_dock)
    (note,) = errors(notes)
    assert starts_with_one_of(first_line(note), prefixes), note.message
    assert_train_dock_idle(train_dock)
    assert train_dock.stage_label.text() == "error" and train_dock.last_status == "error"
    assert train_dock.status.text() == f"training failed: {note.message}"


def test_start_over_a_trained_run_points_to_the_resume_button(train_dock, data, tmp_path, notes, qtbot):
    RunFolder(tmp_path / "run").update_config(train=tiny_config(), n_particles=8)
    train_dock.particles.edit.setText(str(data / "particles.star"))
    train_dock._enable()
    idle_after_start(qtbot, train_dock)
    (note,) = errors(notes)
    assert first_line(note).startswith(f"{tmp_path / 'run' / 'config.json'}: train: expected a new run folder, "
                                       "or the Resume button to continue this run")
    assert "--resume" not in note.message
    assert_train_dock_idle(train_dock)
    assert train_dock.resume_button.isEnabled()


def test_start_with_nothing_chosen_names_the_field(train_dock, notes):
    train_dock.start_button.click()
    (note,) = errors(notes)
    assert first_line(note) == "Train dock: particles: expected a .star, .cs or image stack file, found nothing chosen"
    assert_train_dock_idle(train_dock)


def broken_parts_run(folder: Path) -> tuple[Path, Path]:
    """A run folder whose parts file is not an .npz: (run, the broken file)."""
    run = folder / "run"
    RunFolder(run).update_config(train=tiny_config(), n_particles=8)
    (run / "parts").mkdir()
    (run / "parts" / "clustering.npz").write_text("not an npz")
    return run, run / "parts" / "clustering.npz"


def test_parts_dock_reports_a_broken_run_and_comes_back(viewer, tmp_path, notes, qtbot):
    dock = PartsWidget(viewer)
    viewer.window.add_dock_widget(dock)
    run, broken = broken_parts_run(tmp_path)
    dock.load_run(run)
    qtbot.waitUntil(lambda: not dock.busy, timeout=TIMEOUT_MS)
    (note,) = errors(notes)
    assert first_line(note).startswith(f"{broken}: "), note.message
    assert dock.status.text() == f"loading the parts of {run} failed: {note.message}"
    assert dock.state is None and _parts_widget.LABELS_NAME not in viewer.layers
    load = next(b for b in dock.findChildren(type(dock.recluster_button)) if b.text() == "Load")
    assert load.isEnabled()


def test_parts_dock_reports_a_fault_in_plugin_words(viewer, tmp_path, notes, qtbot, monkeypatch):
    def broken(root):
        raise RuntimeError("a bug")

    monkeypatch.setattr(_parts_widget, "load_parts", broken)
    dock = PartsWidget(viewer)
    dock.load_run(tmp_path / "run")
    qtbot.waitUntil(lambda: not dock.busy, timeout=TIMEOUT_MS)
    (note,) = errors(notes)
    assert first_line(note) == f"cryospire: loading the parts of {tmp_path / 'run'} failed: RuntimeError: a bug"
    assert isinstance(note, ErrorNotification)


def test_explorer_dock_reports_a_broken_run_and_comes_back(viewer, tmp_path, notes, qtbot):
    dock = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(dock)
    path = run_config(tmp_path, "{format_version: 1")
    dock.load_run(path.parent)
    qtbot.waitUntil(lambda: not dock.busy, timeout=TIMEOUT_MS)
    (note,) = errors(notes)
    assert first_line(note).startswith(f"{path}: "), note.message
    assert dock.status.text() == f"loading the run {path.parent} failed: {note.message}"
    assert dock.session.explorer is None and not dock.progress.isVisible()
    assert dock.continue_button.isEnabled() and dock.write_button.isEnabled()
