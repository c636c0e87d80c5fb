"""``cryospire demo``: the main job on built-in sample data, as the commands a user would type.

It simulates a small ``hinge`` data set (a rigid core and a domain swinging about a hinge through
100 states) with ground truth, reconstructs it by backprojection, trains a short CryoSPIRE run
(consensus, part discovery, parts, part-aware model), scores the maps against every ground-truth
state, and opens the run in napari with the plugin's docks (without a display: under
``xvfb-run``, a PNG screenshot of the window instead). Each step prints the command it runs,
and a finished step is not redone when the demo runs again.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cryospire_core.cli.options import add_device_arg, add_overwrite_arg
from cryospire_core.errors import InputError
from cryospire_core.io.outputs import check_writable_folder
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.ranges import BOX, COUNT, IMAGES, SNR
from cryospire_core.sim.simulate import check_output_folder


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="cryospire_demo", help="folder for everything the demo writes (default cryospire_demo)")
    parser.add_argument("--preset", default="hinge", help="simulator preset (default hinge)")
    parser.add_argument("--box", type=BOX, default=64, help="box size in pixels (default 64)")
    parser.add_argument("--n", type=IMAGES, default=5000, help="number of particle images (default 5000)")
    parser.add_argument("--snr", type=SNR, default=0.1, help="signal-to-noise ratio (default 0.1)")
    parser.add_argument("--epochs", type=COUNT, default=3, help="epochs of each training stage (default 3)")
    parser.add_argument("--viewer", choices=("auto", "window", "screenshot", "none"), default="auto",
                        help="auto (default): a napari window when there is a display, else a screenshot "
                             "(OUT/cryospire_demo.png, needs xvfb-run); none: skip")
    add_overwrite_arg(parser, "files of the same names in --out/data (the simulation) and the screenshot")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arg(parser)


def run(args: argparse.Namespace) -> int:
    from cryospire_core.cli.main import main

    out = Path(args.out)
    data, run = out / "data", RunFolder(out / "run")
    run_dir = run.root
    backprojection, scores = out / "backprojection.mrc", (out / "consensus_scores.json", out / "run_scores.json")
    quiet = ["--quiet"] if args.quiet else []
    replace = ["--overwrite"] if args.overwrite else []
    # (the file whose presence marks the step done, the command); a done step is not redone.
    steps = [
        (data / "metadata.json", ["simulate", "--preset", args.preset, "--box", str(args.box), "--n", str(args.n),
                                  "--snr", str(args.snr), "--seed", "0", "--out", str(data), "--device", args.device]
         + replace),
        (backprojection, ["backproject", str(data / "particles.star"), "--out", str(backprojection),
                          "--device", args.device]),
        (run.model_path("hierarchical"),
         ["train", str(data / "particles.star"), "--out", str(run_dir), "--epochs-consensus", str(args.epochs),
          "--epochs-1", str(args.epochs), "--epochs-2", str(args.epochs), "--device", args.device]
         + (["--resume"] if run.config_path.exists() else [])),
        (None, ["evaluate", "--gt", str(data / "gt"), "--map", str(backprojection), "--rows", "5"]),
        (scores[0], ["evaluate", "--gt", str(data / "gt"), "--map", str(run.map_path("consensus")),
                     "--rows", "5", "--out", str(scores[0])]),
        (scores[1], ["evaluate", "--gt", str(data / "gt"), "--run", str(run_dir), "--rows", "5",
                     "--out", str(scores[1])]),
    ]
    # A folder we cannot write to, or a user's file in the simulation's way, fails now rather than
    # after minutes of work (the other steps' outputs are their done markers: never replaced).
    check_writable_folder(out)
    if not (data / "metadata.json").exists():
        check_output_folder(data, args.overwrite)
    for done_marker, argv in steps:
        if done_marker is not None and done_marker.exists():
            print(f"\n[done already] cryospire {shlex.join(argv)}")
            continue
        argv = argv + (quiet if argv[0] != "evaluate" else [])
        print(f"\n$ cryospire {shlex.join(argv)}", flush=True)
        code = main(argv)
        if code:
            raise InputError(out, f"demo step '{argv[0]}'", "success", f"exit code {code}")
    print(f"\nDemo finished: data in {data}, backprojection in {out}, the trained run in {run_dir}.")
    return show(run_dir, out / "cryospire_demo.png", args.viewer, args.overwrite)


def show(run_dir: Path, png: Path, mode: str, replace: bool = False) -> int:
    """Open the run in napari in a separate process (this package never imports napari). An
    existing ``png`` is kept (a done step, or a file of the user's) unless ``replace``."""
    if mode == "none":
        return 0
    if mode == "auto":
        mode = "window" if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") else "screenshot"
    cmd = [sys.executable, "-m", "cryospire_napari.open", str(run_dir)]
    if mode == "screenshot":
        if os.path.lexists(png) and not replace:
            print(f"\n[done already] screenshot {png} (--overwrite takes it again)")
            return 0
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            xvfb = shutil.which("xvfb-run")
            if xvfb is None:
                print("no display and no xvfb-run: skipping the napari screenshot "
                      f"(open the run later with: napari {run_dir})")
                return 0
            cmd = [xvfb, "-a", *cmd]
        cmd += ["--screenshot", str(png)]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    return subprocess.run(cmd).returncode
