"""A run keeps its input files when it is moved: config.json records each relative to the run
folder and absolute (``inputs``), and every command that reads the run's particles finds them
from any working directory; when neither path holds them, the error names config.json, the
key and every place tried, and ``--particles`` names the file instead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cryospire_core.analysis.explorer import Explorer
from cryospire_core.cli.main import main
from cryospire_core.errors import InputError
from cryospire_core.io.load import load_particles
from cryospire_core.io.selection import read_selection
from cryospire_core.pipeline.runfolder import RunFolder
from tests.conftest import project_run


@pytest.fixture
def project(tiny_run, tmp_path, monkeypatch) -> Path:
    """tmp/proj with data/ and runs/run, the run started from proj with a relative particle path."""
    return project_run(tiny_run, tmp_path / "proj", monkeypatch)


def test_a_run_records_its_inputs_relative_to_itself_and_absolute(project):
    saved = RunFolder(project / "runs" / "run").config()
    assert saved["train_command"]["particles"] == "data/particles.star"  # as given, for the record
    assert saved["inputs"] == {"particles": {"relative": "../../data/particles.star",
                                             "absolute": str(project / "data" / "particles.star")}}


def _select_and_branch(run: Path, out: Path, capsys, *particles: str) -> None:
    """`cryospire select` and `cryospire branch` on ``run`` (with ``particles``: its --particles)
    write a selection of state 0 and a branch that finds the same particle file."""
    assert main(["select", str(run), "--states", "0", "--k", "3", *particles, "-o", str(out / "keep.star")]) == 0
    rows = np.loadtxt(out / "keep_indices.txt", dtype=int)
    star = RunFolder(run).particle_source(*particles[1:]).particles
    assert 0 < len(rows) < 300
    assert read_selection(out / "keep.star", load_particles(star, invert=False)).tolist() == rows.tolist()
    capsys.readouterr()
    assert main(["branch", str(run), "--select", str(out / "keep_indices.txt"), *particles, "-o",
                 str(out / "branch")]) == 0
    printed = capsys.readouterr()
    assert "warning" not in printed.err and f"stage 2 will train on {len(rows)} particles" in printed.out
    assert str(Path(star).resolve()) in printed.out.splitlines()[-1]  # the printed train command
    assert RunFolder(out / "branch").particles_path() == Path(star).resolve()


def test_a_run_moved_with_its_data_keeps_every_feature(project, tmp_path, monkeypatch, capsys):
    moved = tmp_path / "elsewhere" / "proj2"
    moved.mkdir(parents=True)
    for name in ("runs", "data"):  # the same layout, somewhere else
        shutil.move(project / name, moved / name)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # neither the directory training ran in nor the run's
    run = RunFolder(moved / "runs" / "run")
    star = (moved / "data" / "particles.star").resolve()
    assert run.particles_path() == star and run.particle_source().particles == star
    assert run.input_candidates("particles")[0] == moved / "data" / "particles.star"  # found relative to the run
    explorer = Explorer.from_run(run.root)
    assert explorer.particles == star and explorer.gt_labels is not None and explorer.particles_missing is None
    _select_and_branch(run.root, tmp_path / "cwd", capsys)


def test_a_run_moved_alone_finds_its_data_by_the_absolute_path(project, tmp_path, monkeypatch, capsys):
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.move(project / "runs" / "run", tmp_path / "a" / "b" / "run")
    monkeypatch.chdir(tmp_path)
    run = RunFolder(tmp_path / "a" / "b" / "run")
    star = (project / "data" / "particles.star").resolve()
    assert not run.input_candidates("particles")[0].exists() and run.particles_path() == star
    assert Explorer.from_run(run.root).gt_labels is not None
    (tmp_path / "out").mkdir()
    _select_and_branch(run.root, tmp_path / "out", capsys)


def test_when_nothing_holds_the_particles_the_error_says_where_it_looked(project, tmp_path, monkeypatch, capsys):
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.move(project / "runs" / "run", tmp_path / "a" / "b" / "run")
    shutil.move(project / "data", tmp_path / "renamed")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    run = RunFolder(tmp_path / "a" / "b" / "run")
    assert run.particles_path() is None
    explorer = Explorer.from_run(run.root)
    assert explorer.particles is None and explorer.gt_labels is None
    # relative to the run, absolute, then train_command's "data/particles.star" the legacy ways
    tried = [tmp_path / "a" / "data", project / "data", tmp_path / "cwd" / "data", run.root / "data",
             run.root.parent / "data"]
    assert run.input_candidates("particles") == [folder / "particles.star" for folder in tried]
    expected = (f"{run.config_path}: inputs.particles: expected the particle file the run was trained on (give it "
                f"with --particles), found none of {', '.join(str(folder / 'particles.star') for folder in tried)}")
    with pytest.raises(InputError) as err:
        run.particle_source()
    assert str(err.value) == expected == str(explorer.particles_missing).replace(
        "trained on,", "trained on (give it with --particles),")
    assert main(["select", str(run.root), "--states", "0", "--k", "3", "-o", str(tmp_path / "keep.star")]) == 1
    assert capsys.readouterr().err.strip() == f"cryospire select: error: {expected}"
    # branch needs them only to check the selection: it warns in the same words, and goes on
    np.savetxt(tmp_path / "idx.txt", [0, 1, 2], fmt="%d")
    assert main(["branch", str(run.root), "--select", str(tmp_path / "idx.txt"), "-o", str(tmp_path / "b0")]) == 0
    assert f"cryospire branch: warning: {expected}; " in capsys.readouterr().err
    # --particles names the file: every command works, and a branch records it
    (tmp_path / "out").mkdir()
    _select_and_branch(run.root, tmp_path / "out", capsys, "--particles", str(tmp_path / "renamed" / "particles.star"))


def test_a_format_2_run_still_opens_and_finds_its_particles_the_legacy_ways(tiny_run, tmp_path):
    shutil.copytree(tiny_run.parent / "data", tmp_path / "data")
    run = RunFolder(shutil.copytree(tiny_run, tmp_path / "run"))
    saved = json.loads(run.config_path.read_text())
    del saved["inputs"]
    saved["format_version"] = 2
    saved["train_command"]["particles"] = "data/particles.star"  # relative to where it trained: beside the run
    run.config_path.write_text(json.dumps(saved))
    assert run.config()["format_version"] == 3 and run.inputs() == {}
    assert run.particles_path() == (tmp_path / "data" / "particles.star").resolve()
    assert run.input_field("particles") == "train_command.particles"


def test_a_chosen_particle_file_is_remembered_in_the_run(project, tmp_path):
    shutil.move(project / "data", tmp_path / "renamed")
    run = RunFolder(project / "runs" / "run")
    assert run.particles_path() is None
    run.record_input("particles", tmp_path / "renamed" / "particles.star")
    saved = run.config()
    assert saved["inputs"]["particles"] == {"relative": "../../../renamed/particles.star",
                                            "absolute": str(tmp_path / "renamed" / "particles.star")}
    assert saved["train_command"]["particles"] == "data/particles.star"  # what training was given stays
    assert run.particles_path() == (tmp_path / "renamed" / "particles.star").resolve()


@pytest.mark.parametrize("inputs, message", [
    ({"particles": "p.star"}, "inputs.particles: expected a JSON object {...} of options, found \"p.star\""),
    ({"particles": {"relative": "p.star"}}, "inputs.particles.absolute: expected a value, found none (the key is missing)"),
    ({"particles": {"relative": 1, "absolute": "/p.star"}}, "inputs.particles.relative: expected a string, found 1"),
    ({"stack": {"relative": "p", "absolute": "/p"}},
     "inputs.stack: expected an input of the run (particles, poses, ctf, datadir), found an unknown key"),
])
def test_damaged_inputs_are_errors_naming_the_key(tmp_path, inputs, message):
    run = RunFolder(tmp_path)
    run.update_config(inputs=inputs)
    with pytest.raises(InputError) as err:
        run.particles_path()
    assert str(err.value) == f"{run.config_path}: {message}"
