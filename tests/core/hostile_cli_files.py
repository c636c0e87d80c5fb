"""Hostile command-line cases: files (see ``hostile_cli``)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .hostile_cli import Case, error, ok, sound_map, steps

CASES: list[Case] = []

# "user files": every command that writes refuses, before computing anything, to replace a file
# it did not write (unless --overwrite), to write through a symbolic link, into a file posing as
# a folder or into a read-only folder; a run folder never follows a link where it keeps its own
# files, and its cleanup deletes only cryospire's own stale temporaries. Results go to out/, so
# the guard over data/ and user/ sees any write through a link into them.

IN_USE = r"--out: expected a file name not in use \(or --overwrite\), found "
A_FILE = IN_USE + "an existing file"
A_LINK = IN_USE + "a symbolic link to .*user/notes.txt"
LINKED_FOLDER = r"--out: expected a regular folder cryospire made, found a symbolic link to .*user"
NOT_A_FOLDER = r"user/notes.txt: (--out|run folder): expected a folder \(or a name not in use\), found an existing file"
READ_ONLY = r"out/ro: (--out|run folder): expected a folder you can write to, found a read-only folder"
RUN_LINK = r"run folder: expected a regular (file|folder) cryospire made, found a symbolic link to .*user"
CAT = "user files"




def _file(rel: str, text: str = "the user's file\n") -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    return make


def _link(rel: str, target: str = "user/notes.txt") -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).symlink_to(ws / target)
    return make


def _folder(rel: str) -> Callable[[Path], None]:
    return lambda ws: (ws / rel).mkdir(parents=True)


def _read_only(rel: str = "out/ro") -> Callable[[Path], None]:
    def make(ws: Path) -> None:
        (ws / rel).mkdir(parents=True)
        (ws / rel).chmod(0o555)
    return make


def _z_file(ws: Path) -> None:
    np.savetxt(ws / "user" / "z.txt", np.load(ws / "run" / "latents.npy")[:2])


def _two_state_gt(ws: Path) -> None:
    """out/gt: the first two states of data/gt and its mask (scoring 100 states takes seconds)."""
    (ws / "out" / "gt").mkdir(parents=True)
    for name in ("vol_000.mrc", "vol_001.mrc", "mask.mrc"):
        shutil.copy(ws / "data" / "gt" / name, ws / "out" / "gt" / name)


def _moved_to_user(rel: str) -> Callable[[Path], None]:
    """Move the run's ``rel`` into user/ and leave a link to it in its place."""
    def make(ws: Path) -> None:
        shutil.move(ws / "run" / rel, ws / "user" / Path(rel).name)
        (ws / "run" / rel).symlink_to(ws / "user" / Path(rel).name)
    return make




def _ours(rel: str) -> Callable[[Path], None]:
    """``rel`` is now a regular file (a link there was replaced, not written through)."""
    def check(ws: Path) -> None:
        assert not (ws / rel).is_symlink() and (ws / rel).is_file(), f"{rel} is not a regular file"
    return check


def _gone(rel: str) -> Callable[[Path], None]:
    def check(ws: Path) -> None:
        assert not os.path.lexists(ws / rel), f"{rel} still there"
    return check


def _map(rel: str) -> Callable[[Path], None]:
    return lambda ws: sound_map(ws / rel)


def _json(rel: str) -> Callable[[Path], None]:
    return lambda ws: json.loads((ws / rel).read_text())


def _run_user_tmp_files(ws: Path) -> list[Path]:
    return [ws / "run" / ".notes.tmp.txt", ws / "run" / "consensus" / ".notes.tmp.txt",
            ws / "run" / "consensus" / ".cryospire-tmp-notes.txt"]


