"""``cryospire parts``: show a run's parts, edit them, and write their label map and masks.

Examples::

    cryospire parts RUN show                          # part, Gaussians, volume fraction
    cryospire parts RUN recluster --level1 3 --level2 auto
    cryospire parts RUN merge 2 3                     # part 3 joins part 2
    cryospire parts RUN split 1 --into 2
    cryospire parts RUN masks -o masks/               # part_labels.mrc, mask_part_01.mrc, ..., open_in_chimerax.cxc

Parts are numbered from 1, as ``show`` lists them. An edit is saved into
RUN/parts/clustering.npz (the napari Parts dock makes the same edits through the same
functions, :mod:`cryospire_core.services.parts`), so ``cryospire train --resume`` then trains
stage 2 on the edited parts; a run whose stage 2 was already seeded from its parts is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryospire_core.cli.options import add_overwrite_arg
from cryospire_core.errors import InputError
from cryospire_core.io.chimerax import SCRIPT_NAME
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.ranges import COUNT, OrAuto, Whole
from cryospire_core.services import parts as run_parts

PART_COUNT = OrAuto(COUNT)
PIECES = Whole(2)
"""How many pieces a split makes: at least two."""

ACTIONS = {
    "show": "print the parts: part, Gaussians, share of the part map's volume",
    "recluster": "re-run both clustering levels with new counts (no retraining)",
    "merge": "merge parts A and B into one (it keeps the lower number)",
    "split": "cut part K into --into spatial pieces",
    "masks": "write the part label map and one soft mask per part",
}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder with its parts (RUN/parts/clustering.npz)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub = {name: actions.add_parser(name, prog=f"{parser.prog} RUN {name}", help=text, description=text)
           for name, text in ACTIONS.items()}
    sub["recluster"].add_argument("--level1", type=PART_COUNT, default="auto",
                                  help="level-1 clusters: auto (default: the best silhouette) or K")
    sub["recluster"].add_argument("--level2", type=PART_COUNT, default="auto",
                                  help="spatial pieces per level-1 cluster: auto (default: split while too big "
                                       "or made of separate blobs) or K")
    sub["merge"].add_argument("a", metavar="A", type=COUNT, help="a part (from 1)")
    sub["merge"].add_argument("b", metavar="B", type=COUNT, help="another part (from 1)")
    sub["split"].add_argument("k", metavar="K", type=COUNT, help="the part to split (from 1)")
    sub["split"].add_argument("--into", type=PIECES, required=True, help="how many pieces (at least 2)")
    sub["masks"].add_argument("-o", "--out", required=True, help="output folder (made if missing)")
    add_overwrite_arg(sub["masks"], "mask files")


def run(args: argparse.Namespace) -> int:
    root = Path(args.run)
    if not root.is_dir():
        raise InputError(root, "run folder", "an existing run folder", "no such folder")
    if args.action == "masks":
        clustering = RunFolder(root).clustering()
        if clustering is not None:  # files in the way are refused before anything is computed
            run_parts.check_mask_outputs(args.out, clustering.n_parts, args.overwrite)
    parts = run_parts.load_parts(root)
    if args.action == "show":
        print(run_parts.parts_table(parts))
        return 0
    if args.action == "masks":
        files = run_parts.export_masks(parts, args.out, args.overwrite)
        print(f"wrote the part label map and {len(files.masks)} masks into {files.folder}; "
              f"ChimeraX: open {files.folder / SCRIPT_NAME}")
        return 0
    run_parts.require_saved(parts)  # an edit the run would not keep is refused before it is computed
    if args.action == "recluster":
        parts = run_parts.recluster(parts, args.level1, args.level2)
    elif args.action == "merge":
        parts = run_parts.merge(parts, args.a - 1, args.b - 1)
    else:
        parts = run_parts.split(parts, args.k - 1, args.into)
    run_parts.require_saved(parts)  # stage 2 was seeded while this command ran
    print(run_parts.parts_table(parts))
    return 0
