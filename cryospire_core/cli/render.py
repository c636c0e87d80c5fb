"""``cryospire render``: maps of a trained run at chosen latents, on the data's lattice.

Examples::

    cryospire render RUN --z z.txt --out maps/          # one map per row of z.txt (numpy.savetxt)
    cryospire render RUN --particles idx.txt --out maps/  # at those particles' latents (0-based)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..mrc import write_map
from ..train import load_trained_model


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder trained by `cryospire train`")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--z", help="latents, one per row: text (as numpy.savetxt writes) or .npy")
    which.add_argument("--particles", help="0-based particle indices (text or .npy): render at their latents")
    parser.add_argument("--out", required=True, help="output folder for vol_000.mrc, vol_001.mrc, ...")


def read_rows(path: str, what: str, dtype) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputError(p, what, "an existing text or .npy file", "no such file")
    try:
        arr = np.load(p, allow_pickle=False) if p.suffix == ".npy" else np.loadtxt(p, ndmin=2 if dtype is float else 1)
    except ValueError as exc:
        raise InputError(p, what, "numbers, one row per map", exc) from exc
    return np.asarray(arr, dtype=dtype)


def run(args: argparse.Namespace) -> int:
    model = load_trained_model(args.run)
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
    with torch.no_grad():
        for k, zk in enumerate(z):
            write_map(out / f"vol_{k:03d}.mrc", model.volume(torch.as_tensor(zk, dtype=torch.float32)).numpy(), model.apix)
    print(f"wrote {len(z)} maps to {out}")
    return 0
