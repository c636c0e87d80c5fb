"""A training run is a folder; the command line and the napari plugin read and write the same one.

Layout (every name below is spelled once, in this module: :class:`RunFolder` hands out the paths
and reads the files back, checked)::

    RUN/config.json              every option of every stage, the input particles (where they
                                 are: relative to RUN and absolute, ``inputs``), versions
    RUN/run.lock                 held while a process trains into the folder
    RUN/latents.npy              (N, zdim) float32, rows in input particle order (the last finished
                                 latent stage's)
    RUN/selection.npy            (M,) int64, only with ``select``: the particles stage 2 kept (indices
                                 into the input); RUN/latents.npy then has their M rows, in input order
    RUN/explorer_selection.txt   particle indices picked in the latent explorer (``select`` names it)
    RUN/noise_psd.npz            only with noise weighting: each optics group's radial noise power
                                 spectrum, measured at the stack's box (``pipeline.preprocess``)
    RUN/consensus/backprojection.mrc   the map the consensus is seeded from (cached)
                  checkpoint.pt        the training loop's state (while and after it runs)
                  gaussians.npz        the fitted mixture: centres (G, 3) Å, widths (G,) Å, amplitudes (G,),
                                       box, apix (the stage is finished once it exists)
                  map.mrc              the mixture rasterised on the data lattice
                  history.json         the image-fit loss per epoch
    RUN/discovery/seed.npz        stage 1's seed: the consensus coarsened to its Gaussian count
                  checkpoint.pt
                  model.pt             the trained weights (a state dict; the stage is finished)
                  outputs.npz          latents (N, zdim), features (G, F), the gates (S, G) of a sample
                                       of images (S,)
                  map.mrc              the improved map that seeds stage 2
    RUN/parts/clustering.npz      the part clustering (:class:`~cryospire_core.models.parts.PartClustering`)
    RUN/hierarchical/seed.npz     stage 2's seed: a mixture with part_index (G,), anchor_centres (K, 3),
                                  anchor_features (K, F), latents (N, zdim)
                     checkpoint.pt
                     model.pt     (the stage is finished)
    RUN/part_motions.npz          cache of the latent explorer's colourings: each particle's presence
                                 and RMS displacement of every part (:meth:`~cryospire_core.analysis.explorer.Explorer.part_motions`)
    RUN/analysis/                 ``cryospire analyze``'s products (:class:`~cryospire_core.analysis.latentspace.AnalysisFiles`)
    RUN/<stage>/.cryospire-tmp-<pid>-<random><suffix>   an atomic write in progress (removed when
                                 the folder is locked again and process <pid> is gone)

A model is saved as its seed arrays (``seed.npz``) plus a state dict (``model.pt``, loaded with
``weights_only=True``): :meth:`RunFolder.model` rebuilds it on any machine for rendering,
analysis and inference, and :meth:`RunFolder.latest_checkpoint_model` the one still training.

cryospire never follows a symbolic link where it keeps its own files: a link in place of
``run.lock``, ``config.json`` or a stage folder (:data:`RUN_FOLDERS`) is refused when the folder
is locked, so a run never writes into, truncates or cleans up the files a link points to.

The config's format version, schema and checks are :mod:`cryospire_core.pipeline.config`'s. The
run's arrays are read by :mod:`cryospire_core.io.arrays`: no pickles, and a truncated or
foreign file is an InputError naming it.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryospire_core import __version__
from cryospire_core.errors import InputError, count_nonfinite
from cryospire_core.io.arrays import read_npy
from cryospire_core.io.atomic import remove_stale_temporaries, write_json
from cryospire_core.io.load import INVERT_CHOICES, ParticleSource
from cryospire_core.io.mixture import load_gaussians, mixture_lattice
from cryospire_core.io.mrc import read_map
from cryospire_core.io.outputs import check_writable_folder, refuse_link
from cryospire_core.io.particles import ParticleSet
from cryospire_core.models.consensus import ConsensusFiles, GaussianMixture
from cryospire_core.models.discovery import DiscoveryConfig, PartDiscoveryModel
from cryospire_core.models.engine import load_loop_state, read_weights
from cryospire_core.models.hierarchical import HierarchicalConfig, PartAwareModel
from cryospire_core.models.parts import PartClustering
from cryospire_core.pipeline.config import (
    RUN_FORMAT_VERSION,
    InputPath,
    TrainConfig,
    inputs_from_dict,
    migrate_config,
    shown_json,
)

# The layout (see the module docstring); nothing outside this module spells these names.
CONFIG = "config.json"
LOCK = "run.lock"
LATENTS = "latents.npy"
SELECTION = "selection.npy"
EXPLORER_SELECTION = "explorer_selection.txt"
NOISE_PSD = "noise_psd.npz"
CONSENSUS, DISCOVERY, PARTS, HIERARCHICAL, ANALYSIS = "consensus", "discovery", "parts", "hierarchical", "analysis"
BACKPROJECTION = "backprojection.mrc"
CHECKPOINT = "checkpoint.pt"
GAUSSIANS = "gaussians.npz"
MAP = "map.mrc"
HISTORY = "history.json"
SEED = "seed.npz"
MODEL = "model.pt"
OUTPUTS = "outputs.npz"
CLUSTERING = "clustering.npz"

STAGE_FILES: dict[str, tuple[str, ...]] = {
    CONSENSUS: (BACKPROJECTION, CHECKPOINT, GAUSSIANS, MAP, HISTORY),
    DISCOVERY: (SEED, CHECKPOINT, MODEL, OUTPUTS, MAP),
    PARTS: (CLUSTERING,),
    HIERARCHICAL: (SEED, CHECKPOINT, MODEL),
}
"""The files each stage folder holds."""
FINISHED = {CONSENSUS: GAUSSIANS, DISCOVERY: MODEL, PARTS: CLUSTERING, HIERARCHICAL: MODEL}
"""The file each stage writes last: the stage is finished when it exists."""
TRAINED_STAGES = (HIERARCHICAL, DISCOVERY)
"""The stages whose trained model renders maps at latents, most advanced first."""
STAGE2_SEED = ("part_index", "anchor_centres", "anchor_features", "latents")
"""The arrays a stage-2 seed.npz holds beyond its Gaussian mixture."""

RUN_FOLDERS = (CONSENSUS, DISCOVERY, PARTS, HIERARCHICAL, ANALYSIS)
"""The folders a run writes into itself (a symbolic link in their place is refused)."""
RUN_FILES = (LATENTS, SELECTION, NOISE_PSD)
"""The files a run writes at its top level besides config.json and run.lock."""
_INPUT_WORDS = {"particles": "the particle file", "poses": "the poses file", "ctf": "the CTF file",
                "datadir": "the data folder"}
"""How an error names each input of config.json ``inputs``."""


class RunFolder:
    """One run folder: where each of its files is (the layout of the module docstring), its
    shared config, its training lock, and checked readers of what it holds. A reader refuses a
    missing, truncated or foreign file with an InputError naming the file and the field."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    # -- the layout: paths only, nothing is read or made ----------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK

    @property
    def latents_path(self) -> Path:
        return self.root / LATENTS

    @property
    def selection_path(self) -> Path:
        return self.root / SELECTION

    @property
    def noise_psd_path(self) -> Path:
        """RUN/noise_psd.npz (:class:`~cryospire_core.pipeline.preprocess.NoiseSpectrum`)."""
        return self.root / NOISE_PSD

    @property
    def explorer_selection_path(self) -> Path:
        return self.root / EXPLORER_SELECTION

    @property
    def part_motions_path(self) -> Path:
        return self.root / "part_motions.npz"

    @property
    def analysis_dir(self) -> Path:
        return self.root / ANALYSIS

    def stage_path(self, stage: str) -> Path:
        """RUN/<stage> (:data:`RUN_FOLDERS`), not made (:meth:`stage_dir` makes it)."""
        if stage not in RUN_FOLDERS:
            raise ValueError(f"no stage folder {stage!r} in a run ({', '.join(RUN_FOLDERS)})")
        return self.root / stage

    def _file(self, stage: str, name: str) -> Path:
        if name not in STAGE_FILES.get(stage, ()):
            raise ValueError(f"a run's {stage} folder holds no {name}")
        return self.root / stage / name

    def seed_path(self, stage: str) -> Path:
        """RUN/<stage>/seed.npz of discovery or hierarchical."""
        return self._file(stage, SEED)

    def checkpoint_path(self, stage: str) -> Path:
        """RUN/<stage>/checkpoint.pt of consensus, discovery or hierarchical."""
        return self._file(stage, CHECKPOINT)

    def model_path(self, stage: str) -> Path:
        """RUN/<stage>/model.pt of discovery or hierarchical."""
        return self._file(stage, MODEL)

    def map_path(self, stage: str) -> Path:
        """RUN/<stage>/map.mrc of consensus (the mixture) or discovery (the map seeding stage 2)."""
        return self._file(stage, MAP)

    @property
    def backprojection_path(self) -> Path:
        return self._file(CONSENSUS, BACKPROJECTION)

    @property
    def gaussians_path(self) -> Path:
        """RUN/consensus/gaussians.npz."""
        return self._file(CONSENSUS, GAUSSIANS)

    @property
    def history_path(self) -> Path:
        return self._file(CONSENSUS, HISTORY)

    @property
    def outputs_path(self) -> Path:
        """RUN/discovery/outputs.npz."""
        return self._file(DISCOVERY, OUTPUTS)

    @property
    def clustering_path(self) -> Path:
        return self._file(PARTS, CLUSTERING)

    def finished_path(self, stage: str) -> Path:
        """The file ``stage`` writes last (:data:`FINISHED`)."""
        return self._file(stage, FINISHED[stage])

    def stage_done(self, stage: str) -> bool:
        """Whether ``stage`` (consensus, discovery, parts, hierarchical) is finished."""
        return self.finished_path(stage).exists()

    def stage2_started(self) -> bool:
        """True once stage 2 has written anything of its own (its seed, checkpoint or model): from
        then on its particle selection is fixed. An empty RUN/hierarchical folder is not a start."""
        return any(p.exists() for p in (self.seed_path(HIERARCHICAL), self.checkpoint_path(HIERARCHICAL),
                                        self.model_path(HIERARCHICAL)))

    def trained_stage(self) -> str | None:
        """The most advanced finished stage with a model that renders maps at latents
        (:data:`TRAINED_STAGES`), or None."""
        return next((stage for stage in TRAINED_STAGES if self.stage_done(stage)), None)

    def stage_dir(self, stage: str) -> Path:
        """RUN/<stage>, made if missing; InputError when it is a symbolic link."""
        d = self.stage_path(stage)
        refuse_link(d, "run folder", "folder")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def consensus_files(self) -> ConsensusFiles:
        """Where the consensus fit writes (RUN/consensus, made if missing)."""
        self.stage_dir(CONSENSUS)
        return ConsensusFiles(self.backprojection_path, self.checkpoint_path(CONSENSUS), self.gaussians_path,
                              self.map_path(CONSENSUS), self.history_path)

    # -- the config -----------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The config (migrated to :data:`RUN_FORMAT_VERSION`, its sections checked by
        :data:`SECTIONS`), or {} for a new run; InputError naming the key for anything else."""
        if not self.config_path.exists():
            return {}
        try:
            cfg = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise InputError(self.config_path, "config", "a JSON run config written by cryospire", exc) from exc
        if not isinstance(cfg, dict):
            raise InputError(self.config_path, "config", "a JSON object written by cryospire", type(cfg).__name__)
        return migrate_config(cfg, self.config_path)

    def train_config(self) -> TrainConfig:
        """The section ``train`` of the config as a checked TrainConfig; InputError when the run
        was not trained by ``cryospire train`` (or the train dock)."""
        # imported here: train.py imports this module

        saved = self.config()
        if "train" not in saved:
            raise InputError(self.config_path, "train", "a run trained by `cryospire train`", "no train section")
        return TrainConfig.from_dict(saved["train"], self.config_path)

    def n_particles(self) -> int:
        """How many particles the run was trained on (config.json ``n_particles``)."""
        saved = self.config()
        if "n_particles" not in saved:
            raise InputError(self.config_path, "n_particles", "the number of particles the run was trained on", "none")
        return saved["n_particles"]

    def config_for(self, section: str, resume: bool, resume_hint: str = "--resume") -> dict[str, Any]:
        """The saved config, refusing to start ``section`` over a run that already has it unless
        ``resume`` (a rerun of the same command must not silently overwrite a run); the refusal
        names ``resume_hint`` as the way to continue (a GUI names its button)."""
        saved = self.config()
        if section in saved and not resume:
            raise InputError(self.config_path, section, f"a new run folder, or {resume_hint} to continue this run",
                             f"a {section} run already in it")
        return saved

    def update_config(self, **sections: Any) -> dict[str, Any]:
        """Store each section (a dataclass, a dict or a plain JSON value) under its name and write
        the config atomically."""
        cfg = self.config()
        cfg["format_version"] = RUN_FORMAT_VERSION
        cfg["cryospire"] = __version__
        for name, values in sections.items():
            cfg[name] = dataclasses.asdict(values) if dataclasses.is_dataclass(values) else values
        write_json(self.config_path, cfg)
        return cfg

    # -- what the run holds, read and checked ---------------------------------------------------

    def latents(self) -> np.ndarray:
        """RUN/latents.npy as (N, zdim) float32, N >= 2, finite in float32."""
        path = self.latents_path
        z = read_npy(path, "latents")
        if z.ndim != 2 or len(z) < 2 or not np.issubdtype(z.dtype, np.floating) or not np.all(np.isfinite(z)):
            raise InputError(path, "latents", "a finite float (N, zdim) array with N >= 2", f"{z.dtype} {z.shape}")
        big = np.abs(z) > np.finfo(np.float32).max
        if big.any():  # finite in float64, inf once float32
            row = int(np.argwhere(big)[0][0]) + 1
            raise InputError(path, "latents", "values finite in float32 (|z| <= 3.4e38)",
                             f"{int(big.sum())} larger values, the first in row {row}")
        return z.astype(np.float32)

    def selection(self, n_particles: int | None = None) -> np.ndarray | None:
        """RUN/selection.npy: (M,) indices of the particles stage 2 kept, None when the run keeps
        all; checked to be whole numbers >= 0 (below ``n_particles`` when given)."""
        path = self.selection_path
        if not path.exists():
            return None
        keep = read_npy(path, "selection")
        top = None if n_particles is None else n_particles - 1
        if keep.ndim != 1 or keep.dtype.kind not in "iu" or not len(keep) or keep.min() < 0 \
                or (top is not None and keep.max() > top):
            where = "0.." + (str(top) if top is not None else "N-1")
            raise InputError(path, "selection", f"indices in {where} of the particles stage 2 keeps",
                             f"{keep.dtype} array of shape {keep.shape}")
        return keep

    def clustering(self) -> PartClustering | None:
        """RUN/parts/clustering.npz, None before the parts stage has run."""
        return PartClustering.from_npz(self.clustering_path) if self.clustering_path.exists() else None

    def gaussians(self, stage: str, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """The Gaussian mixture of ``stage``, with the arrays ``keys`` besides
        (:func:`~cryospire_core.io.mixture.load_gaussians`): consensus: the fitted
        RUN/consensus/gaussians.npz; discovery, hierarchical: the stage's seed (stage 2's holds
        :data:`STAGE2_SEED` too)."""
        return load_gaussians(self.gaussians_path if stage == CONSENSUS else self.seed_path(stage), keys)

    def part_gaussians(self) -> tuple[dict[str, np.ndarray], np.ndarray, Path] | None:
        """The Gaussians that carry part labels, their part index (G,) and their file: the
        stage-2 seed (its own ``part_index``), else the stage-1 seed labelled by the clustering;
        None when the run has no clustering or no such seed yet."""
        clustering = self.clustering()
        if clustering is None:
            return None
        stage2 = self.seed_path(HIERARCHICAL)
        if stage2.is_file():
            g = self.gaussians(HIERARCHICAL, ("part_index",))
            return g, g["part_index"].astype(np.int64), stage2
        stage1 = self.seed_path(DISCOVERY)
        if not stage1.is_file():
            return None
        g = self.gaussians(DISCOVERY)
        if len(g["centres"]) != len(clustering.part_index):
            raise InputError(stage1, "centres", f"{len(clustering.part_index)} Gaussians like {self.clustering_path}",
                             len(g["centres"]))
        return g, clustering.part_index, stage1

    def inputs(self) -> dict[str, InputPath]:
        """config.json ``inputs``, checked: where each input file was when the run last started
        (relative to the run folder and absolute); {} for a run that recorded none (format 2)."""
        return inputs_from_dict(self.config().get("inputs") or {}, self.config_path)

    def input_field(self, name: str) -> str:
        """The config.json key that records input ``name`` (:data:`~cryospire_core.pipeline.config.INPUTS`):
        ``inputs.<name>``, or ``train_command.<name>`` for a run that recorded no inputs."""
        return f"inputs.{name}" if name in self.inputs() else f"train_command.{name}"

    def input_candidates(self, name: str) -> list[Path]:
        """Where input ``name`` (particles, poses, ctf, datadir) is looked for, in order, without
        repeats: relative to the run folder and absolute, as config.json ``inputs`` records them;
        then the legacy ways, from ``train_command`` as given: relative to the current directory,
        to the run folder and beside it."""
        recorded = self.inputs().get(name)
        found = list(recorded.candidates(self.root)) if recorded is not None else []
        given = (self.config().get("train_command") or {}).get(name)
        if given and isinstance(given, str):
            found += [os.path.abspath(given), os.path.abspath(self.root / given), os.path.abspath(self.root.parent / given)]
        return [Path(p) for p in dict.fromkeys(found)]

    def input_path(self, name: str) -> Path | None:
        """Input ``name`` (a file; ``datadir``: a folder) at the first of :meth:`input_candidates`
        that has it, resolved; None when none has."""
        exists = Path.is_dir if name == "datadir" else Path.is_file
        return next((p.resolve() for p in self.input_candidates(name) if exists(p)), None)

    def missing_input(self, name: str, remedy: str | None = None) -> InputError:
        """The error for input ``name`` found nowhere: one line naming config.json, the key that
        records it, every place tried and ``remedy`` (e.g. ``give it with --particles``)."""
        expected = f"{_INPUT_WORDS[name]} the run was trained on" + (f" ({remedy})" if remedy else "")
        tried = self.input_candidates(name)
        found = "none of " + ", ".join(map(str, tried)) if tried else "no path recorded"
        return InputError(self.config_path, self.input_field(name), expected, found)

    def particles_path(self) -> Path | None:
        """The particle file the run was trained on (:meth:`input_path`), None when unknown or gone."""
        return self.input_path("particles")

    def particles(self) -> ParticleSet:
        """The run's particles, read as its training command read them (:meth:`particle_source`)."""
        return self.particle_source().load()

    def particle_source(self, particles: str | os.PathLike | None = None,
                        remedy: str = "give it with --particles") -> ParticleSource:
        """Where the run's particles come from, as its training command recorded it (particle
        file, poses and CTF files, data folder, contrast, pixel size), each file found by
        :meth:`input_path`; ``particles`` names the particle file instead (the user's, for a run
        whose file moved). InputError naming config.json (:meth:`missing_input`, with ``remedy``)
        when the particle file is found nowhere."""
        command = self.config().get("train_command") or {}
        path = Path(particles) if particles is not None else self.particles_path()
        if path is None:
            raise self.missing_input("particles", remedy)
        invert = command.get("invert", "auto")
        if invert not in INVERT_CHOICES:
            raise InputError(self.config_path, "train_command.invert", " or ".join(INVERT_CHOICES), shown_json(invert))
        # A file found nowhere stays as recorded: reading it names it.
        poses, ctf, datadir = (self.input_path(name) or command.get(name) for name in ("poses", "ctf", "datadir"))
        return ParticleSource(path, poses=poses, ctf=ctf, datadir=datadir, invert=INVERT_CHOICES[invert],
                              apix=command.get("apix"))

    def record_input(self, name: str, path: str | os.PathLike) -> None:
        """Record ``path`` as input ``name`` of the run (config.json ``inputs``, written
        atomically under the run's lock): a particle file the user pointed at after the run or
        its data moved is found from then on. ``train_command`` keeps what training was given."""
        with self:
            inputs = {key: dataclasses.asdict(value) for key, value in self.inputs().items()}
            inputs[name] = dataclasses.asdict(InputPath.of(path, self.root))
            self.update_config(inputs=inputs)

    # -- models ---------------------------------------------------------------------------------

    def seeded_model(self, stage: str, cfg: DiscoveryConfig | HierarchicalConfig,
                     n_particles: int | None = None) -> PartDiscoveryModel | PartAwareModel:
        """An untrained model of ``stage`` (discovery or hierarchical) built from its seed.npz
        and its config ``cfg``; stage 1 has one latent per particle (``n_particles``), stage 2 the
        latents its seed holds."""
        path = self.seed_path(stage)
        g = self.gaussians(stage, STAGE2_SEED if stage == HIERARCHICAL else ())
        if stage == DISCOVERY:
            if n_particles is None:
                raise ValueError("a stage-1 model needs its particle count")
            return _build(path, lambda: PartDiscoveryModel(g["centres"], g["widths"], g["amplitudes"], n_particles,
                                                           mixture_lattice(g), cfg))
        latents = g["latents"]
        if latents.ndim != 2 or latents.shape[1] != cfg.zdim or not np.all(np.isfinite(latents)):
            raise InputError(path, "latents", f"(N, {cfg.zdim}) finite numbers (zdim of config.json)",
                             f"{latents.dtype} array of shape {latents.shape}")
        return _build(path, lambda: PartAwareModel(g["centres"], g["widths"], g["amplitudes"], g["part_index"],
                                                   g["anchor_centres"], g["anchor_features"], latents,
                                                   mixture_lattice(g), cfg))

    def weights(self, stage: str) -> dict[str, torch.Tensor]:
        """The trained weights of ``stage`` (RUN/<stage>/model.pt): a state dict of finite tensors."""
        path = self.model_path(stage)
        state = read_weights(path, "model", "a state dict saved by `cryospire train` (tensors only)")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError(path, "model", "a state dict saved by `cryospire train` (name -> tensor)",
                             type(state).__name__)
        bad = count_nonfinite(state)
        if bad:
            raise InputError(path, "weights", "finite numbers", f"{bad} NaN/Inf values (a damaged file)")
        return state

    def model(self, stage: str | None = None) -> PartDiscoveryModel | PartAwareModel:
        """The trained model of ``stage`` (discovery or hierarchical; None: the most advanced one,
        :meth:`trained_stage`) rebuilt from config.json, its seed.npz and its final weights
        (model.pt), on the CPU, in eval mode."""
        if not self.root.is_dir():
            raise InputError(self.root, "run folder", "a run folder trained by `cryospire train`", "no such folder")
        train_cfg = self.train_config()
        stage = stage or self.trained_stage()
        if stage is None:
            raise InputError(self.root, "model", "a finished stage 1 or stage 2 (RUN/<stage>/model.pt)", "none yet")
        cfg = getattr(train_cfg, stage)
        model = self.seeded_model(stage, cfg, self.n_particles() if stage == DISCOVERY else None)
        return _with_weights(model, self.weights(stage), self.model_path(stage)).eval()

    def latest_checkpoint_model(self, stage: str) -> GaussianMixture | PartDiscoveryModel | PartAwareModel:
        """The model of ``stage`` (consensus, discovery or hierarchical) as its newest checkpoint
        holds it (a preview while it trains), on the CPU, in eval mode. The consensus mixture
        takes its lattice from the backprojection it was seeded from."""
        path = self.checkpoint_path(stage)
        cfg = getattr(self.train_config(), stage)
        state = load_loop_state(path)["model"]
        if stage == CONSENSUS:
            bp = read_map(self.backprojection_path)
            n = len(state.get("amplitudes", ()))
            model = GaussianMixture(np.zeros((n, 3)), np.ones(n), np.zeros(n), bp.lattice, cfg.min_width_px)
        else:
            model = self.seeded_model(stage, cfg, self.n_particles() if stage == DISCOVERY else None)
        return _with_weights(model, state, path).eval()

    def lock(self) -> None:
        """Take the folder's training lock (released by :meth:`unlock` or when the process dies).

        Before anything is written, refuses (InputError) a root that is a file or a folder we
        cannot write to, and a symbolic link in place of run.lock, config.json or a stage folder."""
        self._refuse_foreign_paths()
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.lock_path
        try:
            # O_NOFOLLOW: a link put there after the check must not get its target truncated.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse_link(lock_path, "run folder")
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = lock_path.read_text().strip() or "?"
                raise InputError(lock_path, "run lock",
                                 "no other cryospire process training into this run folder",
                                 f"held by process {holder}") from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self._remove_stale_temporaries()

    def _refuse_foreign_paths(self) -> None:
        """InputError for a root we cannot write into, or a link where the run keeps its files."""
        check_writable_folder(self.root, "run folder")
        for path in (self.lock_path, self.config_path):
            refuse_link(path, "run folder")
        for name in RUN_FOLDERS:
            refuse_link(self.stage_path(name), "run folder", "folder")
        if self.root.is_dir() and not self.config_path.exists():
            # Without config.json the folder is not a run: whatever already has a run's names
            # in it is the user's, and training would write into it.
            taken = sorted(name for name in (*RUN_FOLDERS, *RUN_FILES) if (self.root / name).exists())
            if taken:
                raise InputError(self.root, "run folder", "a new or empty folder, or a run folder cryospire "
                                 "made (with its config.json)", f"{', '.join(taken)} already in it and no config.json")

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files of atomic writes a killed process left in the folder and
        its stage folders: only files with cryospire's temporary name whose writer is gone
        (:func:`~cryospire_core.io.atomic.stale_temporary`), never behind a symbolic link."""
        remove_stale_temporaries(self.root)
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    remove_stale_temporaries(entry.path)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()


def _build(path: Path, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()``, with the model's complaints about its seed arrays as an InputError naming ``path``."""
    try:
        return make()
    except (ValueError, RuntimeError, IndexError) as exc:
        raise InputError(path, "arrays", "a seed that fits the run's config.json", " ".join(str(exc).split())[:300]) \
            from exc


def _with_weights(model: torch.nn.Module, state: dict, path: Path) -> torch.nn.Module:
    """``model`` with the weights ``state`` (read from ``path``); InputError when they are not this
    model's (another run's, or a config.json or seed.npz edited since)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing or unexpected keys, shape mismatches
        detail = " ".join(str(exc).split())
        raise InputError(path, "model", "the weights of the model that config.json and seed.npz describe",
                         detail[:300]) from exc
    return model
