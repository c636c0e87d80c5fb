"""``cryospire train``: consensus, part discovery (stage 1), parts, and the part-aware model
(stage 2) into one run folder.

Example: ``cryospire train sim/particles.star --out RUN --profile cpu`` (``--profile paper`` for
the paper's sizes on a GPU). A killed run continues with the same command plus ``--resume``;
``--stage parts --parts 4 --resume`` re-runs one stage (here: re-cluster into 4 level-1 parts).
Started by ``torchrun --nproc_per_node=K -m cryospire_core.cli.main train ...`` the K processes
train one run together (:mod:`cryospire_core.models.distributed`); ``--batch-size`` is then the global
batch of all processes, and the result matches a one-process run of the same seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from cryospire_core.cli.options import (
    add_device_arg,
    add_particle_args,
    particle_source,
)
from cryospire_core.imaging.precision import PRECISIONS
from cryospire_core.imaging.window import DEFAULT_WINDOW_RADIUS
from cryospire_core.models.distributed import Distributed, from_environment, shutdown
from cryospire_core.models.parts import PartClustering
from cryospire_core.pipeline.config import PART_REFINES, PART_SIGNALS, STAGES
from cryospire_core.pipeline.preprocess import NORMALIZE_CHOICES
from cryospire_core.pipeline.profiles import DEFAULT_PROFILE, profile_names
from cryospire_core.pipeline.threads import ThreadBudget
from cryospire_core.progress import TerminalProgress
from cryospire_core.ranges import (
    BOX,
    COUNT,
    HANDLES,
    MINUTES,
    SEED,
    WINDOW_RADIUS,
    OrAuto,
)
from cryospire_core.services.training import TrainOptions, TrainRequest, training_run

PART_COUNT = OrAuto(COUNT)


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_args(parser)
    parser.add_argument("--out", required=True, help="run folder (created if missing)")
    parser.add_argument("--profile", choices=profile_names(),
                        help=f"the sizes of every stage (resources/profiles/<name>.toml): cpu for a laptop or CPU node, "
                        f"paper for the paper's sizes on a GPU (default {DEFAULT_PROFILE})")
    parser.add_argument("--parts", type=PART_COUNT, help="level-1 part count: auto (default) or K")
    parser.add_argument("--parts-level2", type=PART_COUNT, help="spatial splits per level-1 part: auto (default) or K")
    parser.add_argument("--parts-signal", choices=PART_SIGNALS,
                        help="what level 1 clusters: dynamics (each Gaussian's decoded motion and presence; "
                             "default) or features (the learned features, as in the paper)")
    parser.add_argument("--parts-refine", choices=PART_REFINES,
                        help="after both levels: none (default) or rigid (each Gaussian goes to the part whose rigid "
                             "motion and presence explain its own best, ties go to its neighbourhood's part, and a "
                             "part whose Gaussians come and go in two patterns is cut in two; for a stage 1 with "
                             "rigid handles)")
    parser.add_argument("--select", help="particles stage 2 keeps: 0-based indices (.npy/.txt) or a .star/.cs subset "
                                         "of PARTICLES (drop junk after looking at stage 1; with --resume it applies "
                                         "when stage 2 has not started)")
    parser.add_argument("--no-anchors", action="store_true",
                        help="stage 2 without per-part rigid motions (an ablation: Gaussians move only by residuals)")
    parser.add_argument("--stage", choices=STAGES, action="append",
                        help="run only this stage (repeatable); unfinished stages resume, `--stage parts` "
                             "re-clusters with the given --parts")
    parser.add_argument("--epochs-consensus", type=COUNT, help="override the profile's consensus epochs")
    parser.add_argument("--epochs-1", type=COUNT, help="override the profile's stage-1 epochs")
    parser.add_argument("--epochs-2", type=COUNT,
                        help="override the profile's stage-2 epochs (with --resume: more epochs continue a finished "
                             "stage 2)")
    parser.add_argument("--gaussians-1", type=COUNT, help="override the profile's stage-1 Gaussian count")
    parser.add_argument("--handles-1", type=HANDLES,
                        help="stage 1 moves Gaussians by a blend of this many rigid handles instead of the paper's "
                             "per-Gaussian shift MLP (default 0: the shift MLP); with --parts-refine rigid")
    parser.add_argument("--gaussians-2", type=COUNT, help="override the profile's stage-2 Gaussian count")
    for option, which in (("--box-consensus", "the consensus"), ("--box-1", "stage 1"), ("--box-2", "stage 2")):
        parser.add_argument(option, type=BOX, help=f"the box (px) {which} sees the images at, Fourier-cropped as "
                            "they are read (default: the profile's, at most the stack's box)")
    parser.add_argument("--batch-size", type=COUNT, help="override the profile's batch size (every stage)")
    parser.add_argument("--seed", type=SEED, help="random seed (default 0)")
    parser.add_argument("--checkpoint-minutes", type=MINUTES, help="minutes between checkpoints (default 5)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="auto (default: bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 on CPUs), "
                             "fp32, bf16 or fp16: the dtype the MLPs run in; rendering and losses stay fp32")
    parser.add_argument("--window-radius", type=WINDOW_RADIUS,
                        help=f"the particle's radius as a fraction of the half box (default "
                             f"{DEFAULT_WINDOW_RADIUS:g}): the loss sees the images through a window flat inside it "
                             "and falling (cosine) to 0 at the box edge; the background (normalisation, noise "
                             "spectrum) is measured outside it")
    parser.add_argument("--no-window", action="store_true",
                        help="fit the whole box, corners included (no soft window in the loss)")
    parser.add_argument("--normalize", choices=NORMALIZE_CHOICES,
                        help="normalise each image's background to mean 0, std 1 as it is read (RELION's --norm): "
                             "auto (default) when the stack does not look normalised, yes, no")
    parser.add_argument("--noise-weighting", action="store_true",
                        help="weight the loss by the inverse noise power spectrum of each optics group, measured from "
                             "the image backgrounds (saved as RUN/noise_psd.npz): for coloured noise")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arg(parser)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The options that shape the run's config (None where left out: a resumed run tells an
    option given again from one left out)."""
    return TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)})


