"""Never write or delete a file the user made: the shared output check, the temporaries' names and
their cleanup, and the run folder's refusal of symbolic links."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from cryospire_core.cli.options import add_overwrite_arg
from cryospire_core.errors import InputError
from cryospire_core.io.atomic import TEMP_NAME, TEMP_PREFIX, atomic_path, write_text
from cryospire_core.io.outputs import check_new_outputs, existing_outputs
from cryospire_core.pipeline.runfolder import RunFolder


@pytest.fixture
def dead_pid() -> int:
    """A process id no process has any more."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    """The id of a live process other than us (a concurrent writer)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


# -- check_new_outputs -------------------------------------------------------------------------


def test_new_names_pass_and_missing_folders_will_be_made(tmp_path):
    check_new_outputs([tmp_path / "a.mrc", tmp_path / "new" / "deeper" / "b.mrc"], overwrite=False)


def test_an_existing_file_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "vol_000.mrc").write_text("mine")
    with pytest.raises(InputError) as err:
        check_new_outputs([tmp_path / "vol_001.mrc", tmp_path / "vol_000.mrc"], overwrite=False)
    assert str(err.value) == (f"{tmp_path / 'vol_000.mrc'}: --out: expected a file name not in use "
                              "(or --overwrite), found an existing file")
    check_new_outputs([tmp_path / "vol_000.mrc"], overwrite=True)
    assert existing_outputs([tmp_path / "vol_000.mrc", tmp_path / "vol_001.mrc"]) == [tmp_path / "vol_000.mrc"]


def test_a_link_at_an_output_name_is_named_and_replaced_only_with_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "map.mrc").symlink_to(tmp_path / "notes.txt")
    with pytest.raises(InputError, match=r"map.mrc: --out: expected .* found a symbolic link to .*notes.txt"):
        check_new_outputs([tmp_path / "map.mrc"], overwrite=False)
    check_new_outputs([tmp_path / "map.mrc"], overwrite=True)
    write_text(tmp_path / "map.mrc", "ours")  # the rename replaces the link itself
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "map.mrc").is_symlink()


def test_a_folder_at_an_output_name_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "scores.json").mkdir()
    with pytest.raises(InputError, match="scores.json: --out: expected a file name \\(not a folder\\)"):
        check_new_outputs([tmp_path / "scores.json"], overwrite=True)


def test_a_linked_folder_below_the_output_root_is_refused_even_with_overwrite(tmp_path):
    user, out = tmp_path / "user", tmp_path / "out"
    user.mkdir()
    out.mkdir()
    (out / "gt").symlink_to(user)
    with pytest.raises(InputError, match=r"out/gt: --out: expected a regular folder cryospire made, found a symbolic"):
        check_new_outputs([out / "gt" / "mask.mrc"], overwrite=True, under=out)
    (tmp_path / "elsewhere").symlink_to(user)  # the root itself may be a link: the user chose it
    check_new_outputs([tmp_path / "elsewhere" / "a.mrc"], overwrite=False, under=tmp_path / "elsewhere")


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt: --out: expected a folder \\(or a name not in use\\), "
                                         "found an existing file"):
        check_new_outputs([tmp_path / "notes.txt" / "sub" / "vol_000.mrc"], overwrite=True)