SIM = ["simulate", "--preset", "homogeneous", "--box", "16", "--n", "8", "--snr", "1", "--quiet", "--out"]
CASES += [
    Case(CAT, "simulate over a user's particles.star", lambda ws: SIM + ["out/sim"],
         error("out/sim/particles.star: " + A_FILE), setup=_file("out/sim/particles.star")),
    Case(CAT, "simulate over a user's gt/vol_005.mrc (it would be deleted)", lambda ws: SIM + ["out/sim"],
         error("out/sim/gt/vol_005.mrc: " + A_FILE), setup=_file("out/sim/gt/vol_005.mrc")),
    Case(CAT, "simulate into a finished simulation", lambda ws: SIM + ["out/sim"],
         error("out/sim/metadata.json: " + A_FILE), setup=_file("out/sim/metadata.json", "{}\n")),
    Case(CAT, "simulate with poses.pkl a link to a user file", lambda ws: SIM + ["out/sim"],
         error("out/sim/poses.pkl: " + A_LINK), setup=_link("out/sim/poses.pkl")),
    Case(CAT, "simulate --overwrite replaces the poses.pkl link, not its target",
         lambda ws: SIM + ["out/sim", "--overwrite"],
         ok(steps(_ours("out/sim/poses.pkl"), _map("out/sim/gt/vol_000.mrc"))), setup=_link("out/sim/poses.pkl")),
    Case(CAT, "simulate --overwrite deletes an old simulation's extra state maps",
         lambda ws: SIM + ["out/sim", "--overwrite"],
         ok(steps(_gone("out/sim/gt/vol_005.mrc"), _map("out/sim/gt/vol_000.mrc"))),
         setup=_file("out/sim/gt/vol_005.mrc")),
    Case(CAT, "simulate with gt/ a link to a user folder", lambda ws: SIM + ["out/sim"],
         error("out/sim/gt: " + LINKED_FOLDER), setup=_link("out/sim/gt", "user")),
    Case(CAT, "simulate --overwrite with gt/ a link to a user folder", lambda ws: SIM + ["out/sim", "--overwrite"],
         error("out/sim/gt: " + LINKED_FOLDER), setup=_link("out/sim/gt", "user")),
    Case(CAT, "simulate --out a user's file", lambda ws: SIM + ["user/notes.txt"], error(NOT_A_FOLDER)),
    Case(CAT, "simulate into a read-only folder", lambda ws: SIM + ["out/ro/sim"], error(READ_ONLY),
         setup=_read_only()),
]

RENDER = ["render", "run", "--z", "user/z.txt", "--out"]
CASES += [
    Case(CAT, "render over a user's vol_001.mrc", lambda ws: RENDER + ["out/maps"],
         error("out/maps/vol_001.mrc: " + A_FILE), setup=steps(_z_file, _file("out/maps/vol_001.mrc"))),
    Case(CAT, "render with vol_000.mrc a link to a user file", lambda ws: RENDER + ["out/maps"],
         error("out/maps/vol_000.mrc: " + A_LINK), setup=steps(_z_file, _link("out/maps/vol_000.mrc"))),
    Case(CAT, "render --overwrite replaces the vol_000.mrc link, not its target",
         lambda ws: RENDER + ["out/maps", "--overwrite"],
         ok(steps(_ours("out/maps/vol_000.mrc"), _map("out/maps/vol_000.mrc"), _map("out/maps/vol_001.mrc"))),
         setup=steps(_z_file, _link("out/maps/vol_000.mrc"))),
    Case(CAT, "render --overwrite with a folder named vol_000.mrc", lambda ws: RENDER + ["out/maps", "--overwrite"],
         error(r"out/maps/vol_000.mrc: --out: expected a file name \(not a folder\), found an existing folder"),
         setup=steps(_z_file, _folder("out/maps/vol_000.mrc"))),
    Case(CAT, "render --out a link to a user folder holding vol_000.mrc", lambda ws: RENDER + ["out/maps"],
         error("out/maps/vol_000.mrc: " + A_FILE),
         setup=steps(_z_file, _file("user/vol_000.mrc"), _link("out/maps", "user"))),
    Case(CAT, "render --out a user's file", lambda ws: RENDER + ["user/notes.txt"], error(NOT_A_FOLDER),
         setup=_z_file),
    Case(CAT, "render into a read-only folder", lambda ws: RENDER + ["out/ro"], error(READ_ONLY),
         setup=steps(_z_file, _read_only())),
]

