"""Starting a training run: one path from a request to a locked, checked run folder, shared by
``cryospire train`` and the napari docks (train dock, explorer's "train on the selection").

:func:`training_run` does every start-up step in the order the command line always has: refuse
a new start over a trained run (unless resuming), build the config (a new run's from the
options, or the saved one with what a resume may change), check the stage order, read the
particles, check them and everything the stages need; only then lock the folder and write its
config. A refused request leaves the folder as it was, and the corrected one runs. Inside the
``with`` block, :meth:`TrainingRun.train` trains with the caller's progress and cancel callbacks.

Errors name the command line's options (``--profile``, ``--parts``, ...): only the command line
can ask for those changes; :attr:`TrainRequest.resume_hint` is how a caller names "resume".
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cryospire_core.errors import InputError
from cryospire_core.imaging.noise import NormalizationReport
from cryospire_core.io.load import ParticleSource
from cryospire_core.io.particles import ParticleSet
from cryospire_core.models.device import resolve_device
from cryospire_core.models.distributed import Distributed
from cryospire_core.pipeline.config import STAGES, TrainConfig, recorded_inputs
from cryospire_core.pipeline.preprocess import inspect_normalization
from cryospire_core.pipeline.profiles import DEFAULT_PROFILE
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.threads import ThreadBudget, use_threads
from cryospire_core.pipeline.train import (
    BOX_OPTIONS,
    EPOCH_OPTIONS,
    check_stage_order,
    check_training_inputs,
    train,
)
from cryospire_core.progress import ProgressCallback, ProgressEvent, interruptible


@dataclass(frozen=True)
class TrainOptions:
    """The options of ``cryospire train`` that shape a run's config; None (False) = not given.

    A new run takes the profile's config with the given ones applied (:func:`new_config`); a
    resumed run keeps its saved config, changed only where a resume may change it
    (:func:`resumed_config`). parts/parts_level2: ``auto`` or a count; select: a particle
    selection file for stage 2; epochs_1/epochs_2, gaussians_1/gaussians_2: stage 1's and
    stage 2's; handles_1: stage 1's rigid handles (``discovery.handles``); box_consensus/box_1/box_2:
    the box (px) each stage reads the images at; batch_size: every stage's; no_anchors: stage 2 without per-part rigid motions; window_radius,
    no_window, normalize, noise_weighting: how the data term sees the images
    (:class:`~cryospire_core.pipeline.preprocess.PreprocessConfig`).
    """

    profile: str | None = None
    seed: int | None = None
    parts: str | int | None = None
    parts_level2: str | int | None = None
    parts_signal: str | None = None
    parts_refine: str | None = None
    select: str | None = None
    no_anchors: bool = False
    epochs_consensus: int | None = None
    epochs_1: int | None = None
    epochs_2: int | None = None
    gaussians_1: int | None = None
    handles_1: int | None = None
    gaussians_2: int | None = None
    box_consensus: int | None = None
    box_1: int | None = None
    box_2: int | None = None
    batch_size: int | None = None
    checkpoint_minutes: float | None = None
    precision: str | None = None
    window_radius: float | None = None
    no_window: bool = False
    normalize: str | None = None
    noise_weighting: bool = False


@dataclass(frozen=True)
class TrainRequest:
    """Everything a training start needs.

    source: the particles (:class:`~cryospire_core.io.load.ParticleSource`); out: the run folder (made if missing); options: see
    :class:`TrainOptions`; config: a new run's config instead of the options' (the docks' tests
    inject tiny ones); stages: the stages to run, in :data:`STAGES` order; recluster: redo the
    parts stage with the options' part counts (``--stage parts``; the old clustering is
    removed); resume: continue the run in ``out`` (a new start over a trained run is refused);
    resume_hint: how the refusal names resuming (``--resume``, or a GUI's button); device:
    ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; threads: the torch threads to compute with (None:
    leave them as they are); command: saved as the run's ``train_command``.
    """

    source: ParticleSource
    out: str | os.PathLike
    options: TrainOptions = TrainOptions()
    config: TrainConfig | None = None
    stages: tuple[str, ...] = STAGES
    recluster: bool = False
    resume: bool = False
    resume_hint: str = "--resume"
    device: str = "auto"
    threads: ThreadBudget | None = None
    command: dict[str, Any] = field(default_factory=dict)



@dataclass
class TrainingRun:
    """A run folder locked and checked for training (made by :func:`training_run`).

    run: the folder (its lock held by rank 0); particles: the N input particles; config: the
    run's config, as saved in RUN/config.json; stages: what :meth:`train` runs; device, dist:
    where; threads: the torch threads (None: as they were); normalization: what the stack's
    backgrounds showed when this start inspected them (None: the run's saved verdict was kept).
    """

    run: RunFolder
    particles: ParticleSet
    config: TrainConfig
    stages: tuple[str, ...]
    device: torch.device
    dist: Distributed
    threads: ThreadBudget | None
    normalization: NormalizationReport | None = None

    def summary(self) -> str:
        """One line: what trains where, with which profile and stages."""
        ps, dist = self.particles, self.dist
        processes = f" x {dist.world_size} processes" if dist.active else ""
        threads = f" with {self.threads}" if self.device.type == "cpu" and self.threads is not None else ""
        boxes = "/".join(str(ps.at_most(getattr(self.config, s).box).box) for s in BOX_OPTIONS)
        pre = self.config.preprocess
        looks = self.normalization.describe() if self.normalization is not None else pre.stack_normalization
        return (f"{len(ps)} particles of {ps.box} px at {ps.apix:.4g} Å/px on {self.device}{processes}{threads}; "
                f"profile {self.config.profile}; boxes {boxes} px (consensus/stage 1/stage 2); "
                f"stages: {', '.join(self.stages)}; images look {looks}; {pre.describe()}")

    def train(self, progress: ProgressCallback | None = None,
              should_stop: Callable[[], bool] | None = None) -> str:
        """Train the stages (:func:`cryospire_core.pipeline.train.train`); ``finished``, or
        ``cancelled`` once ``should_stop()`` said so (a checkpoint left to resume from). Every
        rank returns after rank 0 has written its last files."""
        status = train(self.particles, self.run, self.config, self.device, self.stages, progress=progress,
                       should_stop=should_stop, dist=self.dist)
        self.dist.barrier()
        return status


@contextlib.contextmanager
def training_run(request: TrainRequest, dist: Distributed = Distributed(),
                 device: torch.device | None = None, progress: ProgressCallback | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[TrainingRun]:
    """The run of ``request``, checked and locked for the ``with`` block (see the module
    docstring); InputError, with nothing written, for anything a stage would refuse.

    dist: this process's place in a data-parallel run (every rank calls this with the same
    request; rank 0 alone locks the folder and writes). device: where to train (default:
    ``request.device`` resolved on this machine). progress and should_stop: for reading the
    particles and inspecting their backgrounds (:class:`~cryospire_core.progress.Cancelled`,
    nothing written, when it answers True; ignored in a data-parallel run).
    """
    if request.threads is not None:
        use_threads(request.threads)
    run = RunFolder(request.out)
    saved = run.config_for("train", request.resume, request.resume_hint)
    dist.barrier()  # every rank has read the config before rank 0 writes it
    if "train" in saved:
        cfg = resumed_config(request.options, saved, run, request.recluster)
    else:
        cfg = request.config if request.config is not None else new_config(request.options)
    check_stage_order(run, request.stages)  # cheap, before the particles are read
    if progress is not None:
        progress(ProgressEvent("reading the particles", 0, 1))
    ps = interruptible(request.source.load, None if dist.active else should_stop)
    if "train" in saved and saved.get("n_particles") != len(ps):
        raise InputError(request.source.particles, "particles", f"the {saved.get('n_particles')} particles the run was "
                         "trained on", len(ps))
    # Everything a stage will need is checked before the folder is locked (made) and its config
    # written: a refused request leaves the folder as it was.
    check_training_inputs(ps, run, cfg, request.stages)
    report = None
    if cfg.preprocess.stack_normalization is None:  # inspected once, at the run's first start
        report = inspect_normalization(ps, cfg.preprocess.window_radius, seed=cfg.seed, progress=progress,
                                       should_stop=None if dist.active else should_stop)
        cfg.preprocess = dataclasses.replace(cfg.preprocess, stack_normalization=report.verdict)
    device = resolve_device(request.device) if device is None else device
    with run if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            if request.options.select is not None:  # a selection saved by an earlier one gives way to the new one
                run.selection_path.unlink(missing_ok=True)
            run.update_config(train=cfg, n_particles=len(ps), train_command=request.command,
                              inputs=recorded_inputs(request.source, run.root))
            if request.recluster:  # clustering is instant: an explicit request redoes it
                run.clustering_path.unlink(missing_ok=True)
        dist.barrier()
        yield TrainingRun(run, ps, cfg, request.stages, device, dist, request.threads, report)


# -- configs ----------------------------------------------------------------------------------------

# The part options and the TrainConfig field each sets, and the other options set at the top level.
_PART_FIELDS = {"parts": "parts_level1", "parts_level2": "parts_level2", "parts_signal": "parts_signal",
                "parts_refine": "parts_refine"}
_TOP_LEVEL = {**_PART_FIELDS, "checkpoint_minutes": "checkpoint_minutes", "precision": "precision"}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def _given(value, default):
    """An option's value, or ``default`` when it was left out (None)."""
    return default if value is None else value


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def new_config(options: TrainOptions) -> TrainConfig:
    """A new run's config: the profile's (default :data:`DEFAULT_PROFILE`) with the given options applied."""
    given = {field: getattr(options, option) for option, field in _TOP_LEVEL.items()
             if getattr(options, option) is not None}
    cfg = TrainConfig.for_profile(_given(options.profile, DEFAULT_PROFILE),
                                  seed=_given(options.seed, _DEFAULTS["seed"]), select=_absolute(options.select),
                                  **given)
    _set_per_stage(cfg, options, "epochs", EPOCH_OPTIONS)
    _set_per_stage(cfg, options, "box", BOX_OPTIONS)
    rep = dataclasses.replace
    if options.gaussians_1 is not None:
        cfg.discovery = rep(cfg.discovery, n_gaussians=options.gaussians_1)
    if options.handles_1 is not None:
        cfg.discovery = rep(cfg.discovery, handles=options.handles_1)
    if options.gaussians_2 is not None:
        cfg.hierarchical = rep(cfg.hierarchical, n_gaussians=options.gaussians_2)
    if options.no_anchors:
        cfg.hierarchical = rep(cfg.hierarchical, anchors=False)
    if options.batch_size is not None:
        cfg.consensus = rep(cfg.consensus, batch_size=options.batch_size)
        cfg.discovery = rep(cfg.discovery, batch_size=options.batch_size)
        cfg.hierarchical = rep(cfg.hierarchical, batch_size=options.batch_size)
    cfg.preprocess = rep(cfg.preprocess, **_preprocess_changes(options))
    return cfg


def _preprocess_changes(options: TrainOptions) -> dict[str, Any]:
    """The :class:`~cryospire_core.pipeline.preprocess.PreprocessConfig` fields the options set."""
    given = {"window": False if options.no_window else None, "window_radius": options.window_radius,
             "normalize": options.normalize, "noise_weighting": True if options.noise_weighting else None}
    return {name: value for name, value in given.items() if value is not None}


def _option_value(options: TrainOptions, option: str):
    """The value of the command-line option ``option`` (``--epochs-1``) in ``options``."""
    return getattr(options, option[2:].replace("-", "_"))


def _set_per_stage(cfg: TrainConfig, options: TrainOptions, field_name: str, stage_options: dict[str, str]) -> None:
    """``field_name`` of each stage section from its option in ``stage_options`` (section ->
    option, e.g. :data:`EPOCH_OPTIONS`) where given."""
    for section, option in stage_options.items():
        value = _option_value(options, option)
        if value is not None:
            setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **{field_name: value}))


