"""Fitting a consensus run (stage 0 alone): one path from a request to a locked run folder whose
RUN/consensus holds the fitted mixture, shared by ``cryospire consensus`` and the napari sample
data.

:func:`consensus_run` does the start-up steps in the order the command line always has: refuse
a new start over a run that already has a consensus (unless resuming), lock the folder, take the
config (a new run's from the request, or the saved one with the seed map and checkpoint interval
the killed fit had), read the particles. Inside the ``with`` block, :meth:`ConsensusRun.fit`
makes the seed map, writes the run's config only once that map is known good (a refused request
leaves neither a config, which would make the corrected one need a resume, nor RUN/consensus,
which would make the folder foreign to it), and fits, continuing from
RUN/consensus/checkpoint.pt when there is one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cryospire_core.errors import InputError
from cryospire_core.io.load import ParticleSource
from cryospire_core.io.particles import ParticleSet
from cryospire_core.models.consensus import (
    ConsensusConfig,
    ConsensusResult,
    fit_consensus,
    seed_map,
)
from cryospire_core.models.device import resolve_device
from cryospire_core.models.engine import LoopConfig
from cryospire_core.pipeline.config import section_from_dict
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.progress import ProgressCallback
from cryospire_core.ranges import MINUTES


@dataclass(frozen=True)
class ConsensusRequest:
    """Everything a consensus fit needs.

    source: the particles (:class:`~cryospire_core.io.load.ParticleSource`); out: the run folder (made if missing); map: the .mrc
    to seed the Gaussians from, on the particles' box and pixel size (None: the particles'
    backprojection, cached in RUN/consensus); config: a new run's (a resumed run keeps its
    saved one); checkpoint_minutes: minutes between checkpoints inside an epoch; resume:
    continue the run in ``out`` (a new start over a run with a consensus is refused);
    resume_hint: how that refusal names resuming; device: ``auto``, ``cpu``, ``cuda`` or
    ``cuda:N``; command: saved as the run's ``consensus_command``, with ``map`` and
    ``checkpoint_minutes`` set (a resume reads them back).
    """

    source: ParticleSource
    out: str | os.PathLike
    map: str | os.PathLike | None = None
    config: ConsensusConfig = field(default_factory=ConsensusConfig)
    checkpoint_minutes: float = LoopConfig(epochs=1).checkpoint_minutes  # the training loop's default
    resume: bool = False
    resume_hint: str = "--resume"
    device: str = "auto"
    command: dict[str, Any] = field(default_factory=dict)



@dataclass
class ConsensusRun:
    """A run folder locked for a consensus fit (made by :func:`consensus_run`).

    run: the folder (its lock held); particles: the N input particles; config: the fit's, as
    saved in RUN/config.json; device: where to fit; map: the seed map's file (None: the
    particles' backprojection); checkpoint_minutes: minutes between checkpoints; command: the
    ``consensus_command`` to save with the config (None on a resume: the killed fit's config
    stays).
    """

    run: RunFolder
    particles: ParticleSet
    config: ConsensusConfig
    device: torch.device
    map: str | None
    checkpoint_minutes: float
    command: dict[str, Any] | None

    def summary(self) -> str:
        """One line: what is fitted where."""
        ps = self.particles
        return f"{len(ps)} particles of {ps.box} px at {ps.apix:.4g} Å/px on {self.device}"

    def fit(self, progress: ProgressCallback | None = None,
            should_stop: Callable[[], bool] | None = None) -> ConsensusResult:
        """Seed, save the config and fit into RUN/consensus
        (:func:`cryospire_core.models.consensus.fit_consensus`); the result's status is
        ``finished``, or ``cancelled`` once ``should_stop()`` said so (a checkpoint left to
        resume from). InputError, with nothing written, when the seed map is off the particles'
        lattice."""
        init_map = self._seed(progress)
        if self.command is not None:
            self.run.update_config(consensus_command=self.command, consensus=self.config)
        return fit_consensus(self.particles, init_map, self.run.consensus_files(), self.config, self.device,
                             progress=progress, should_stop=should_stop, checkpoint_minutes=self.checkpoint_minutes)

    def _seed(self, progress: ProgressCallback | None) -> np.ndarray:
        """The (D, D, D) seed map: the user's, checked before RUN/consensus is made (a folder
        with a stage folder and no config.json is not a run: the corrected request would be
        refused), else the particles' backprojection, computed once and cached there."""
        if self.map is not None:
            return seed_map(self.particles, self.run.backprojection_path, self.device, user_map=self.map)
        return seed_map(self.particles, self.run.consensus_files().backprojection, self.device, progress=progress)


@contextlib.contextmanager
def consensus_run(request: ConsensusRequest) -> Iterator[ConsensusRun]:
    """The run of ``request``, locked for the ``with`` block (see the module docstring);
    InputError for a new start over a run with a consensus, a foreign or locked folder, a
    damaged saved config, or unreadable particles."""
    run = RunFolder(request.out)
    saved = run.config_for("consensus", request.resume, request.resume_hint)
    device = resolve_device(request.device)
    with run:
        resumed = request.resume and "consensus" in saved
        user_map = None if request.map is None else str(request.map)
        if resumed:
            cfg, user_map, minutes = _resumed(saved, run, user_map, request.checkpoint_minutes)
        else:
            cfg, minutes = request.config, request.checkpoint_minutes
        ps = request.source.load()
        command = None if resumed else {**request.command, "map": user_map, "checkpoint_minutes": minutes}
        yield ConsensusRun(run, ps, cfg, device, user_map, minutes, command)


def _resumed(saved: dict, run: RunFolder, user_map: str | None,
             checkpoint_minutes: float) -> tuple[ConsensusConfig, str | None, float]:
    """The saved config of a killed fit, its seed map (unless ``user_map`` names one) and its
    checkpoint interval: the resumed model must be seeded from the same map, and checkpoint as
    often, as the killed one."""
    cfg = section_from_dict(ConsensusConfig, saved["consensus"], run.config_path, "consensus")
    command = saved.get("consensus_command", {})
    user_map = user_map or command.get("map")
    checkpoint_minutes = command.get("checkpoint_minutes", checkpoint_minutes)
    if not (user_map is None or isinstance(user_map, str)) or not MINUTES.accepts(checkpoint_minutes):
        raise InputError(run.config_path, "consensus_command", f"map: a file name, checkpoint_minutes: "
                         f"{MINUTES.what}", f"{user_map!r}, {checkpoint_minutes!r}")
    return cfg, user_map, checkpoint_minutes