BP = ["backproject", "data/particles.star", "--quiet", "--out"]
CASES += [
    Case(CAT, "backproject over a user's map", lambda ws: BP + ["out/bp.mrc"],
         error("out/bp.mrc: " + A_FILE), setup=_file("out/bp.mrc")),
    Case(CAT, "backproject --halfmaps over a user's half map", lambda ws: BP + ["out/bp.mrc", "--halfmaps"],
         error("out/bp_half2.mrc: " + A_FILE), setup=_file("out/bp_half2.mrc")),
    Case(CAT, "backproject with --out a link to a user file", lambda ws: BP + ["out/bp.mrc"],
         error("out/bp.mrc: " + A_LINK), setup=_link("out/bp.mrc")),
    Case(CAT, "backproject --overwrite replaces the --out link, not its target",
         lambda ws: BP + ["out/bp.mrc", "--overwrite"], ok(steps(_ours("out/bp.mrc"), _map("out/bp.mrc"))),
         setup=_link("out/bp.mrc")),
    Case(CAT, "backproject into a user's file posing as a folder", lambda ws: BP + ["user/notes.txt/bp.mrc"],
         error(NOT_A_FOLDER)),
    Case(CAT, "backproject into a read-only folder", lambda ws: BP + ["out/ro/bp.mrc"], error(READ_ONLY),
         setup=_read_only()),
]

ANALYZE = ["analyze", "run", "--ksample", "2", "--pc-steps", "2"]
CASES += [
    Case(CAT, "analyze over a user's state_001.mrc", lambda ws: ANALYZE + ["--out", "out/an"],
         error("out/an/state_001.mrc: " + A_FILE), setup=_file("out/an/state_001.mrc")),
    Case(CAT, "analyze into an earlier analysis", lambda ws: ANALYZE + ["--out", "out/an"],
         error("out/an/pca.npz: " + A_FILE), setup=_file("out/an/pca.npz")),
    Case(CAT, "analyze with pc1/ a link to a user folder", lambda ws: ANALYZE + ["--out", "out/an"],
         error("out/an/pc1: " + LINKED_FOLDER), setup=_link("out/an/pc1", "user")),
    Case(CAT, "analyze with RUN/analysis a link to a user folder", lambda ws: ANALYZE,
         error("run/analysis: " + LINKED_FOLDER), setup=_link("run/analysis", "user")),
    Case(CAT, "analyze over a user's file in RUN/analysis", lambda ws: ANALYZE,
         error("run/analysis/kmeans_2.npz: " + A_FILE), setup=_file("run/analysis/kmeans_2.npz")),
    # (analyze --overwrite succeeding is tested in test_analysis: UMAP's first call compiles for ~40 s)
    Case(CAT, "analyze --overwrite with parts/ a link to a user folder",
         lambda ws: ANALYZE + ["--out", "out/an", "--overwrite"],
         error("out/an/parts: " + LINKED_FOLDER), setup=_link("out/an/parts", "user")),
    Case(CAT, "analyze into a read-only folder", lambda ws: ANALYZE + ["--out", "out/ro/an"], error(READ_ONLY),
         setup=_read_only()),
]

INFER = ["infer", "run", "data/particles.star", "--epochs", "1", "--quiet", "--out"]
CASES += [
    Case(CAT, "infer over a user's .npy", lambda ws: INFER + ["out/z.npy"],
         error("out/z.npy: " + A_FILE), setup=_file("out/z.npy")),
    Case(CAT, "infer over a user's .json beside --out", lambda ws: INFER + ["out/z.npy"],
         error("out/z.json: " + A_FILE), setup=_file("out/z.json")),
    Case(CAT, "infer with --out a link to a user file", lambda ws: INFER + ["out/z.npy"],
         error("out/z.npy: " + A_LINK), setup=_link("out/z.npy")),
    Case(CAT, "infer into a user's file posing as a folder", lambda ws: INFER + ["user/notes.txt/z.npy"],
         error(NOT_A_FOLDER)),
]

