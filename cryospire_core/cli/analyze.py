"""``cryospire analyze``: latent PCA, k-means states, traversals and part masks of a trained run.

Examples::

    cryospire analyze runs/igg                       # writes runs/igg/analysis/
    cryospire analyze runs/igg --ksample 10 --pc-steps 20 --pcs 2 --out igg_analysis
    cryospire analyze runs/igg --box 256 --out igg_256      # every map 256^3, whatever box it trained at

Needs RUN/latents.npy and a trained model (``cryospire train``) to render volumes from; the part
label map and focused-refinement masks are added when the run has its part clustering. A second
analysis into the same folder replaces the first's files only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cryospire_core.analysis.latentspace import RenderFn, analyze, check_outputs
from cryospire_core.cli.options import add_map_box_arg, add_overwrite_arg
from cryospire_core.errors import InputError
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.ranges import COUNT, SEED


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (holds latents.npy and the trained model)")
    parser.add_argument("--ksample", type=COUNT, default=20, help="k-means states to render (default 20)")
    parser.add_argument("--pc-steps", type=COUNT, default=10, help="maps along each principal component (default 10)")
    parser.add_argument("--pcs", type=COUNT, default=1, help="traverse PC1..PCn (default 1)")
    parser.add_argument("--seed", type=SEED, default=0, help="k-means seed (default 0)")
    parser.add_argument("--out", help="output folder (default RUN/analysis)")
    add_map_box_arg(parser)
    add_overwrite_arg(parser, "files in the output folder")


def load_renderer(run: RunFolder, latents: np.ndarray, box: int | None = None) -> tuple[RenderFn, float]:
    """The run's most advanced trained model (stage 2, else stage 1) as (render_fn, voxel size Å),
    its maps ``box`` samples per side (None: the box it was trained at); InputError when the run
    has none or ``latents`` (RUN/latents.npy, already read) do not fit it."""
    import torch

    from cryospire_core.pipeline.train import check_run_latents

    model = run.model()
    check_run_latents(model, latents, run.latents_path)
    lattice = model.lattice if box is None else model.lattice.cropped(box)

    def render(z):
        with torch.no_grad():
            return model.volume(torch.as_tensor(z, dtype=torch.float32), lattice=lattice).numpy()

    return render, lattice.apix


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise InputError(run_dir, "run folder", "an existing run folder", "no such folder")
    # Missing latents and files in the way fail before the model is loaded.
    run = RunFolder(run_dir)
    latents = run.latents()
    check_outputs(run_dir, len(latents), latents.shape[1], args.ksample, args.pc_steps, args.pcs, args.out,
                  run.part_gaussians(), args.overwrite)
    render_fn, apix = load_renderer(run, latents, args.box)
    result = analyze(run_dir, render_fn, apix, ksample=args.ksample, pc_steps=args.pc_steps, n_pcs=args.pcs,
                     out_dir=args.out, seed=args.seed, log=print, overwrite=args.overwrite, box=args.box)
    for note in result.notes:
        print(f"note: {note}")
    n = sum(len(v) for v in result.files.values())
    print(f"wrote {n} files into {result.out_dir}")
    return 0
