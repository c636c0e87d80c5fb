"""Hostile command lines: the rule every ``cryospire`` command must follow, and the machinery
that checks it on generated cases.

A :class:`Case` is one thing a user can type (with the files it needs, made by ``setup``) and the
exact outcome it must have:

- :func:`error`: exit status 1 and one line on stderr, ``cryospire CMD: error: <file>: <field>:
  expected ..., found ...``, matching the case's pattern; no traceback;
- :func:`ok`: exit status 0, and the case's ``check`` accepts what was written (finite, non-empty
  maps, ...).

Whatever the outcome, no file the user made may change: every file under the workspace's
``data/`` and ``user/`` folders (and any file ``protected`` names, symlink targets included) is
hashed before and after the command. Anything else (another exit status, a second error line, a
traceback, a changed user file, more than ``TIMEOUT_S`` seconds) raises :class:`Unexpected`.

The workspace, made once per session by :func:`make_template` and copied for every case:

- ``data/``: a simulated 32 px hinge data set (``particles.star`` + ``.mrcs`` with ``gt/``, the
  same particles as ``particles.cs``, and cryoDRGN ``poses.pkl``/``ctf.pkl``);
- ``run/``: a run trained through every stage on ``data/particles.star`` (tiny: 1 epoch each);
- ``user/``: files a user keeps (``notes.txt``; ``.notes.tmp.txt``, a name like our temporaries).

Case lists live in the ``hostile_cli_*`` modules (one per category); ``CATEGORIES`` gathers them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import shutil
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .hostile_cases import Timeout, time_limit

N_IMAGES, BOX = 300, 32
TIMEOUT_S = 120
ERROR_LINE = re.compile(r"^cryospire [\w-]+: error: .+")


class Unexpected(AssertionError):
    """A case whose outcome is not the one it must have."""


@dataclass(frozen=True)
class Expect:
    kind: str  # "error" or "ok"
    pattern: str = ""
    check: Callable[[Path], None] | None = None


def error(pattern: str) -> Expect:
    """Exit 1 with one error line that matches ``pattern`` (``re.search``)."""
    return Expect("error", pattern)


def ok(check: Callable[[Path], None] | None = None) -> Expect:
    """Exit 0; ``check(workspace)`` raises AssertionError when the result is not sound."""
    return Expect("ok", check=check)


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    argv: Callable[[Path], list[str]]
    expect: Expect
    setup: Callable[[Path], None] | None = None
    protected: Callable[[Path], list[Path]] | None = None

    @property
    def id(self) -> str:
        return f"{self.category}: {self.name}"


# -- the workspace --------------------------------------------------------------------------------


def make_template(folder: Path) -> Path:
    """Build the valid workspace described in the module docstring in ``folder``."""
    import torch

    from cryospire_core.io.cryodrgn import write_ctf_pkl, write_poses_pkl
    from cryospire_core.io.cryosparc import write_cs
    from cryospire_core.io.load import load_particles
    from cryospire_core.pipeline.config import TrainConfig
    from cryospire_core.pipeline.runfolder import RunFolder
    from cryospire_core.pipeline.train import train
    from cryospire_core.sim.simulate import simulate, write_simulation

    folder.mkdir(parents=True, exist_ok=True)
    data = write_simulation(folder / "data", simulate("hinge", BOX, N_IMAGES, snr=10.0, seed=1))
    ps = load_particles(data / "particles.star", invert=False)
    write_cs(data / "particles.cs", ps)
    write_poses_pkl(data / "poses.pkl", ps)
    write_ctf_pkl(data / "ctf.pkl", ps)

    cfg = TrainConfig.for_profile("cpu")
    rep = dataclasses.replace
    cfg.consensus = rep(cfg.consensus, epochs=1, map_fit_steps=20, n_gaussians=128)
    cfg.discovery = rep(cfg.discovery, epochs=1, n_gaussians=128)
    cfg.hierarchical = rep(cfg.hierarchical, epochs=1, n_gaussians=256, hidden=32, depth=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = RunFolder(folder / "run")
        run.update_config(train=cfg, n_particles=len(ps))
        assert train(load_particles(data / "particles.star"), run, cfg, torch.device("cpu")) == "finished"
    finally:
        torch.set_num_threads(threads)

    user = folder / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    (user / ".notes.tmp.txt").write_text("a user's file whose name looks like a temporary\n")
    return folder


@contextlib.contextmanager
def workspace(template: Path, parent: Path) -> Iterator[Path]:
    """A fresh copy of the template (symlinks kept as links), removed afterwards even when a case
    made parts of it read-only."""
    ws = parent / f"case-{os.getpid()}-{np.random.default_rng().integers(1 << 40):x}"
    shutil.copytree(template, ws, symlinks=True)
    try:
        yield ws
    finally:
        for d, dirs, _ in os.walk(ws):
            for name in dirs:
                p = Path(d) / name
                if not p.is_symlink():
                    p.chmod(0o755)
        ws.chmod(0o755)
        shutil.rmtree(ws, ignore_errors=True)


def _snapshot(paths: list[Path]) -> dict[str, str]:
    """path -> what it is: a link target, a content hash, or 'folder'; symlink targets followed
    and recorded too, so a write through a link is seen."""
    seen: dict[str, str] = {}
    todo = list(paths)
    while todo:
        p = todo.pop()
        key = str(p)
        if key in seen:
            continue
        if p.is_symlink():
            seen[key] = "link -> " + os.readlink(p)
            todo.append(p.resolve())
        elif p.is_dir():
            seen[key] = "folder"
            todo.extend(p.iterdir())
        elif p.is_file():
            seen[key] = hashlib.sha1(p.read_bytes()).hexdigest()
        else:
            seen[key] = "missing"
    return seen


def _user_files(ws: Path, case: Case) -> list[Path]:
    extra = case.protected(ws) if case.protected else []
    return [ws / "data", ws / "user", *extra]


# -- running a case -------------------------------------------------------------------------------


def run_cli(argv: list[str], cwd: Path) -> tuple[int | str, str, str]:
    """Run ``cryospire ARGV`` in this process from ``cwd``: (exit status or 'traceback', stdout,
    stderr). A traceback is what Python would print for an exception escaping ``main``."""
    from cryospire_core.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - what escapes main is exactly what the rule forbids
            code = "traceback"
            err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue()


def run_case(case: Case, template: Path, parent: Path) -> str:
    """Apply ``case`` to a fresh workspace and return its outcome ('error' or 'ok'); raise
    :class:`Unexpected` when the outcome is not the case's."""
    with workspace(template, parent) as ws:
        if case.setup is not None:
            case.setup(ws)
        guarded = _user_files(ws, case)
        before = _snapshot(guarded)
        argv = case.argv(ws)
        try:
            with time_limit(TIMEOUT_S):
                code, out, err = run_cli(argv, ws)
        except Timeout:
            raise Unexpected(f"{case.id}: no outcome within {TIMEOUT_S} s\n  argv: {argv}") from None
        after = _snapshot(guarded)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        where = f"{case.id}\n  argv: {argv}\n  exit: {code}\n  stderr: {err[-3000:]!r}"
        if changed:
            raise Unexpected(f"user files changed: {changed}\n{where}")
        if "Traceback" in err or code == "traceback":
            raise Unexpected(f"a traceback\n{where}")
        if "internal error" in err:
            raise Unexpected(f"an internal error (a bug the safety net caught)\n{where}")
        if case.expect.kind == "error":
            lines = [ln for ln in err.splitlines() if "error:" in ln]
            if code != 1 or len(lines) != 1 or not ERROR_LINE.match(lines[0]):
                raise Unexpected(f"expected exit 1 and one error line\n{where}")
            if not re.search(case.expect.pattern, lines[0]):
                raise Unexpected(f"error line does not match {case.expect.pattern!r}\n{where}")
            return "error"
        if code != 0:
            raise Unexpected(f"expected exit 0\n{where}")
        if case.expect.check is not None:
            try:
                case.expect.check(ws)
            except AssertionError as exc:
                raise Unexpected(f"unsound result: {exc}\n{where}") from exc
        return "ok"