EVALUATE = ["evaluate", "--gt", "data/gt", "--map", "data/gt/vol_000.mrc", "--rows", "1", "--out"]
CASES += [
    Case(CAT, "evaluate over a user's scores file", lambda ws: EVALUATE + ["out/scores.json"],
         error("out/scores.json: " + A_FILE), setup=_file("out/scores.json")),
    Case(CAT, "evaluate --out a user's file", lambda ws: EVALUATE + ["user/notes.txt"],
         error("user/notes.txt: " + A_FILE)),
    Case(CAT, "evaluate --overwrite replaces the --out link, not its target",
         lambda ws: ["evaluate", "--gt", "out/gt", "--map", "out/gt/vol_000.mrc", "--out", "out/scores.json",
                     "--overwrite"],
         ok(steps(_ours("out/scores.json"), _json("out/scores.json"))),
         setup=steps(_two_state_gt, _link("out/scores.json"))),
    Case(CAT, "evaluate into a read-only folder", lambda ws: EVALUATE + ["out/ro/scores.json"], error(READ_ONLY),
         setup=_read_only()),
]

TRAIN = ["train", "data/particles.star", "--quiet", "--out"]
CASES += [
    Case(CAT, "train --resume with run.lock a link to a user file", lambda ws: TRAIN + ["run", "--resume"],
         error("run/run.lock: " + RUN_LINK), setup=_link("run/run.lock")),
    Case(CAT, "consensus --resume with run.lock a link to a user file",
         lambda ws: ["consensus", "data/particles.star", "--out", "run", "--resume", "--quiet"],
         error("run/run.lock: " + RUN_LINK), setup=_link("run/run.lock")),
    Case(CAT, "train --resume with config.json a link into user/", lambda ws: TRAIN + ["run", "--resume"],
         error("run/config.json: " + RUN_LINK), setup=_moved_to_user("config.json")),
    Case(CAT, "train --resume with a stage folder a link into user/", lambda ws: TRAIN + ["run", "--resume"],
         error("run/hierarchical: " + RUN_LINK), setup=_moved_to_user("hierarchical")),
    Case(CAT, "train --out a user's file", lambda ws: TRAIN + ["user/notes.txt"], error(NOT_A_FOLDER)),
    Case(CAT, "train into a read-only folder", lambda ws: TRAIN + ["out/ro/run"], error(READ_ONLY),
         setup=_read_only()),
    Case(CAT, "train --resume of a finished run keeps .tmp-like user files, removes a stale temporary",
         lambda ws: TRAIN + ["run", "--resume"], ok(_gone("run/consensus/.cryospire-tmp-1999999999-ab.pt")),
         setup=steps(_file("run/.notes.tmp.txt"), _file("run/consensus/.notes.tmp.txt"),
                      _file("run/consensus/.cryospire-tmp-notes.txt"),
                      _file("run/consensus/.cryospire-tmp-1999999999-ab.pt")),
         protected=_run_user_tmp_files),
]

CASES += [
    Case(CAT, "demo over a user's particles.star in OUT/data",
         lambda ws: ["demo", "--out", "out/demo", "--n", "20", "--box", "16", "--viewer", "none", "--quiet"],
         error("out/demo/data/particles.star: " + A_FILE), setup=_file("out/demo/data/particles.star")),
    Case(CAT, "demo --out a user's file",
         lambda ws: ["demo", "--out", "user/notes.txt", "--n", "20", "--box", "16", "--viewer", "none", "--quiet"],
         error(NOT_A_FOLDER)),
]

NOT_A_RUN = r"run folder: expected a new or empty folder, or a run folder cryospire made .*already in it"
CASES += [
    Case(CAT, f"{cmd} --out a folder that is not a run but holds a user's {name}",
         lambda ws, cmd=cmd: [cmd, "data/particles.star", "--out", "user", "--quiet"], error(NOT_A_RUN),
         setup=_file(f"user/{name}"))
    for cmd in ("train", "consensus") for name in ("consensus/notes.txt", "latents.npy")
]

# Names the file system cannot hold: refused before any compute, naming --out (red-team additions).
CASES += [
    Case(CAT, "backproject --out a 304-byte file name", lambda ws: BP + ["out/" + "b" * 300 + ".mrc"],
         error(r"out/b+\.mrc: --out: expected file and folder names of at most 255 bytes, found a name of 304 bytes")),
    Case(CAT, "render --out a path of 5000 bytes", lambda ws: RENDER + ["/".join(["a" * 200] * 25)],
         error(r"^cryospire render: error: a+\.\.\.a+/vol_000\.mrc: --out: expected a path of at most 4032 bytes, found \d+ bytes"),
         setup=_z_file),
]
