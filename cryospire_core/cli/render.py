"""``cryospire render``: maps of a trained run at chosen latents, on the model's lattice (the box
its last stage was trained at) or, with ``--box B``, on B samples per side with the same field of
view (voxel size apix * D / B: the Gaussians are in Å, so a run trained at 64 px renders at 256).

Examples::

    cryospire render RUN --z z.txt --out maps/          # one map per row of z.txt (numpy.savetxt)
    cryospire render RUN --particles idx.txt --out maps/  # at those particles' latents (0-based)
    cryospire render RUN --z z.txt --box 256 --out maps256/  # 256^3 maps, whatever box it trained at
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from cryospire_core.cli.options import add_map_box_arg, add_overwrite_arg
from cryospire_core.errors import InputError
from cryospire_core.io.mrc import write_map
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.pipeline.runfolder import RunFolder


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder trained by `cryospire train`")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--z", help="latents, one per row: text (as numpy.savetxt writes) or .npy")
    which.add_argument("--particles", help="0-based particle indices (text or .npy): render at their latents")
    parser.add_argument("--out", required=True, help="output folder for vol_000.mrc, vol_001.mrc, ...")
    add_map_box_arg(parser)
    add_overwrite_arg(parser, "maps in --out")


def read_rows(path: str, what: str, dtype) -> np.ndarray:
    """The numbers in a text file (as numpy.savetxt writes) or an .npy: float latents (rows,
    finite) for ``dtype`` float, else whole numbers (0-based indices, 1D int64). InputError
    naming the file (and option ``what``) for anything else."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, what, "an existing text or .npy file", "no such file")
    try:
        with warnings.catch_warnings():  # an empty file is reported below, not as loadtxt's warning
            warnings.simplefilter("ignore", UserWarning)
            arr = (np.load(p, allow_pickle=False) if p.suffix == ".npy"
                   else np.loadtxt(p, ndmin=2 if dtype is float else 1))
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(p, what, "numbers, one row per map", " ".join(str(exc).split())[:200]) from exc
    arr = np.asarray(arr)
    if arr.size == 0:
        raise InputError(p, what, "at least one row of numbers", "none")
    if arr.dtype.kind not in "iuf":
        raise InputError(p, what, "numbers", f"{arr.dtype} values")
    finite = np.isfinite(arr)
    if dtype is float:
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0]) + 1
            raise InputError(p, what, "finite numbers (no NaN or inf)", f"{int((~finite).sum())} non-finite values, "
                             f"the first in row {row}")
        big = np.abs(arr) > np.finfo(np.float32).max
        if big.any():  # finite here, inf in the model's float32
            row = int(np.argwhere(big)[0][0]) + 1
            raise InputError(p, what, "numbers finite in float32 (|z| <= 3.4e38)",
                             f"{int(big.sum())} larger values, the first in row {row}")
        return arr.astype(np.float64)
    if not finite.all() or np.any(arr != np.round(arr)):
        raise InputError(p, what, "whole numbers (0-based indices)", "fractions or non-finite values")
    if arr.dtype.kind == "f" and np.any(np.abs(arr) >= 2.0 ** 62):  # would wrap around as int64
        raise InputError(p, what, "0-based indices", f"{float(np.max(np.abs(arr))):.4g}")
    return arr.astype(np.int64)


def run(args: argparse.Namespace) -> int:
    model = RunFolder(args.run).model()
    latents = model.latents.numpy()
    if args.z:
        z = read_rows(args.z, "--z", float)
        z = z.reshape(1, -1) if z.ndim == 1 else z
        if z.ndim != 2 or z.shape[1] != latents.shape[1]:
            raise InputError(args.z, "--z", f"rows of {latents.shape[1]} numbers (the run's latent size)", z.shape)
    else:
        idx = read_rows(args.particles, "--particles", np.int64).reshape(-1)
        if idx.min() < 0 or idx.max() >= len(latents):
            raise InputError(args.particles, "--particles", f"indices in 0..{len(latents) - 1}", f"{idx.min()}..{idx.max()}")
        z = latents[idx]
    out = Path(args.out)
    paths = [out / f"vol_{k:03d}.mrc" for k in range(len(z))]
    check_new_outputs(paths, args.overwrite)
    reach = float(np.linalg.norm(latents, axis=1).max())
    lattice = model.lattice if args.box is None else model.lattice.cropped(args.box)
    with torch.no_grad():
        for k, (path, zk) in enumerate(zip(paths, z)):
            volume = model.volume(torch.as_tensor(zk, dtype=torch.float32), lattice=lattice).numpy()
            write_map(path, volume, lattice.apix)
            if not np.any(volume):  # e.g. a latent far outside the run's: every Gaussian moved off the box
                print(f"warning: {path} is empty (all zero) at latent row {k + 1} (|z| = {np.linalg.norm(zk):.3g}; "
                      f"the run's latents reach |z| = {reach:.3g})", file=sys.stderr)
    print(f"wrote {len(z)} maps of {lattice.box}^3 at {lattice.apix:.4g} Å/voxel to {out}")
    return 0
