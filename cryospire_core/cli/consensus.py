"""``cryospire consensus``: stage 0, a homogeneous Gaussian-mixture map fitted to the particles.

Example: ``cryospire consensus sim/particles.star --out RUN`` backprojects the particles, seeds
Gaussians where that map is dense and refines them against the images. RUN/consensus/ then holds
backprojection.mrc, gaussians.npz (centres Å, widths Å, amplitudes), map.mrc and history.json.
A killed run continues with the same command plus ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..backproject import backproject
from ..consensus import ConsensusConfig, fit_consensus
from ..device import add_device_arg, resolve_device
from ..engine import LoopConfig
from ..errors import InputError
from ..load import add_particle_args, particles_from_args
from ..mrc import read_map, write_map
from ..progress import TerminalProgress
from ..runfolder import RunFolder

_DEF = ConsensusConfig()
_LOOP = LoopConfig(epochs=_DEF.epochs)


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_args(parser)
    parser.add_argument("--out", required=True, help="run folder (created if missing)")
    parser.add_argument("--map", help="map to seed the Gaussians from (.mrc on the particles' box and pixel size); "
                                      "default: the particles' backprojection")
    parser.add_argument("--n-gaussians", type=int, default=_DEF.n_gaussians,
                        help="number of Gaussians; 0 = from the map's volume (default)")
    parser.add_argument("--epochs", type=int, default=_DEF.epochs, help=f"image-fitting epochs (default {_DEF.epochs})")
    parser.add_argument("--batch-size", type=int, default=_LOOP.batch_size, help=f"images per step (default {_LOOP.batch_size})")
    parser.add_argument("--lr", type=float, default=_DEF.lr, help=f"Adam learning rate, pixels per step (default {_DEF.lr})")
    parser.add_argument("--map-fit-steps", type=int, default=_DEF.map_fit_steps,
                        help=f"3D pre-fit iterations against the seed map (default {_DEF.map_fit_steps})")
    parser.add_argument("--seed", type=int, default=_DEF.seed, help="random seed (default 0)")
    parser.add_argument("--checkpoint-minutes", type=float, default=_LOOP.checkpoint_minutes,
                        help=f"minutes between checkpoints inside an epoch (default {_LOOP.checkpoint_minutes})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arg(parser)


def _configs(args: argparse.Namespace, saved: dict) -> tuple[ConsensusConfig, LoopConfig]:
    if args.resume and "consensus" in saved:
        return ConsensusConfig(**saved["consensus"]), LoopConfig(**saved["consensus_loop"])
    cfg = ConsensusConfig(n_gaussians=args.n_gaussians, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          map_fit_steps=args.map_fit_steps, seed=args.seed)
    loop = LoopConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                      checkpoint_minutes=args.checkpoint_minutes)
    return cfg, loop


def run(args: argparse.Namespace) -> int:
    run_dir = RunFolder(args.out)
    saved = run_dir.config_for("consensus", args.resume)
    device = resolve_device(args.device)
    with run_dir:
        cfg, loop = _configs(args, saved)
        if not (args.resume and "consensus" in saved):
            run_dir.update_config(consensus_command={"argv": sys.argv[1:], **vars(args)}, consensus=cfg,
                                  consensus_loop=loop)
        ps = particles_from_args(args)
        stage = run_dir.stage_dir("consensus")
        print(f"{len(ps)} particles of {ps.box} px at {ps.apix:.4g} Å/px on {device}")
        bar = TerminalProgress(disable=args.quiet)
        init_path = stage / "backprojection.mrc"
        if args.map:
            m = read_map(args.map)
            if m.data.shape != (ps.box,) * 3 or not np.isclose(m.apix, ps.apix, rtol=1e-3):
                raise InputError(args.map, "map grid", f"{ps.box}^3 voxels of {ps.apix:.4g} Å like the particles",
                                 f"{m.data.shape} of {m.apix:.4g} Å")
            init_map = m.data
        elif init_path.exists():
            init_map = read_map(init_path).data
        else:
            init_map = backproject(ps, device=device, progress=bar).volume
            write_map(init_path, init_map, ps.apix)
        t0 = time.perf_counter()
        try:
            result = fit_consensus(ps, init_map, stage, cfg, loop, device, progress=bar)
        finally:
            bar.close()
    print(f"consensus {result.status} in {time.perf_counter() - t0:.1f} s: {result.model.amplitudes.numel()} Gaussians; "
          f"wrote {stage / 'map.mrc'} and {stage / 'gaussians.npz'}")
    return 0
