"""Disk full, out of memory, killed lock holders and run folders from other versions: each ends
in one line saying what to change, and the last checkpoint stays loadable."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cryospire_core.cli import demo
from cryospire_core.cli.main import main
from cryospire_core.errors import InputError, ResourceError, out_of_memory
from cryospire_core.io.atomic import TEMP_PREFIX, atomic_path, write_text
from cryospire_core.io.load import load_particles
from cryospire_core.models import engine
from cryospire_core.models.engine import (
    LoopConfig,
    load_checkpoint,
    run_loop,
    save_checkpoint,
)
from cryospire_core.pipeline.config import RUN_FORMAT_VERSION
from cryospire_core.pipeline.runfolder import RunFolder

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_in_an_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "map.mrc"
    write_text(target, "old")
    for code in (errno.ENOSPC, errno.EDQUOT):
        with pytest.raises(ResourceError) as err:
            with atomic_path(target) as tmp:
                tmp.write_text("half")
                raise OSError(code, os.strerror(code))
        assert str(err.value) == f"disk full writing {target}: free space or choose another --out folder"
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_real_enospc_from_torch_save_is_reported(tmp_path, monkeypatch):
    """/dev/full fails every write with ENOSPC: the checkpoint writer must surface it."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    real_open = open

    def open_full(path, mode="r", *a, **k):  # the temporary file is swapped for /dev/full
        return real_open("/dev/full" if os.path.basename(str(path)).startswith(TEMP_PREFIX) else path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", open_full)
    with pytest.raises(ResourceError, match="disk full writing .*checkpoint.pt"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"version": 1, "w": torch.zeros(1000)})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


class _Tiny(nn.Module):
    def __init__(self, box: int, fail_at: int | None = None, error: BaseException | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(box, box))
        self.calls, self.fail_at, self.error = 0, fail_at, error

    def loss(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        return (batch.images - self.w).pow(2).mean(), {}


@pytest.fixture(scope="module")
def particles(homogeneous_32):
    return load_particles(homogeneous_32 / "particles.star").subset(np.arange(256))


def _loop(model, ps, ckpt, epochs=2):
    return run_loop(model, torch.optim.Adam(model.parameters(), lr=0.05), ps,
                    LoopConfig(epochs=epochs, batch_size=64, prefetch=0), ckpt, "test", torch.device("cpu"))


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(particles, tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint.pt"
    real_save = torch.save
    saves = {"n": 0}

    def failing_save(obj, f, *a, **k):
        saves["n"] += 1
        if saves["n"] == 2:  # the end of epoch 2: half the bytes land, then the disk is full
            f.write(b"\0" * 100)
            raise ENOSPC
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(engine.torch, "save", failing_save)
    with pytest.raises(ResourceError, match="disk full writing .*checkpoint.pt"):
        _loop(_Tiny(particles.box), particles, ckpt)
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 9 bytes"),
                                   MemoryError()])
def test_out_of_memory_in_a_step_says_lower_the_batch_and_keeps_the_checkpoint(particles, tmp_path, error):
    ckpt = tmp_path / "checkpoint.pt"
    model = _Tiny(particles.box, fail_at=6, error=error)  # step 2 of epoch 2 (4 steps per epoch)
    with pytest.raises(ResourceError) as err:
        _loop(model, particles, ckpt)
    assert str(err.value) == "out of memory on cpu at batch size 64: lower --batch-size"
    assert load_checkpoint(ckpt)["epoch"] == 1
    # The resumed loop finishes from that checkpoint.
    assert _loop(_Tiny(particles.box), particles, ckpt).status == "finished"


def test_other_errors_in_a_step_are_not_disguised(particles, tmp_path):
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _loop(_Tiny(particles.box, fail_at=1, error=RuntimeError("shape mismatch")), particles, tmp_path / "c.pt")


