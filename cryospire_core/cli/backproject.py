"""``cryospire backproject``: a map by direct Fourier inversion of particles with known poses.

Example: ``cryospire backproject sim64/particles.star --out consensus.mrc --halfmaps`` writes
consensus.mrc, consensus_half1.mrc and consensus_half2.mrc (voxel size set) and prints the
half-map FSC resolution.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cryospire_core.cli.options import (
    add_device_arg,
    add_overwrite_arg,
    add_particle_args,
    particles_from_args,
)
from cryospire_core.errors import InputError
from cryospire_core.imaging.fsc import freq_to_angstrom, freq_to_pixels, resolution
from cryospire_core.io.mrc import write_map
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.models.backproject import backproject
from cryospire_core.models.device import resolve_device
from cryospire_core.progress import TerminalProgress
from cryospire_core.ranges import COUNT, Real

WIENER = Real(0, 100)
PAD = Real(1, 4)


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_args(parser)
    parser.add_argument("--out", required=True, help="output map (.mrc)")
    add_overwrite_arg(parser, "maps (--out and its half maps)")
    parser.add_argument("--halfmaps", action="store_true",
                        help="also write <out>_half1.mrc and <out>_half2.mrc (even/odd particles) and print "
                             "their FSC resolution (0.143)")
    parser.add_argument("--wiener", type=WIENER, default=0.01,
                        help="Wiener constant as a fraction of the mean summed CTF^2 (default 0.01)")
    parser.add_argument("--pad", type=PAD, default=2.0, help="zero-padding factor of the images (default 2)")
    parser.add_argument("--batch-size", type=COUNT, default=None, help="images per batch (default: from a memory budget)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arg(parser)


def half_map_paths(out: Path) -> tuple[Path, Path]:
    """``map.mrc`` -> (``map_half1.mrc``, ``map_half2.mrc``)."""
    return tuple(out.with_name(f"{out.stem}_half{k}{out.suffix}") for k in (1, 2))


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in (".mrc", ".map"):
        raise InputError(out, "--out", "a .mrc or .map file name", out.suffix or "no extension")
    check_new_outputs([out, *(half_map_paths(out) if args.halfmaps else ())], args.overwrite)
    device = resolve_device(args.device)
    ps = particles_from_args(args)
    print(f"{len(ps)} particles of {ps.box} px at {ps.apix:.4g} Å/px "
          f"({'white, inverted' if ps.contrast < 0 else 'dark'} contrast) on {device}")
    t0 = time.perf_counter()
    bar = TerminalProgress(disable=args.quiet)
    try:
        rec = backproject(ps, device=device, batch_size=args.batch_size, halves=args.halfmaps,
                          wiener=args.wiener, pad=args.pad, progress=bar)
    finally:
        bar.close()
    write_map(out, rec.volume, ps.apix)
    print(f"wrote {out} ({time.perf_counter() - t0:.1f} s)")
    if args.halfmaps:
        for path, half in zip(half_map_paths(out), (rec.half1, rec.half2)):
            write_map(path, half, ps.apix)
            print(f"wrote {path}")
        res = resolution(rec.fsc_freqs, rec.fsc_curve, 0.143)
        print(f"half-map FSC=0.143 resolution (unmasked): {freq_to_angstrom(res, ps.apix):.2f} Å "
              f"({freq_to_pixels(res):.2f} px)")
    return 0