# -- checks of valid results ----------------------------------------------------------------------


def sound_map(path: Path) -> None:
    """An MRC map that exists, is finite and is not all zero."""
    from cryospire_core.io.mrc import read_map

    assert path.is_file(), f"{path} not written"
    m = read_map(path)
    assert np.isfinite(m.data).all(), f"{path} has non-finite voxels"
    assert np.abs(m.data).max() > 0, f"{path} is all zero"


def steps(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    """One setup (or check) that applies ``fns`` to the workspace in order."""
    def apply(ws: Path) -> None:
        for fn in fns:
            fn(ws)
    return apply


def unchanged(path: Path, text: str) -> Callable[[Path], None]:
    """A check that ``ws / path`` still holds ``text``."""
    def check(ws: Path) -> None:
        assert (ws / path).read_text() == text, f"{path} changed"
    return check


# -- the tally ------------------------------------------------------------------------------------


class Tally:
    """category -> cases, clear errors, valid results, unexpected outcomes."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, category: str, outcome: str) -> None:
        self.counts[(category, outcome)] += 1

    def table(self) -> str:
        cats = sorted({c for c, _ in self.counts})
        rows = [("category", "cases", "clear error", "valid result", "unexpected")]
        for c in cats:
            n = {o: self.counts[(c, o)] for o in ("error", "ok", "unexpected")}
            rows.append((c, str(sum(n.values())), str(n["error"]), str(n["ok"]), str(n["unexpected"])))
        tot = {o: sum(v for (c, oo), v in self.counts.items() if oo == o) for o in ("error", "ok", "unexpected")}
        rows.append(("total", str(sum(tot.values())), str(tot["error"]), str(tot["ok"]), str(tot["unexpected"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


def all_cases() -> list[Case]:
    """Every case of every category module."""
    from . import (
        hostile_cli_files,
        hostile_cli_inputs,
        hostile_cli_options,
        hostile_cli_runs,
    )

    cases = [c for m in (hostile_cli_files, hostile_cli_inputs, hostile_cli_options, hostile_cli_runs)
             for c in m.CASES]
    ids = Counter(c.id for c in cases)
    dup = [i for i, k in ids.items() if k > 1]
    assert not dup, f"duplicate case ids: {dup}"
    return cases
