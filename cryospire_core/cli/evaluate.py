"""``cryospire evaluate``: CryoBench per-conformation FSC scores against ground truth.

Examples::

    cryospire evaluate --gt sim64/gt --map consensus.mrc          # homogeneous floor
    cryospire evaluate --gt sim64/gt --maps "maps/state_*.mrc"     # one map per state
    cryospire evaluate --gt sim64/gt --maps maps/ --out scores.json
    cryospire evaluate --gt sim64/gt --run RUN                     # + part scores and gate medians
    cryospire evaluate --gt held/gt --run RUN --latents held.npy   # latents from `cryospire infer`

Every state is scored by FSC inside the ground truth's evaluation mask (AUC, resolution at
FSC 0.5 and 0.143); the ceiling (each ground-truth map against itself) is printed too. With
--run and a simulation's gt/beads.npz, the run's parts are scored against the ground-truth
domains (ARI, split-tolerant ARI, per-domain purity and recall: ``analysis/partscores.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
from pathlib import Path

import numpy as np
import torch

from cryospire_core.analysis.metrics import (
    GroundTruth,
    ScoreTable,
    ceiling,
    homogeneous_floor,
    load_ground_truth,
    natural_key,
    per_conformation,
    population_mean,
    read_grid_map,
    score_states,
)
from cryospire_core.analysis.partscores import (
    domain_presence,
    format_part_scores,
    format_presence,
    load_beads,
    part_scores,
)
from cryospire_core.cli.options import add_overwrite_arg
from cryospire_core.cli.render import read_rows
from cryospire_core.errors import InputError
from cryospire_core.imaging.fsc import max_auc
from cryospire_core.io.atomic import write_json
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.ranges import Whole


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True,
                        help="ground-truth folder (a simulation's gt/: vol_###.mrc, mask.mrc, labels.npy)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--map", help="one map scored against every state (the homogeneous floor)")
    which.add_argument("--run", help="a run trained by `cryospire train`: per-conformation scores at the image "
                                      "latent nearest each state's mean latent (needs gt/labels.npy)")
    which.add_argument("--maps", help="one map per state, in state order: a folder of .mrc files or a glob pattern "
                                      "(sorted naturally: state_2 before state_10)")
    parser.add_argument("--latents", help="with --run: score these latents (.npy, rows matching gt/labels.npy, "
                                          "e.g. from `cryospire infer`) instead of the run's own")
    parser.add_argument("--out", help="write the scores as JSON here")
    add_overwrite_arg(parser, "a scores file (--out)")
    parser.add_argument("--rows", type=Whole(0), default=None, help="print at most this many state rows (default all)")


def state_map_paths(spec: str) -> list[Path]:
    """The per-state maps named by a folder (its .mrc/.map files) or a glob pattern, naturally sorted."""
    path = Path(spec)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix.lower() in (".mrc", ".map")]
    else:
        found = [Path(p) for p in glob.glob(spec)]
    if not found:
        raise InputError(spec, "--maps", "a folder holding .mrc maps or a glob pattern matching some", "no maps")
    return sorted(found, key=natural_key)


def score_per_state_maps(gt: GroundTruth, paths: list[Path]) -> ScoreTable:
    """Score map k of ``paths`` against ground-truth state k."""
    if len(paths) != len(gt):
        raise InputError(paths[0].parent, "--maps", f"{len(gt)} maps (one per ground-truth state)", len(paths))
    pairs = ((k, read_grid_map(p, gt.lattice, resample=True).data, gt[k], None) for k, p in enumerate(paths))
    return score_states(pairs, gt.mask, "per-state maps", gt.lattice.apix)


def score_run(gt: GroundTruth, run_dir: str, latents_path: str | None = None) -> tuple[ScoreTable, dict]:
    """CryoBench per-conformation scores of a trained run against ``gt`` (at the run's latents,
    or those in ``latents_path``), and its part scores when ``gt/beads.npz`` exists."""
    labels_path = gt.folder / "labels.npy"
    if gt.labels is None:
        raise InputError(labels_path, "labels", "the state of every image (gt/labels.npy)", "no such file")
    run = RunFolder(run_dir)
    model = run.model()
    labels = gt.labels
    if latents_path is None:
        latents, source = model.latents.numpy(), "the run's particles"
        selection = run.selection(len(labels)) if len(latents) != len(labels) else None
        if selection is not None:  # stage 2 kept a subset
            labels = labels[selection]
    else:
        latents, source = read_rows(latents_path, "--latents", float), latents_path
        if latents.ndim != 2 or latents.shape[1] != model.cfg.zdim:
            raise InputError(latents_path, "--latents", f"rows of {model.cfg.zdim} numbers (the run's latent size)",
                             latents.shape)
    if len(labels) != len(latents):
        raise InputError(labels_path, "labels", f"one per latent of {source} ({len(latents)})", len(labels))

    lattice = model.lattice.cropped(gt.lattice.box)  # the ground truth's box, whatever box the stage trained at

    def render(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.volume(torch.as_tensor(z, dtype=torch.float32), lattice=lattice).numpy()

    table = per_conformation(latents, labels, gt, render, gt.mask, gt.lattice.apix,
                             title=f"per-conformation FSC: {run_dir} at {source}")
    extra = {}
    beads_path = gt.folder / "beads.npz"
    clustering = run.clustering()
    if beads_path.is_file() and clustering is not None:
        beads = load_beads(beads_path)
        scores = part_scores(clustering, beads)
        extra["part_ari"] = scores.ari  # read by benchmarks/ and older score files
        extra["parts"] = dataclasses.asdict(scores)
        presence = domain_presence(model, latents, labels, beads)
        extra["presence"] = [dataclasses.asdict(r) for r in presence]
        print(format_part_scores(scores))
        if presence:
            print(format_presence(presence))
    return table, extra


def run(args: argparse.Namespace) -> int:
    if args.out:
        check_new_outputs([args.out], args.overwrite)
    gt = load_ground_truth(args.gt)
    print(f"ground truth: {len(gt)} states, {gt.lattice.box} px at {gt.lattice.apix:.4g} Å/px, "
          f"{'mask ' + str(gt.folder / 'mask.mrc') if gt.mask is not None else 'no mask (unmasked FSC)'}")
    if args.latents is not None and args.run is None:
        raise InputError(args.latents, "--latents", "to be used with --run", "--map/--maps")
    extra = {}
    if args.map is not None:
        table = homogeneous_floor(read_grid_map(args.map, gt.lattice, resample=True).data, gt, gt.mask, gt.lattice.apix,
                                  title=f"homogeneous floor: {args.map} vs every state")
    elif args.run is not None:
        table, extra = score_run(gt, args.run, args.latents)
    else:
        table = score_per_state_maps(gt, state_map_paths(args.maps))
    top = ceiling(gt, gt.mask, gt.lattice.apix)
    print(table.format(args.rows))
    if gt.labels is not None and len(gt) > 1:
        ideal = homogeneous_floor(population_mean(gt, gt.labels), gt, gt.mask, gt.lattice.apix,
                                  title="ideal homogeneous")
        i = ideal.summary()
        extra["ideal_homogeneous"] = ideal.to_dict()
        print(f"ideal homogeneous (noise-free population-mean map vs every state): AUC mean {i['mean_auc']:.4f}, "
              f"median {i['median_auc']:.4f}")
    s = top.summary()
    print(f"ceiling (ground truth vs itself): AUC mean {s['mean_auc']:.4f} "
          f"(max possible {max_auc(gt.lattice.box):.4f})")
    if args.out:
        write_json(args.out, {"scores": table.to_dict(), "ceiling": top.to_dict(), **extra})
        print(f"wrote {args.out}")
    return 0
