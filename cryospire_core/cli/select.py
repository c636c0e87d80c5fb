"""``cryospire select``: a subset of a trained run's particles as a .star / .cs file and an index file.

Examples::

    cryospire select RUN --states 0,2 --k 8 -o keep.star              # k-means states 0 and 2 of 8
    cryospire select RUN --polygon=-2,-1,3,-1,3,2,-2,2 -o keep.cs      # inside a polygon on PC1/PC2
    cryospire select RUN --latent-box=-1,1,-5,5,-5,5,-5,5 -o keep.star  # z1 in [-1, 1], z2..z4 in [-5, 5]
    cryospire select RUN --indices keep.txt -o keep.star              # an index file as a subset

Writes OUT (every column of the run's particle file kept, image paths pointing at the original
stacks) and OUT's ``<stem>_indices.txt`` (0-based rows of the particle file): what the explorer
dock's Write selection writes. ``cryospire train --select`` and ``cryospire branch --select``
read either. States are numbered as the explorer and ``cryospire analyze --ksample K`` number
them; PC1/PC2 are the explorer's PCA axes (and those of ``analyze``'s latent_pca.png).
"""

from __future__ import annotations

import argparse

import numpy as np

from cryospire_core.analysis.explorer import (
    EmbeddingMethod,
    Explorer,
    points_in_polygon,
)
from cryospire_core.cli.options import add_overwrite_arg
from cryospire_core.errors import InputError
from cryospire_core.io.load import load_particles
from cryospire_core.io.selection import read_selection
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.ranges import COUNT, SEED, Numbers, Real, Whole
from cryospire_core.services import select

STATES = Numbers(Whole(0), "comma-separated k-means states, each a whole number >= 0")
POLYGON = Numbers(Real(), "comma-separated x,y vertices on PC1/PC2 (at least 3; finite numbers)", least=6, group=2)
BOUNDS = Numbers(Real(), "comma-separated lower,upper bounds, one pair per latent dimension (finite numbers)",
                 least=2, group=2)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder trained by `cryospire train` (stage 1 or 2)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--states", type=STATES, help="the particles of these k-means states (0-based, of --k)")
    which.add_argument("--indices", help="the particles an index file (.txt/.npy, 0-based) or a .star/.cs subset "
                                         "lists (as `cryospire train --select` reads it)")
    which.add_argument("--polygon", type=POLYGON,
                       help="the particles inside this polygon of PC1,PC2 scores: x1,y1,x2,y2,... (write "
                            "--polygon=-1,... when the first number is negative)")
    which.add_argument("--latent-box", type=BOUNDS,
                       help="the particles with lo <= z <= hi in every latent dimension: lo1,hi1,lo2,hi2,...")
    parser.add_argument("--k", type=COUNT, default=8, help="k-means states for --states (default 8)")
    parser.add_argument("--seed", type=SEED, default=0, help="k-means seed (default 0)")
    parser.add_argument("--particles",
                        help="the particle file the run was trained on (default: as RUN/config.json records it)")
    parser.add_argument("-o", "--out", required=True, help="output subset: a .star or .cs file name")
    add_overwrite_arg(parser, "--out and its _indices.txt")


def run(args: argparse.Namespace) -> int:
    select.check_selection_file(args.out, args.overwrite, "--overwrite")  # before anything is read
    explorer = Explorer.from_run(args.run, particles=args.particles)
    particles = explorer.particles
    if particles is None:
        raise RunFolder(args.run).missing_input("particles", "give it with --particles")
    if args.indices is not None:
        rows = read_selection(args.indices, load_particles(particles, invert=False))
    else:
        rows = explorer.particle_indices(_mask(explorer, args))
    subset, index = select.write_selection(args.out, rows, particles, args.overwrite, "--overwrite")
    print(f"wrote {len(rows)} particles to {subset} and {index.name}")
    return 0


def _mask(explorer: Explorer, args: argparse.Namespace) -> np.ndarray:
    """(N,) bool over the run's explored particles: by --states, --polygon or --latent-box;
    InputError naming the option when it selects none."""
    if args.states is not None:
        option, mask = "--states", select.state_mask(explorer, args.states, args.k, args.seed, "--states")
    elif args.polygon is not None:
        option, mask = "--polygon", points_in_polygon(explorer.embedding(EmbeddingMethod.PCA).points,
                                                      np.reshape(args.polygon, (-1, 2)))
    else:
        lo, hi = np.reshape(args.latent_box, (-1, 2)).T
        option, mask = "--latent-box", select.latent_box_mask(explorer.latents, lo, hi, "--latent-box")
    if not mask.any():
        raise InputError(None, option, "a selection of at least one particle", f"none of the run's {len(mask)}")
    return mask