def test_gpu_advice_mentions_the_cpu():
    assert str(out_of_memory(torch.device("cuda", 0), 256)) == \
        "out of memory on cuda:0 at batch size 256: lower --batch-size (or use --device cpu)"


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/map.mrc"),
     "disk full writing /data/run/map.mrc: free space or choose another --out folder"),
    (ResourceError("disk full writing x: free space or choose another --out folder"),
     "disk full writing x: free space or choose another --out folder"),
    (torch.OutOfMemoryError("CUDA out of memory."), "out of memory on the device: use smaller inputs or a machine"),
    (MemoryError(), "out of memory on the device"),
])
def test_cli_prints_one_line_and_exits_1(monkeypatch, capsys, error, line):
    def fail(args):
        raise error

    monkeypatch.setattr(demo, "run", fail)
    assert main(["demo", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"cryospire demo: error: {line}")


def test_cli_reports_a_bug_in_one_line_with_its_log(monkeypatch, capsys):
    monkeypatch.setattr(demo, "run", lambda args: (_ for _ in ()).throw(KeyError("a bug")))
    monkeypatch.delenv("CRYOSPIRE_DEBUG", raising=False)
    assert main(["demo", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("cryospire demo: error: internal error (KeyError: 'a bug'); this is a cryospire bug")
    log = Path(err.split("please report it with ")[1].strip())
    assert log.parent == Path(tempfile.gettempdir()) and "KeyError: 'a bug'" in log.read_text()
    log.unlink()


def test_cli_does_not_hide_bugs_when_debugging(monkeypatch):
    monkeypatch.setattr(demo, "run", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    monkeypatch.setenv("CRYOSPIRE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug"):
        main(["demo", "--quiet"])


# -- run folders --------------------------------------------------------------------------------


@pytest.mark.parametrize("config, match", [
    ({"format_version": RUN_FORMAT_VERSION + 1, "cryospire": "9.0"}, "upgrade to open it"),
    ({"format_version": 0}, "train again into a new run folder"),
    ({"cryospire": "0.1"}, "an integer run-format version"),
    ({"format_version": "1"}, "an integer run-format version"),
    ([1, 2], "a JSON object"),
])
def test_run_folders_from_other_versions_are_clear_errors(tmp_path, config, match):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=match) as err:
        RunFolder(tmp_path).config()
    assert err.value.path == str(tmp_path / "config.json")


def test_current_version_round_trips_and_garbage_is_an_error(tmp_path):
    run = RunFolder(tmp_path)
    run.update_config(train={"a": 1})
    assert run.config()["format_version"] == RUN_FORMAT_VERSION
    (tmp_path / "config.json").write_bytes(b"\xff{not json")
    with pytest.raises(InputError, match="config"):
        run.config()


def test_lock_excludes_a_second_trainer_and_dies_with_its_holder(tmp_path):
    with RunFolder(tmp_path):
        with pytest.raises(InputError, match=f"held by process {os.getpid()}"):
            RunFolder(tmp_path).lock()
    code = ("import sys, time; from cryospire_core.pipeline.runfolder import RunFolder; "
            f"RunFolder({str(tmp_path)!r}).lock(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"held by process {holder.pid}"):
            RunFolder(tmp_path).lock()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    with RunFolder(tmp_path):  # a kill -9 frees the lock
        pass


def test_locking_removes_temporaries_a_killed_run_left(tmp_path):
    (tmp_path / "consensus").mkdir()
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # a process id no process has any more
    stale = [tmp_path / f"{TEMP_PREFIX}{gone.pid}-k2j3.json", tmp_path / "consensus" / f"{TEMP_PREFIX}{gone.pid}-a1b2.pt"]
    kept = [tmp_path / "config.json", tmp_path / "consensus" / "checkpoint.pt", tmp_path / "consensus" / "notes.tmp",
            tmp_path / ".config.k2j3.tmp.json"]
    for p in stale + kept:
        p.write_text("x")
    with RunFolder(tmp_path):
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