def resumed_config(options: TrainOptions, saved: dict, run: RunFolder, recluster: bool = False) -> TrainConfig:
    """The saved config of ``run`` (``saved``: its config.json) with what a resume may change:
    epochs (a finished stage continues to more), checkpoint minutes, precision, the part counts
    (before the clustering, or with ``recluster``), the selection (before stage 2 starts) and
    a stage's box (before that stage starts).
    An option that would change the trained models (profile, sizes, batch size, seed, anchors,
    window, normalisation, noise weighting) and differs from the run's is refused rather than
    ignored."""
    cfg = TrainConfig.from_dict(saved["train"], run.config_path)
    fixed = {"--profile": (options.profile, cfg.profile), "--seed": (options.seed, cfg.seed),
             "--gaussians-1": (options.gaussians_1, cfg.discovery.n_gaussians),
             "--handles-1": (options.handles_1, cfg.discovery.handles),
             "--gaussians-2": (options.gaussians_2, cfg.hierarchical.n_gaussians),
             "--batch-size": (options.batch_size, cfg.hierarchical.batch_size),
             "--no-anchors": (True if options.no_anchors else None, not cfg.hierarchical.anchors)}
    pre = cfg.preprocess  # the data term: what a trained stage was fitted with
    fixed |= {"--no-window": (True if options.no_window else None, not pre.window),
              "--window-radius": (options.window_radius, pre.window_radius),
              "--normalize": (options.normalize, pre.normalize),
              "--noise-weighting": (True if options.noise_weighting else None, pre.noise_weighting)}
    for option, (given, value) in fixed.items():
        if given is not None and given != value:
            raise InputError(run.config_path, option, f"the run's {value} with --resume (start a new run folder to "
                             "change it)", given)
    for stage, option in BOX_OPTIONS.items():
        given, value = _option_value(options, option), getattr(cfg, stage).box
        if given is not None and given != value and run.stage_path(stage).exists():
            raise InputError(run.config_path, option, f"the run's {value or 'stack box'} with --resume once "
                             f"{stage} has started (start a new run folder to change it)", given)
    _set_per_stage(cfg, options, "epochs", EPOCH_OPTIONS)
    _set_per_stage(cfg, options, "box", BOX_OPTIONS)
    cfg.checkpoint_minutes = _given(options.checkpoint_minutes, cfg.checkpoint_minutes)
    cfg.precision = _given(options.precision, cfg.precision)
    for option, field_name in _PART_FIELDS.items():
        given = getattr(options, option)
        if recluster:  # re-clustering with new counts is the point; unset ones go back to the defaults
            setattr(cfg, field_name, _given(given, _DEFAULTS[field_name]))
        elif given is not None and given != getattr(cfg, field_name):
            if run.clustering_path.exists():
                raise InputError(run.clustering_path, f"--{option.replace('_', '-')}",
                                 "--stage parts with --resume to re-cluster a run that has its parts", given)
            setattr(cfg, field_name, given)
    if options.select is not None:
        if run.stage2_started():
            raise InputError(options.select, "--select", "a run whose stage 2 has not started",
                             "RUN/hierarchical holds a stage-2 model (start a new run from a copy of its stage-1 "
                             "folders)")
        cfg.select = _absolute(options.select)
    return cfg