def request_from_args(args: argparse.Namespace, dist: Distributed) -> TrainRequest:
    """The training request of the command line (``dist``: this process's place in the run)."""
    return TrainRequest(
        source=particle_source(args), out=args.out, options=options_from_args(args),
        stages=tuple(s for s in STAGES if s in args.stage) if args.stage else STAGES,
        recluster=args.stage is not None and "parts" in args.stage, resume=args.resume, device=args.device,
        threads=ThreadBudget(args.threads, args.threads_source),
        command={"argv": sys.argv[1:], **vars(args), "processes": dist.world_size})


def run(args: argparse.Namespace) -> int:
    dist, device = from_environment(args.device)
    try:
        return _run(args, dist, device)
    finally:
        shutdown(dist)


def _run(args: argparse.Namespace, dist: Distributed, device) -> int:
    say = print if dist.is_main else (lambda *a, **k: None)
    with training_run(request_from_args(args, dist), dist, device) as prepared:
        say(prepared.summary())
        bar = TerminalProgress(disable=args.quiet or not dist.is_main)
        t0 = time.perf_counter()
        try:
            status = prepared.train(progress=bar)
        finally:
            bar.close()
    run_dir = prepared.run
    clustering = run_dir.clustering() if "parts" in prepared.stages else None
    if clustering is not None:
        say(parts_summary(clustering))
    say(f"train {status} in {time.perf_counter() - t0:.0f} s; run folder {run_dir.root}")
    return 0


def parts_summary(c: PartClustering) -> str:
    """How the parts were chosen, and one line per part."""
    lines = [f"parts: {c.n_parts} ({c.rule})"]
    sizes = np.bincount(c.part_index, minlength=c.n_parts)
    for k in range(c.n_parts):
        lines.append(f"  part {k + 1:>2}: level-1 cluster {c.level1[k] + 1}, {sizes[k]:>5d} Gaussians, "
                     f"Rg {c.part_rg[k]:5.1f} Å, presence {c.part_presence[k]:.2f}")
    return "\n".join(lines)
