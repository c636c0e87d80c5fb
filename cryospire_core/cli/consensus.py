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

from cryospire_core.cli.options import (
    add_device_arg,
    add_particle_args,
    particle_source,
)
from cryospire_core.models.consensus import ConsensusConfig
from cryospire_core.models.engine import LoopConfig
from cryospire_core.progress import TerminalProgress
from cryospire_core.ranges import COUNT, LEARNING_RATE, MINUTES, SEED, Whole
from cryospire_core.services.consensus import ConsensusRequest, consensus_run

_DEF = ConsensusConfig()
_LOOP = LoopConfig(epochs=_DEF.epochs)


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_args(parser)
    parser.add_argument("--out", required=True, help="run folder (created if missing)")
    parser.add_argument("--map", help="map to seed the Gaussians from (.mrc on the particles' box and pixel size); "
                                      "default: the particles' backprojection")
    parser.add_argument("--n-gaussians", type=Whole(0), default=_DEF.n_gaussians,
                        help="number of Gaussians; 0 = from the map's volume (default)")
    parser.add_argument("--epochs", type=COUNT, default=_DEF.epochs,
                        help=f"image-fitting epochs (default {_DEF.epochs})")
    parser.add_argument("--batch-size", type=COUNT, default=_LOOP.batch_size,
                        help=f"images per step (default {_LOOP.batch_size})")
    parser.add_argument("--lr", type=LEARNING_RATE, default=_DEF.lr,
                        help=f"Adam learning rate, pixels per step, at most 1 (default {_DEF.lr})")
    parser.add_argument("--map-fit-steps", type=Whole(0), default=_DEF.map_fit_steps,
                        help=f"3D pre-fit iterations against the seed map (default {_DEF.map_fit_steps})")
    parser.add_argument("--seed", type=SEED, default=_DEF.seed, help="random seed (default 0)")
    parser.add_argument("--checkpoint-minutes", type=MINUTES, default=_LOOP.checkpoint_minutes,
                        help=f"minutes between checkpoints inside an epoch (default {_LOOP.checkpoint_minutes})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arg(parser)


def request_from_args(args: argparse.Namespace) -> ConsensusRequest:
    """The consensus request of the command line."""
    cfg = ConsensusConfig(n_gaussians=args.n_gaussians, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          map_fit_steps=args.map_fit_steps, seed=args.seed)
    return ConsensusRequest(
        source=particle_source(args), out=args.out, map=args.map, config=cfg,
        checkpoint_minutes=args.checkpoint_minutes, resume=args.resume, device=args.device,
        command={"argv": sys.argv[1:], **vars(args)})


def run(args: argparse.Namespace) -> int:
    with consensus_run(request_from_args(args)) as job:
        print(job.summary())
        bar = TerminalProgress(disable=args.quiet)
        t0 = time.perf_counter()
        try:
            result = job.fit(progress=bar)
        finally:
            bar.close()
    print(f"consensus {result.status} in {time.perf_counter() - t0:.1f} s: {result.model.amplitudes.numel()} Gaussians; "
          f"wrote {job.run.map_path('consensus')} and {job.run.gaussians_path}")
    return 0
