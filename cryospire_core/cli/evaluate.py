"""``cryospire evaluate``: CryoBench per-conformation FSC scores against ground truth.

Examples::

    cryospire evaluate --gt sim64/gt --map consensus.mrc          # homogeneous floor
    cryospire evaluate --gt sim64/gt --maps "maps/state_*.mrc"     # one map per state
    cryospire evaluate --gt sim64/gt --maps maps/ --out scores.json

Every state is scored by FSC inside the ground truth's evaluation mask (AUC, resolution at
FSC 0.5 and 0.143); the ceiling (each ground-truth map against itself) is printed too.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json
from ..errors import InputError
from ..metrics import (
    GroundTruth,
    ScoreTable,
    ceiling,
    homogeneous_floor,
    load_ground_truth,
    natural_key,
    per_conformation,
    read_grid_map,
    score_states,
)
from ..train import load_trained_model


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True,
                        help="ground-truth folder (a simulation's gt/: vol_###.mrc, mask.mrc, labels.npy)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--map", help="one map scored against every state (the homogeneous floor)")
    which.add_argument("--run", help="a run trained by `cryospire train`: per-conformation scores at the image "
                                      "latent nearest each state's mean latent (needs gt/labels.npy)")
    which.add_argument("--maps", help="one map per state, in state order: a folder of .mrc files or a glob pattern "
                                      "(sorted naturally: state_2 before state_10)")
    parser.add_argument("--out", help="write the scores as JSON here")
    parser.add_argument("--rows", type=int, default=None, help="print at most this many state rows (default all)")


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
    pairs = ((k, read_grid_map(p, gt.box, gt.apix).data, gt[k], None) for k, p in enumerate(paths))
    return score_states(pairs, gt.mask, "per-state maps", gt.apix)


def score_run(gt: GroundTruth, run_dir: str) -> ScoreTable:
    """CryoBench per-conformation scores of a trained run against ``gt``."""
    labels_path = gt.folder / "labels.npy"
    if not labels_path.is_file():
        raise InputError(labels_path, "labels", "the state of every image (gt/labels.npy)", "no such file")
    labels = np.load(labels_path)
    model = load_trained_model(run_dir)
    latents = model.latents.numpy()
    if len(labels) != len(latents):
        raise InputError(labels_path, "labels", f"one per particle of the run ({len(latents)})", len(labels))

    def render(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.volume(torch.as_tensor(z, dtype=torch.float32)).numpy()

    return per_conformation(latents, labels, gt, render, gt.mask, gt.apix, title=f"per-conformation FSC: {run_dir}")


def run(args: argparse.Namespace) -> int:
    gt = load_ground_truth(args.gt)
    print(f"ground truth: {len(gt)} states, {gt.box} px at {gt.apix:.4g} Å/px, "
          f"{'mask ' + str(gt.folder / 'mask.mrc') if gt.mask is not None else 'no mask (unmasked FSC)'}")
    if args.map is not None:
        table = homogeneous_floor(read_grid_map(args.map, gt.box, gt.apix).data, gt, gt.mask, gt.apix,
                                  title=f"homogeneous floor: {args.map} vs every state")
    elif args.run is not None:
        table = score_run(gt, args.run)
    else:
        table = score_per_state_maps(gt, state_map_paths(args.maps))
    top = ceiling(gt, gt.mask, gt.apix)
    print(table.format(args.rows))
    s = top.summary()
    print(f"ceiling (ground truth vs itself): AUC mean {s['mean_auc']:.4f} "
          f"(max possible {(gt.box // 2 - 1) / gt.box:.4f})")
    if args.out:
        write_json(args.out, {"scores": table.to_dict(), "ceiling": top.to_dict()})
        print(f"wrote {args.out}")
    return 0
