"""``cryospire downsample``: particles Fourier-cropped to a smaller box, as a new stack on disk.

Example: ``cryospire downsample J42_particles.cs --datadir /path/to/project --box 128 --out small``
writes small/particles.mrcs, small/particles.star and (for a .cs input) small/particles.cs.
Training does not need it (``cryospire train --box-consensus/--box-1/--box-2`` crop the images
as they are read, the same way); it is for a smaller stack to copy or to give another program.
"""

from __future__ import annotations

import argparse
import time

from cryospire_core.cli.options import (
    add_overwrite_arg,
    add_particle_args,
    particles_from_args,
)
from cryospire_core.progress import TerminalProgress
from cryospire_core.ranges import BOX
from cryospire_core.services import downsample


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_args(parser)
    parser.add_argument("--box", type=BOX, required=True,
                        help="the new box in pixels (even, smaller than the stack's); the pixel size grows by "
                             "stack box / B over the same field of view")
    parser.add_argument("--out", required=True,
                        help="output folder: particles.mrcs, particles.star (and particles.cs for a .cs input)")
    add_overwrite_arg(parser, "files in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    outputs = downsample.check_outputs(args.out, args.particles, args.overwrite)  # before anything is read
    ps = particles_from_args(args)
    t0 = time.perf_counter()
    bar = TerminalProgress(disable=args.quiet)
    try:
        written = downsample.downsample_particles(ps, args.box, outputs, progress=bar)
    finally:
        bar.close()
    print(f"{len(ps)} particles: {ps.box} px at {ps.apix:.4g} Å/px -> {written.box} px at {written.apix:.4g} Å/px "
          f"({time.perf_counter() - t0:.1f} s)")
    for path in outputs.files:
        print(f"wrote {path}")
    return 0
