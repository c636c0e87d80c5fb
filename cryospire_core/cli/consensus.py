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
    particles_from_args,
)
from cryospire_core.errors import InputError
from cryospire_core.models.consensus import ConsensusConfig, fit_consensus, seed_map
from cryospire_core.models.device import resolve_device
from cryospire_core.models.engine import LoopConfig
from cryospire_core.pipeline.runfolder import RunFolder, section_from_dict
from cryospire_core.progress import TerminalProgress
from cryospire_core.ranges import COUNT, LEARNING_RATE, MINUTES, SEED, Whole

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


def _config(args: argparse.Namespace, saved: dict, run_dir: RunFolder) -> ConsensusConfig:
    if args.resume and "consensus" in saved:
        cfg = section_from_dict(ConsensusConfig, saved["consensus"], run_dir.config_path, "consensus")
        # The resumed model must be seeded from the same map, and checkpoint as often, as the killed one.
        command = saved.get("consensus_command", {})
        args.map = args.map or command.get("map")
        args.checkpoint_minutes = command.get("checkpoint_minutes", args.checkpoint_minutes)
        if not (args.map is None or isinstance(args.map, str)) or not MINUTES.accepts(args.checkpoint_minutes):
            raise InputError(run_dir.config_path, "consensus_command", f"map: a file name, checkpoint_minutes: "
                             f"{MINUTES.what}", f"{args.map!r}, {args.checkpoint_minutes!r}")
        return cfg
    return ConsensusConfig(n_gaussians=args.n_gaussians, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           map_fit_steps=args.map_fit_steps, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    run_dir = RunFolder(args.out)
    saved = run_dir.config_for("consensus", args.resume)
    device = resolve_device(args.device)
    with run_dir:
        cfg = _config(args, saved, run_dir)
        ps = particles_from_args(args)
        stage = run_dir.stage_dir("consensus")
        print(f"{len(ps)} particles of {ps.box} px at {ps.apix:.4g} Å/px on {device}")
        bar = TerminalProgress(disable=args.quiet)
        t0 = time.perf_counter()
        try:
            init_map = seed_map(ps, stage, device, progress=bar, user_map=args.map)
            # Written once the particles and the seed map are known good: a refused command leaves
            # no config behind that would make the corrected one need --resume.
            if not (args.resume and "consensus" in saved):
                run_dir.update_config(consensus_command={"argv": sys.argv[1:], **vars(args)}, consensus=cfg)
            result = fit_consensus(ps, init_map, stage, cfg, device, progress=bar,
                                   checkpoint_minutes=args.checkpoint_minutes)
        finally:
            bar.close()
    print(f"consensus {result.status} in {time.perf_counter() - t0:.1f} s: {result.model.amplitudes.numel()} Gaussians; "
          f"wrote {stage / 'map.mrc'} and {stage / 'gaussians.npz'}")
    return 0
