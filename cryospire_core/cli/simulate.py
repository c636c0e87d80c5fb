"""``cryospire simulate``: a particle data set with ground truth from a procedural phantom
(``--preset``) or an atomic model (``--structure`` with an optional ``--spec`` of motions).

Example: ``cryospire simulate --preset hinge --box 64 --n 20000 --snr 0.05 --seed 0 --out sim64``
writes particles.mrcs/.star, poses.pkl, ctf.pkl, gt/ (maps per state, labels, mask, domains,
beads) and metadata.json into ``sim64``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cryospire_core.cli.options import add_device_arg, add_overwrite_arg
from cryospire_core.errors import InputError
from cryospire_core.models.device import resolve_device
from cryospire_core.progress import TerminalProgress
from cryospire_core.ranges import APIX, BOX, COUNT, IMAGES, SEED, SNR, Whole
from cryospire_core.sim.phantoms import PRESETS
from cryospire_core.sim.simulate import (
    COLOURED_F0,
    COLOURED_FLOOR,
    DEFAULT_FOV_A,
    NOISE_SPECTRA,
    check_output_folder,
    simulate,
    write_simulation,
)
from cryospire_core.sim.structure import phantom_from_structure


def add_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=PRESETS,
                        help="homogeneous; hinge (IgG-1D-like); random-hinge (IgG-RL-like); "
                             "assembly (Ribosembly-like); mixed (a subunit on/off x a moving domain)")
    source.add_argument("--structure", help="an atomic model (.pdb/.cif) to simulate instead of a preset")
    parser.add_argument("--box", type=BOX, required=True, help="image size in pixels (even)")
    parser.add_argument("--n", type=IMAGES, required=True, help="number of images")
    parser.add_argument("--snr", type=SNR, required=True,
                        help="signal-to-noise ratio: mean clean-image variance over the box / noise variance "
                             "(inf: no noise)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of poses, CTFs, states and noise (default 0)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--apix", type=APIX, default=None,
                        help=f"pixel size in Å (default {DEFAULT_FOV_A:g} / box: CryoBench's field of view)")
    parser.add_argument("--oversample", type=Whole(1, 4), default=2,
                        help="project on a lattice this many times finer, then Fourier-crop (default 2; 1 allowed)")
    parser.add_argument("--contrast", choices=("white", "dark"), default="white",
                        help="white (default): particles written bright, as after RELION's contrast inversion")
    parser.add_argument("--spec", help="with --structure: JSON of groups (chains or residue ranges), their motions, "
                                       "presence states and flexible loops; see cryospire_core/sim/structure.py")
    parser.add_argument("--phantom-seed", type=SEED, default=0, help="seed of the molecule itself (default 0)")
    parser.add_argument("--noise-spectrum", choices=NOISE_SPECTRA, default="white",
                        help=f"white (default) or coloured: noise power ∝ 1 / (1 + (f / {COLOURED_F0:g})^2) + "
                             f"{COLOURED_FLOOR:g} (f in cycles/pixel), at the same variance per pixel (the SNR's)")
    parser.add_argument("--clutter", type=Whole(0, 8), default=0,
                        help="neighbouring particles per image (default 0): random copies of the molecule centred "
                             "just outside the box, overlapping its edges, filtered by the image's CTF")
    parser.add_argument("--batch-size", type=COUNT, default=None, help="images per batch (default: from a memory budget)")
    add_overwrite_arg(parser, "files in --out (an earlier simulation's, or any file of the same name)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arg(parser)


def _read_spec(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        spec = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(path, "--spec", "a readable JSON file", exc.strerror) from exc
    except json.JSONDecodeError as exc:
        raise InputError(path, "JSON", "valid JSON", f"{exc.msg} at line {exc.lineno}") from exc
    if not isinstance(spec, dict):
        raise InputError(path, "JSON", "an object {...}", type(spec).__name__)
    return spec


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    check_output_folder(args.out, args.overwrite)  # before any compute; write_simulation checks again
    phantom = None
    if args.structure:
        apix = args.apix if args.apix is not None else DEFAULT_FOV_A / args.box
        spec = _read_spec(args.spec)
        phantom = phantom_from_structure(args.structure, args.box, apix, spec, args.spec, args.phantom_seed)
    elif args.spec:
        raise InputError(args.spec, "--spec", "--structure (a spec describes an atomic model's motions)", "--preset")
    bar = TerminalProgress(disable=args.quiet)
    try:
        result = simulate(
            args.preset or "structure", args.box, args.n, args.snr, seed=args.seed, apix=args.apix,
            oversample=args.oversample, contrast=args.contrast, phantom_seed=args.phantom_seed,
            device=resolve_device(args.device), phantom=phantom, progress=bar,
            noise_spectrum=args.noise_spectrum, clutter=args.clutter,
        )
        out = write_simulation(args.out, result, progress=bar, batch_size=args.batch_size, overwrite=args.overwrite)
    finally:
        bar.close()
    ph = result.phantom
    print(f"{args.preset or ph.name}: {len(result)} images of {ph.box} px at {ph.apix:.3f} Å/px, {ph.n_states} states, "
          f"{ph.n_beads} beads, noise std {result.noise_std:.4g}, {result.contrast} particles -> {out} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0