def test_a_read_only_folder_is_refused_for_root_too(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for target in (ro / "a.mrc", ro / "new" / "a.mrc"):
            with pytest.raises(InputError, match=r"ro: --out: expected a folder you can write to, found a read-only"):
                check_new_outputs([target], overwrite=True)
    finally:
        ro.chmod(0o755)


def test_add_overwrite_arg():
    parser = argparse.ArgumentParser()
    add_overwrite_arg(parser)
    assert parser.parse_args(["--overwrite"]).overwrite and not parser.parse_args([]).overwrite


# -- temporaries --------------------------------------------------------------------------------


def test_temporaries_have_our_own_name_with_pid_and_suffix(tmp_path):
    with atomic_path(tmp_path / "checkpoint.pt") as tmp:
        m = TEMP_NAME.fullmatch(tmp.name)
        assert m and int(m.group(1)) == os.getpid() and tmp.suffix == ".pt"
        tmp.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_lock_cleans_only_stale_temporaries_of_ours(tmp_path, dead_pid, live_pid):
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / "consensus").mkdir(parents=True)
    RunFolder(run).update_config(train={})  # a run folder cryospire made
    outside.mkdir()
    (run / "parts").symlink_to(outside)  # a linked folder: nothing behind it is touched
    stale = [run / f"{TEMP_PREFIX}{dead_pid}-abc123.json", run / "consensus" / f"{TEMP_PREFIX}{dead_pid}-x_y.pt",
             run / "consensus" / f"{TEMP_PREFIX}{os.getpid()}-mine"]
    kept = [run / ".notes.tmp.txt", run / "consensus" / ".x.tmp.txt", run / "consensus" / "notes.tmp",
            run / "consensus" / f"{TEMP_PREFIX}{live_pid}-concurrent.mrc",  # a live writer's file in progress
            run / f"{TEMP_PREFIX}{dead_pid}-bad name.txt", run / f"{TEMP_PREFIX}0-group.txt",
            outside / f"{TEMP_PREFIX}{dead_pid}-abc.mrc"]
    for p in stale + kept:
        p.write_text("x")
    (run / f"{TEMP_PREFIX}{dead_pid}-link.txt").symlink_to(outside / f"{TEMP_PREFIX}{dead_pid}-abc.mrc")
    (run / f"{TEMP_PREFIX}{dead_pid}-dir").mkdir()
    with pytest.raises(InputError, match="parts: run folder: expected a regular folder cryospire made"):
        RunFolder(run).lock()
    (run / "parts").unlink()
    (run / "other").symlink_to(outside)  # not a stage folder: allowed, but never cleaned
    with RunFolder(run):
        pass
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "x" for p in kept)
    assert (run / f"{TEMP_PREFIX}{dead_pid}-link.txt").is_symlink() and (run / f"{TEMP_PREFIX}{dead_pid}-dir").is_dir()


def test_lock_refuses_a_folder_holding_a_runs_names_without_its_config(tmp_path):
    """A folder with a ``consensus/`` or ``latents.npy`` but no config.json is not a run: the
    user's files there are refused, not trained over; an empty folder is a new run."""
    (tmp_path / "empty").mkdir()
    with RunFolder(tmp_path / "empty"):
        pass
    for name in ("consensus", "latents.npy"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).mkdir() if "." not in name else (folder / name).write_text("mine")
        with pytest.raises(InputError, match=f"run folder: expected a new or empty folder.*found {name} already"):
            RunFolder(folder).lock()
        assert not (folder / "run.lock").exists()


# -- the run folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run.lock", "config.json"])
def test_lock_refuses_a_link_in_place_of_its_own_files(tmp_path, name):
    (tmp_path / "notes.txt").write_text("my notes\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(tmp_path / "notes.txt")
    with pytest.raises(InputError, match=f"run/{name}: run folder: expected a regular file cryospire made, "
                                         "found a symbolic link to .*notes.txt"):
        RunFolder(run).lock()
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


def test_stage_dir_refuses_a_link(tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "hierarchical").symlink_to(tmp_path / "user")
    with pytest.raises(InputError, match="hierarchical: run folder: expected a regular folder cryospire made"):
        RunFolder(tmp_path / "run").stage_dir("hierarchical")


def test_lock_refuses_a_file_or_a_read_only_folder_as_the_run_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt: run folder: expected a folder"):
        RunFolder(tmp_path / "notes.txt").lock()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="ro: run folder: expected a folder you can write to"):
            RunFolder(ro / "run").lock()
    finally:
        ro.chmod(0o755)
    assert not (ro / "run").exists()
