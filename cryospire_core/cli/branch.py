"""``cryospire branch``: a new run folder that trains a run's stage 2 on a particle selection.

Example::

    cryospire select RUN --states 0,2 -o keep.star
    cryospire branch RUN --select keep_indices.txt -o RUN_keep
    cryospire train data/particles.star --out RUN_keep --resume   # printed by branch

The new folder holds copies of RUN's consensus, stage-1 and parts outputs (not their
checkpoints) and RUN's config with ``train.select`` set to the selection (absolute path) and
``branched_from`` to RUN; training it then runs only stage 2. RUN itself is not changed. To
train RUN's own stage 2 on a selection instead (only before it starts):
``cryospire train PARTICLES --out RUN --resume --select FILE``. ``--particles`` names RUN's
particle file when it is not where RUN/config.json says (the new run records it).
"""

from __future__ import annotations

import argparse
import shlex
import warnings
from pathlib import Path

from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.services import branch


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder whose part discovery is finished (RUN/parts/clustering.npz)")
    parser.add_argument("--select", required=True,
                        help="particles stage 2 keeps: 0-based indices (.txt/.npy) or a .star/.cs subset of the "
                             "run's particles (e.g. written by `cryospire select`)")
    parser.add_argument("--particles", help="the particle file the run was trained on, when it moved (default: as "
                                            "RUN/config.json records it); recorded in the new run's config.json")
    parser.add_argument("-o", "--out", required=True, help="the new run folder (new or empty)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    branch.check_new_run_folder(out)  # before anything is read
    kept = branch.selection_size(args.run, args.select, args.particles)
    branch.branch_run(args.run, out, args.select, args.particles)
    if kept is None:
        missing = RunFolder(args.run).missing_input("particles", "give it with --particles")
        warnings.warn(f"{missing}; {args.select} is checked when stage 2 starts", stacklevel=1)
    size = "" if kept is None else f" on {kept} particles"
    print(f"branched {args.run} into {out}: stage 2 will train{size} ({args.select}). Train it with:")
    print(f"  {shlex.join(branch.train_command(out))}")
    return 0
