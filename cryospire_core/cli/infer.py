"""``cryospire infer``: latents for particles the run has not seen, with the model frozen.

Example::

    cryospire infer RUN new/particles.star --out new_latents.npy
    cryospire render RUN --z new_latents.npy --out maps/      # maps at those latents

Writes OUT (N x zdim float32, rows in particle order) and OUT with ``.json`` (the options, the
run and the particles). A killed inference continues from ``OUT.checkpoint.pt`` when rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from cryospire_core.cli.options import (
    add_device_arg,
    add_overwrite_arg,
    add_particle_args,
    particles_from_args,
)
from cryospire_core.errors import InputError, require_finite
from cryospire_core.io.atomic import write_json, write_npy
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.models.device import resolve_device
from cryospire_core.models.engine import DIVERGED
from cryospire_core.models.infer import InferConfig, infer_latents
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.progress import TerminalProgress
from cryospire_core.ranges import COUNT, SEED


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder trained by `cryospire train`")
    add_particle_args(parser)
    parser.add_argument("--out", required=True, help="output latents (.npy)")
    add_overwrite_arg(parser, "latents (--out and its .json)")
    defaults = InferConfig()
    parser.add_argument("--epochs", type=COUNT, default=defaults.epochs,
                        help=f"refinement passes over the particles (default {defaults.epochs})")
    parser.add_argument("--candidates", type=COUNT, default=defaults.candidates,
                        help=f"starting latents tried per particle (default {defaults.candidates})")
    parser.add_argument("--batch-size", type=COUNT, default=defaults.batch_size,
                        help=f"particles per step (default {defaults.batch_size})")
    parser.add_argument("--seed", type=SEED, default=defaults.seed, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arg(parser)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".npy":
        raise InputError(out, "--out", "a .npy file name", out.suffix or "no suffix")
    check_new_outputs([out, out.with_suffix(".json")], args.overwrite)
    cfg = InferConfig(candidates=args.candidates, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    model = RunFolder(args.run).model()
    ps = particles_from_args(args)
    lattice = model.lattice
    same_view = np.isclose(ps.box * ps.apix, lattice.box * lattice.apix, rtol=1e-3)
    if same_view and ps.box > lattice.box and ps.box % 2 == 0 and lattice.box % 2 == 0:  # stage 2 at a smaller box
        ps = ps.at_box(lattice.box)
    if ps.box != lattice.box or not np.isclose(ps.apix, lattice.apix, rtol=1e-3):
        raise InputError(args.particles, "box and pixel size",
                         f"{lattice.box} px at {lattice.apix:.4g} Å like the run's particles (or a larger box of the same "
                         f"{lattice.box * lattice.apix:.4g} Å field of view)", f"{ps.box} px at {ps.apix:.4g} Å")
    device = resolve_device(args.device)
    bar = TerminalProgress(disable=args.quiet)
    t0 = time.perf_counter()
    try:
        latents, status = infer_latents(model.to(device), ps, cfg, out.with_name(out.name + ".checkpoint.pt"), device,
                                        progress=bar)
    finally:
        bar.close()
    if latents is None:
        print(f"infer {status}; rerun the same command to continue")
        return 1
    require_finite(latents, out, "latents", f"the refinement diverged: {DIVERGED}")
    write_npy(out, latents.astype(np.float32))
    write_json(out.with_suffix(".json"), {"run": str(Path(args.run).resolve()), "particles": str(args.particles),
                                          "n_particles": len(ps), "infer": dataclasses.asdict(cfg),
                                          "command": {"argv": sys.argv[1:], **vars(args)}})
    out.with_name(out.name + ".checkpoint.pt").unlink(missing_ok=True)
    print(f"infer finished in {time.perf_counter() - t0:.0f} s: {len(ps)} latents written to {out}")
    return 0
