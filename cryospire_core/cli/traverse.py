"""``cryospire traverse``: a traversal of a trained run's latent space as a map series.

Examples::

    cryospire traverse RUN --pc 1 -n 10 -o pc1/                    # PC1, 5th to 95th percentile
    cryospire traverse RUN --from 12 --to 873 --through-data -o path/  # particle 12 to 873 along the data
    cryospire traverse RUN --from-state 0 --to-state 3 --k 8 -o s0_s3/ # between two k-means states
    cryospire traverse RUN --pc 1 --box 256 -o pc1_256/             # 256^3 maps (any trained box)

Writes OUT/vol_000.mrc ... (ChimeraX: ``open OUT/vol_*.mrc vseries true``), OUT/latents.npy (the
steps' latents), OUT/parts.csv (each part's angle, shift and presence at each step, for a run
with parts), OUT/README.txt and OUT/open_in_chimerax.cxc (a ChimeraX script opening the series
at a molecule/solvent level): what the explorer dock's Traverse and Export MRC series write.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cryospire_core.analysis.explorer import Explorer, TraversalKind
from cryospire_core.cli.options import add_map_box_arg, add_overwrite_arg
from cryospire_core.errors import InputError
from cryospire_core.io.chimerax import SCRIPT_NAME
from cryospire_core.ranges import COUNT, SEED, Whole
from cryospire_core.services import traverse

INDEX = Whole(0)
STEPS = Whole(2)
PCS = {1: TraversalKind.PC1, 2: TraversalKind.PC2}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder trained by `cryospire train` (stage 1 or 2)")
    parser.add_argument("--pc", type=int, choices=tuple(PCS), help="along principal component 1 or 2 of the latents")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_particle", type=INDEX, metavar="I",
                       help="start at particle I's latent (0-based row of the run's particle file, as "
                            "`cryospire select` writes them)")
    start.add_argument("--from-state", type=INDEX, metavar="S", help="start at the centre of k-means state S")
    end = parser.add_mutually_exclusive_group()
    end.add_argument("--to", dest="to_particle", type=INDEX, metavar="J", help="end at particle J's latent")
    end.add_argument("--to-state", type=INDEX, metavar="T", help="end at the centre of k-means state T")
    parser.add_argument("--through-data", action="store_true",
                        help="from one end to the other along the particles (the shortest path in their "
                             "10-nearest-neighbour graph, resampled evenly) instead of a straight line")
    parser.add_argument("--k", type=COUNT, default=8,
                        help="k-means states for --from-state/--to-state (default 8; numbered as the explorer "
                             "and `cryospire analyze --ksample K` number them)")
    parser.add_argument("--seed", type=SEED, default=0, help="k-means seed (default 0)")
    parser.add_argument("-n", "--steps", type=STEPS, default=10, help="maps along the traversal (default 10)")
    parser.add_argument("-o", "--out", required=True, help="output folder for vol_000.mrc, ...")
    add_map_box_arg(parser)
    add_overwrite_arg(parser, "files in --out")


def _kind(args: argparse.Namespace) -> TraversalKind:
    """The traversal the options ask for; InputError naming the option for a mix that makes none."""
    start = args.from_particle is not None or args.from_state is not None
    end = args.to_particle is not None or args.to_state is not None
    if args.pc is not None:
        if start or end or args.through_data:
            raise InputError(None, "--pc", "either --pc or the two ends (--from/--from-state, --to/--to-state)",
                             "both")
        return PCS[args.pc]
    if not start or not end:
        missing = "--from (or --from-state)" if not start else "--to (or --to-state)"
        raise InputError(None, missing, "--pc N, or both ends of the traversal", "none")
    for option, state in (("--from-state", args.from_state), ("--to-state", args.to_state)):
        if state is not None and state >= args.k:
            raise InputError(None, option, f"a state in 0..{args.k - 1} (of --k {args.k})", state)
    return TraversalKind.GRAPH if args.through_data else TraversalKind.LINE


def _end(explorer: Explorer, args: argparse.Namespace, which: str, centres: np.ndarray | None) -> np.ndarray:
    """The latent (zdim,) of end ``which`` (``from`` or ``to``): a particle's, or a state centre."""
    particle, state = getattr(args, f"{which}_particle"), getattr(args, f"{which}_state")
    if particle is not None:
        return traverse.particle_latent(explorer, particle, f"--{which}")
    return centres[state]


def run(args: argparse.Namespace) -> int:
    kind = _kind(args)  # before anything is read
    out = Path(args.out)
    explorer = Explorer.from_run(args.run)
    if kind == TraversalKind.PC2 and explorer.zdim < 2:
        raise InputError(None, "--pc", "1 (the run's latents have 1 dimension)", 2)
    traverse.check_map_series(out, args.steps, latents=True, readouts=explorer.n_parts > 0, overwrite=args.overwrite)
    z0 = z1 = None
    if kind.between_ends:
        by_state = args.from_state is not None or args.to_state is not None
        centres = traverse.state_centres(explorer, args.k, args.seed, "--k") if by_state else None
        z0, z1 = _end(explorer, args, "from", centres), _end(explorer, args, "to", centres)
    try:
        traversal = explorer.traversal(kind, args.steps, z0, z1)
    except ValueError as exc:
        if kind != TraversalKind.GRAPH:
            raise
        # graph_path: the ends lie in separate clusters of the particles' kNN graph
        raise InputError(None, "--through-data", "ends joined by the particles' 10-nearest-neighbour graph (leave "
                         "out --through-data for a straight line)", "ends in separate clusters") from exc
    paths = traverse.export_traversal(explorer, traversal, out, args.overwrite, box=args.box)
    print(f"wrote {len(paths)} maps to {out}; ChimeraX: open {Path(out) / SCRIPT_NAME} "
          f"(or open {out}/vol_*.mrc vseries true)")
    return 0
