"""``cryospire train``: consensus, part discovery (stage 1), parts, and the part-aware model
(stage 2) into one run folder.

Example: ``cryospire train sim/particles.star --out RUN --profile cpu`` (``--profile paper`` for
the paper's sizes on a GPU). A killed run continues with the same command plus ``--resume``;
``--stage parts --parts 4 --resume`` re-runs one stage (here: re-cluster into 4 level-1 parts).
Started by ``torchrun --nproc_per_node=K -m cryospire_core.cli.main train ...`` the K processes
train one run together (:mod:`cryospire_core.distributed`); ``--batch-size`` is then the global
batch of all processes, and the result matches a one-process run of the same seed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ..device import add_device_arg
from ..distributed import from_environment, shutdown
from ..errors import InputError
from ..load import add_particle_args, particles_from_args
from ..progress import TerminalProgress
from ..parts import PartClustering
from ..precision import PRECISIONS
from ..runfolder import RunFolder
from ..train import PART_SIGNALS, PROFILES, STAGES, TrainConfig, train


def _count(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {k}")
    return k


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_args(parser)
    parser.add_argument("--out", required=True, help="run folder (created if missing)")
    parser.add_argument("--profile", choices=PROFILES, default="cpu",
                        help="cpu: sized for a laptop/CPU node (default); paper: the paper's sizes (GPU)")
    parser.add_argument("--parts", type=_count, default="auto", help="level-1 part count: auto (default) or K")
    parser.add_argument("--parts-level2", type=_count, default="auto",
                        help="spatial splits per level-1 part: auto (default) or K")
    parser.add_argument("--parts-signal", choices=PART_SIGNALS, default="dynamics",
                        help="what level 1 clusters: dynamics (each Gaussian's decoded motion and presence; "
                             "default) or features (the learned features, as in the paper)")
    parser.add_argument("--select", help="particles stage 2 keeps: 0-based indices (.npy/.txt) or a .star/.cs subset "
                                         "of PARTICLES (drop junk after looking at stage 1; with --resume it applies "
                                         "when stage 2 has not started)")
    parser.add_argument("--no-anchors", action="store_true",
                        help="stage 2 without per-part rigid motions (an ablation: Gaussians move only by residuals)")
    parser.add_argument("--stage", choices=STAGES, action="append",
                        help="run only this stage (repeatable); unfinished stages resume, `--stage parts` "
                             "re-clusters with the given --parts")
    parser.add_argument("--epochs-consensus", type=int, help="override the profile's consensus epochs")
    parser.add_argument("--epochs-1", type=int, help="override the profile's stage-1 epochs")
    parser.add_argument("--epochs-2", type=int, help="override the profile's stage-2 epochs")
    parser.add_argument("--gaussians-1", type=int, help="override the profile's stage-1 Gaussian count")
    parser.add_argument("--gaussians-2", type=int, help="override the profile's stage-2 Gaussian count")
    parser.add_argument("--batch-size", type=int, help="override the profile's batch size (every stage)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0, help="minutes between checkpoints (default 5)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default: bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 on CPUs), "
                             "fp32, bf16 or fp16: the dtype the MLPs run in; rendering and losses stay fp32")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arg(parser)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.for_profile(args.profile, seed=args.seed, parts_level1=args.parts,
                                  parts_level2=args.parts_level2, parts_signal=args.parts_signal,
                                  select=_absolute(args.select), checkpoint_minutes=args.checkpoint_minutes,
                                  precision=args.precision)
    rep = dataclasses.replace
    if args.epochs_consensus is not None:
        cfg.consensus = rep(cfg.consensus, epochs=args.epochs_consensus)
    if args.epochs_1 is not None:
        cfg.discovery = rep(cfg.discovery, epochs=args.epochs_1)
    if args.epochs_2 is not None:
        cfg.hierarchical = rep(cfg.hierarchical, epochs=args.epochs_2)
    if args.gaussians_1 is not None:
        cfg.discovery = rep(cfg.discovery, n_gaussians=args.gaussians_1)
    if args.gaussians_2 is not None:
        cfg.hierarchical = rep(cfg.hierarchical, n_gaussians=args.gaussians_2)
    if args.no_anchors:
        cfg.hierarchical = rep(cfg.hierarchical, anchors=False)
    if args.batch_size is not None:
        cfg.consensus = rep(cfg.consensus, batch_size=args.batch_size)
        cfg.discovery = rep(cfg.discovery, batch_size=args.batch_size)
        cfg.hierarchical = rep(cfg.hierarchical, batch_size=args.batch_size)
    return cfg


def run(args: argparse.Namespace) -> int:
    dist, device = from_environment(args.device)
    try:
        return _run(args, dist, device)
    finally:
        shutdown(dist)


def _run(args: argparse.Namespace, dist, device) -> int:
    run_dir = RunFolder(args.out)
    saved = run_dir.config_for("train", args.resume)
    dist.barrier()  # every rank has read the config before rank 0 writes it
    stages = tuple(s for s in STAGES if s in args.stage) if args.stage else STAGES
    say = print if dist.is_main else (lambda *a, **k: None)
    # Rank 0 holds the run's lock and writes every file; the other ranks only train.
    with run_dir if dist.is_main else contextlib.nullcontext():
        ps = particles_from_args(args)
        if "train" in saved:
            cfg = TrainConfig.from_dict(saved["train"])
            if args.stage and "parts" in args.stage:  # re-clustering with new counts is the point
                cfg.parts_level1, cfg.parts_level2, cfg.parts_signal = args.parts, args.parts_level2, args.parts_signal
            if args.select is not None:
                if (run_dir.root / "hierarchical").exists():
                    raise InputError(args.select, "--select", "a run whose stage 2 has not started",
                                     "RUN/hierarchical exists (start a new run from a copy of its stage-1 folders)")
                cfg.select = _absolute(args.select)
            if saved.get("n_particles") != len(ps):
                raise InputError(args.particles, "particles", f"the {saved.get('n_particles')} particles the run was "
                                 "trained on", len(ps))
        else:
            cfg = config_from_args(args)
        if dist.is_main:
            run_dir.update_config(train=cfg, n_particles=len(ps),
                                  train_command={"argv": sys.argv[1:], **vars(args), "processes": dist.world_size})
            if args.stage and "parts" in args.stage:  # clustering is instant: an explicit request redoes it
                (run_dir.root / "parts" / "clustering.npz").unlink(missing_ok=True)
        dist.barrier()
        processes = f" x {dist.world_size} processes" if dist.active else ""
        say(f"{len(ps)} particles of {ps.box} px at {ps.apix:.4g} Å/px on {device}{processes}; profile {cfg.profile}; "
            f"stages: {', '.join(stages)}")
        bar = TerminalProgress(disable=args.quiet or not dist.is_main)
        t0 = time.perf_counter()
        try:
            status = train(ps, run_dir, cfg, device, stages, progress=bar, dist=dist)
        finally:
            bar.close()
        dist.barrier()  # the other ranks wait for rank 0's last files
    clustering = run_dir.root / "parts" / "clustering.npz"
    if "parts" in stages and clustering.exists():
        say(parts_summary(PartClustering.from_npz(clustering)))
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
