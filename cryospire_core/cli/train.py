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
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from cryospire_core.cli.options import (
    add_device_arg,
    add_particle_args,
    particles_from_args,
)
from cryospire_core.errors import InputError
from cryospire_core.imaging.precision import PRECISIONS
from cryospire_core.models.distributed import from_environment, shutdown
from cryospire_core.models.parts import PartClustering
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.threads import ThreadBudget
from cryospire_core.pipeline.train import (
    EPOCH_OPTIONS,
    PART_SIGNALS,
    PROFILES,
    STAGES,
    TrainConfig,
    check_stage_order,
    check_training_inputs,
    stage2_started,
    train,
)
from cryospire_core.progress import TerminalProgress
from cryospire_core.ranges import COUNT, MINUTES, SEED, OrAuto

PART_COUNT = OrAuto(COUNT)


def _given(value, default):
    """An option's value, or ``default`` when it was left out (None)."""
    return default if value is None else value


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_args(parser)
    parser.add_argument("--out", required=True, help="run folder (created if missing)")
    parser.add_argument("--profile", choices=PROFILES,
                        help="cpu: sized for a laptop/CPU node (default); paper: the paper's sizes (GPU)")
    parser.add_argument("--parts", type=PART_COUNT, help="level-1 part count: auto (default) or K")
    parser.add_argument("--parts-level2", type=PART_COUNT, help="spatial splits per level-1 part: auto (default) or K")
    parser.add_argument("--parts-signal", choices=PART_SIGNALS,
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
    parser.add_argument("--epochs-consensus", type=COUNT, help="override the profile's consensus epochs")
    parser.add_argument("--epochs-1", type=COUNT, help="override the profile's stage-1 epochs")
    parser.add_argument("--epochs-2", type=COUNT,
                        help="override the profile's stage-2 epochs (with --resume: more epochs continue a finished "
                             "stage 2)")
    parser.add_argument("--gaussians-1", type=COUNT, help="override the profile's stage-1 Gaussian count")
    parser.add_argument("--gaussians-2", type=COUNT, help="override the profile's stage-2 Gaussian count")
    parser.add_argument("--batch-size", type=COUNT, help="override the profile's batch size (every stage)")
    parser.add_argument("--seed", type=SEED, help="random seed (default 0)")
    parser.add_argument("--checkpoint-minutes", type=MINUTES, help="minutes between checkpoints (default 5)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="auto (default: bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 on CPUs), "
                             "fp32, bf16 or fp16: the dtype the MLPs run in; rendering and losses stay fp32")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arg(parser)


# The options left out default to None (a resumed run tells an option given again from one left
# out) and then take TrainConfig's defaults: option -> TrainConfig field.
_TOP_LEVEL = {"parts": "parts_level1", "parts_level2": "parts_level2", "parts_signal": "parts_signal",
              "checkpoint_minutes": "checkpoint_minutes", "precision": "precision"}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {field: getattr(args, option) for option, field in _TOP_LEVEL.items() if getattr(args, option) is not None}
    cfg = TrainConfig.for_profile(_given(args.profile, _DEFAULTS["profile"]), seed=_given(args.seed, _DEFAULTS["seed"]),
                                  select=_absolute(args.select), **given)
    _set_epochs(cfg, args)
    rep = dataclasses.replace
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


def _set_epochs(cfg: TrainConfig, args: argparse.Namespace) -> None:
    """Each stage's epochs from --epochs-consensus/--epochs-1/--epochs-2 where given."""
    for section, option in EPOCH_OPTIONS.items():
        epochs = getattr(args, option[2:].replace("-", "_"))
        if epochs is not None:
            setattr(cfg, section, dataclasses.replace(getattr(cfg, section), epochs=epochs))


def resumed_config(args: argparse.Namespace, saved: dict, run_dir: RunFolder) -> TrainConfig:
    """The saved config of the run in --out with what this command may change on resume: epochs
    (a finished stage continues to more), checkpoint minutes, precision, the part counts (before
    the clustering, or with ``--stage parts``) and ``--select`` (before stage 2 starts). An
    option that would change the trained models (profile, sizes, batch size, seed, anchors) and
    differs from the run's is refused rather than ignored."""
    cfg = TrainConfig.from_dict(saved["train"], run_dir.config_path)
    fixed = {"--profile": (args.profile, cfg.profile), "--seed": (args.seed, cfg.seed),
             "--gaussians-1": (args.gaussians_1, cfg.discovery.n_gaussians),
             "--gaussians-2": (args.gaussians_2, cfg.hierarchical.n_gaussians),
             "--batch-size": (args.batch_size, cfg.hierarchical.batch_size),
             "--no-anchors": (True if args.no_anchors else None, not cfg.hierarchical.anchors)}
    for option, (given, value) in fixed.items():
        if given is not None and given != value:
            raise InputError(run_dir.config_path, option, f"the run's {value} with --resume (start a new run folder to "
                             "change it)", given)
    _set_epochs(cfg, args)
    cfg.checkpoint_minutes = _given(args.checkpoint_minutes, cfg.checkpoint_minutes)
    cfg.precision = _given(args.precision, cfg.precision)
    reclustering = args.stage is not None and "parts" in args.stage
    for option in ("parts", "parts_level2", "parts_signal"):
        field, given = _TOP_LEVEL[option], getattr(args, option)
        if reclustering:  # re-clustering with new counts is the point; unset ones go back to the defaults
            setattr(cfg, field, _given(given, _DEFAULTS[field]))
        elif given is not None and given != getattr(cfg, field):
            if (run_dir.root / "parts" / "clustering.npz").exists():
                raise InputError(run_dir.root / "parts" / "clustering.npz", f"--{option.replace('_', '-')}",
                                 "--stage parts with --resume to re-cluster a run that has its parts", given)
            setattr(cfg, field, given)
    if args.select is not None:
        if stage2_started(run_dir):
            raise InputError(args.select, "--select", "a run whose stage 2 has not started",
                             "RUN/hierarchical holds a stage-2 model (start a new run from a copy of its stage-1 "
                             "folders)")
        cfg.select = _absolute(args.select)
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
    cfg = resumed_config(args, saved, run_dir) if "train" in saved else config_from_args(args)
    check_stage_order(run_dir, stages)  # cheap, before the particles are read
    ps = particles_from_args(args)
    if "train" in saved and saved.get("n_particles") != len(ps):
        raise InputError(args.particles, "particles", f"the {saved.get('n_particles')} particles the run was "
                         "trained on", len(ps))
    # Everything a stage will need is checked before the folder is locked (made) and its config
    # written: a refused command leaves the folder as it was, and the corrected one runs.
    check_training_inputs(ps, run_dir, cfg, stages)
    # Rank 0 holds the run's lock and writes every file; the other ranks only train.
    with run_dir if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            if args.select is not None:  # a selection saved by an earlier --select gives way to the new one
                (run_dir.root / "selection.npy").unlink(missing_ok=True)
            run_dir.update_config(train=cfg, n_particles=len(ps),
                                  train_command={"argv": sys.argv[1:], **vars(args), "processes": dist.world_size})
            if args.stage and "parts" in args.stage:  # clustering is instant: an explicit request redoes it
                (run_dir.root / "parts" / "clustering.npz").unlink(missing_ok=True)
        dist.barrier()
        processes = f" x {dist.world_size} processes" if dist.active else ""
        threads = f" with {ThreadBudget(args.threads, args.threads_source)}" if device.type == "cpu" else ""
        say(f"{len(ps)} particles of {ps.box} px at {ps.apix:.4g} Å/px on {device}{processes}{threads}; "
            f"profile {cfg.profile}; stages: {', '.join(stages)}")
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
