"""The whole CryoSPIRE pipeline into one run folder: consensus, stage 1 (part discovery),
clustering into parts, stage 2 (the part-aware hierarchical model).

Each stage writes its products into its own sub-folder and is skipped when they exist, so a run
killed anywhere continues with ``--resume``: a finished stage is not redone and an unfinished
one continues from its checkpoint. Models are saved as their seed arrays (``seed.npz``) plus a
state dict (``model.pt``, loaded with ``weights_only=True``), enough to rebuild them for
rendering, analysis and inference on any machine.

Run folder (beyond the consensus files, see :mod:`runfolder`)::

    RUN/discovery/seed.npz, model.pt, outputs.npz (latents, features, gates of a sample), map.mrc,
                   checkpoint.pt
    RUN/parts/clustering.npz
    RUN/hierarchical/seed.npz, model.pt, checkpoint.pt
    RUN/latents.npy          (N, zdim) float32, rows in input particle order (the last stage's)
    RUN/selection.npy        (M,) int64, only with ``select``: the particles stage 2 kept (indices
                             into the input); RUN/latents.npy then has their M rows, in input order
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryospire_core.errors import InputError, count_nonfinite, require_finite
from cryospire_core.imaging.precision import PRECISIONS, resolve_precision
from cryospire_core.io.arrays import read_npy, read_npz
from cryospire_core.io.atomic import write_npy, write_npz
from cryospire_core.io.mixture import load_gaussians
from cryospire_core.io.mrc import read_map, write_map
from cryospire_core.io.particles import ParticleSet
from cryospire_core.io.selection import read_selection
from cryospire_core.models.consensus import (
    ConsensusConfig,
    GaussianMixture,
    fit_consensus,
    fit_to_map,
    seed_from_map,
    seed_map,
)
from cryospire_core.models.discovery import (
    MLP_FORMS,
    DiscoveryConfig,
    PartDiscoveryModel,
    image_variance,
)
from cryospire_core.models.distributed import Distributed
from cryospire_core.models.engine import (
    DIVERGED,
    LoopConfig,
    load_loop_state,
    read_weights,
    run_loop,
    save_checkpoint,
)
from cryospire_core.models.hierarchical import HierarchicalConfig, PartAwareModel
from cryospire_core.models.parts import (
    PartClustering,
    assign_to_parts,
    discover_parts,
    dynamics_signature,
)
from cryospire_core.pipeline.runfolder import RunFolder, section_from_dict
from cryospire_core.progress import ProgressCallback

STAGES = ("consensus", "discovery", "parts", "hierarchical")
PROFILES = ("cpu", "paper")
PART_SIGNALS = ("dynamics", "features")


@dataclass
class TrainConfig:
    """Every option of ``cryospire train`` (saved as RUN/config.json section ``train``).

    profile: ``cpu`` or ``paper`` (sizes of every stage); parts_level1/parts_level2: ``auto`` or
    a count (``--parts K`` fixes level 1); parts_signal: what level 1 clusters, ``dynamics`` (each
    Gaussian's decoded motion and presence, our default) or ``features`` (the paper's); gate_sample:
    images whose stage-1 decoding feeds the clustering; select: a particle selection (index file,
    or .star/.cs subset, see :mod:`selection`) that stage 2 keeps, dropping junk found after
    stage 1; checkpoint_minutes: between in-epoch checkpoints; seed: of every stage; precision:
    ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:mod:`precision`; auto is bf16 or fp16 on CUDA,
    fp32 on CPUs).
    """

    profile: str = "cpu"
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig.cpu)
    hierarchical: HierarchicalConfig = field(default_factory=HierarchicalConfig.cpu)
    parts_level1: str | int = "auto"
    parts_level2: str | int | None = "auto"
    parts_signal: str = "dynamics"
    gate_sample: int = 512
    select: str | None = None
    checkpoint_minutes: float = 5.0
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(None, "--precision", " or ".join(PRECISIONS), self.precision)

    def loop(self, stage_cfg, device: torch.device) -> LoopConfig:
        """The training loop of one stage's config on ``device``."""
        return LoopConfig.for_stage(stage_cfg, self.checkpoint_minutes, resolve_precision(self.precision, device))

    @classmethod
    def for_profile(cls, profile: str, seed: int = 0, **changes) -> TrainConfig:
        if profile not in PROFILES:
            raise InputError(None, "--profile", " or ".join(PROFILES), profile)
        make = "paper" if profile == "paper" else "cpu"
        return cls(profile=profile, consensus=ConsensusConfig(seed=seed),
                   discovery=getattr(DiscoveryConfig, make)(seed=seed),
                   hierarchical=getattr(HierarchicalConfig, make)(seed=seed), seed=seed, **changes)

    @classmethod
    def from_dict(cls, d: dict, path: str | os.PathLike = "RUN/config.json") -> TrainConfig:
        """The section ``train`` of a run's config.json (``path``, named in errors), checked key
        by key (:func:`~cryospire_core.pipeline.runfolder.section_from_dict`)."""
        return section_from_dict(cls, d, path, "train", required=("profile", "consensus", "discovery", "hierarchical"),
                                 choices=CHOICES)


CHOICES = {"profile": PROFILES, "parts_signal": PART_SIGNALS, "precision": PRECISIONS, "mlp_form": MLP_FORMS}
"""The words each text field of a saved TrainConfig may hold."""


def _save_state(path: Path, model: torch.nn.Module, stage: str) -> None:
    save_checkpoint(path, model.state_dict(), stage)


def _read_state(path: Path) -> dict:
    state = read_weights(path, "model", "a state dict saved by `cryospire train` (tensors only)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "model", "a state dict saved by `cryospire train` (name -> tensor)",
                         type(state).__name__)
    bad = count_nonfinite(state)
    if bad:
        raise InputError(path, "weights", "finite numbers", f"{bad} NaN/Inf values (a damaged file)")
    return state


def _load_state(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``model`` with the weights in ``path``; InputError when they are not this model's (another
    run's, or a config.json or seed.npz edited since)."""
    try:
        model.load_state_dict(_read_state(path))
    except RuntimeError as exc:  # missing or unexpected keys, shape mismatches
        detail = " ".join(str(exc).split())
        raise InputError(path, "model", "the weights of the model that config.json and seed.npz describe",
                         detail[:300]) from exc
    return model


# --------------------------------------------------------------------------------------------
# Building the models from what a run folder holds (training, and later render/analyze/infer)


STAGE2_SEED = ("part_index", "anchor_centres", "anchor_features", "latents")
"""The arrays a stage-2 seed.npz holds beyond its Gaussian mixture."""


def _write_stage1_seed(run: RunFolder, cfg: DiscoveryConfig, n_particles: int) -> None:
    """RUN/discovery/seed.npz: the consensus coarsened to stage 1's Gaussian count."""
    gaussians = load_gaussians(run.root / "consensus" / "gaussians.npz")
    model = PartDiscoveryModel.from_consensus(gaussians, n_particles, cfg)
    g = model.base.export()
    write_npz(run.stage_dir("discovery") / "seed.npz", **{**g, "amplitudes": g["amplitudes"] * _gate0(cfg.gate_bias)})


def discovery_model(run: RunFolder, cfg: DiscoveryConfig, n_particles: int) -> PartDiscoveryModel:
    """Stage 1 rebuilt from RUN/discovery/seed.npz (checked by :func:`cryospire_core.io.mixture.load_gaussians`)."""
    path = run.root / "discovery" / "seed.npz"
    g = load_gaussians(path)
    return _build(path, lambda: PartDiscoveryModel(g["centres"], g["widths"], g["amplitudes"], n_particles,
                                                   int(g["box"]), float(g["apix"]), cfg))


def _build(path: Path, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()``, with the model's complaints about its seed arrays as an InputError naming ``path``."""
    try:
        return make()
    except (ValueError, RuntimeError, IndexError) as exc:
        raise InputError(path, "arrays", "a seed that fits the run's config.json", " ".join(str(exc).split())[:300]) \
            from exc


def _gate0(bias: float) -> float:
    # The models divide seed amplitudes by the initial gate; storing seed x gate0 round-trips.
    return float(1.0 / (1.0 + np.exp(-bias)))


def hierarchical_model(run: RunFolder, cfg: HierarchicalConfig) -> PartAwareModel:
    """Stage 2 rebuilt from RUN/hierarchical/seed.npz: a mixture (:func:`cryospire_core.io.mixture.load_gaussians`)
    with part_index (G,), anchor_centres (K, 3), anchor_features (K, feature_dim), latents (N, zdim)."""
    path = run.root / "hierarchical" / "seed.npz"
    g = load_gaussians(path, STAGE2_SEED)
    latents = g["latents"]
    if latents.ndim != 2 or latents.shape[1] != cfg.zdim or not np.all(np.isfinite(latents)):
        raise InputError(path, "latents", f"(N, {cfg.zdim}) finite numbers (zdim of config.json)",
                         f"{latents.dtype} array of shape {latents.shape}")
    return _build(path, lambda: PartAwareModel(g["centres"], g["widths"], g["amplitudes"], g["part_index"],
                                               g["anchor_centres"], g["anchor_features"], latents, int(g["box"]),
                                               float(g["apix"]), cfg))


def load_trained_model(run_dir: str | Path) -> PartAwareModel | PartDiscoveryModel:
    """The most advanced finished model of a run (stage 2, else stage 1), on the CPU, eval mode.

    Every file it reads is checked (config.json, the stage's seed.npz and model.pt): a damaged,
    truncated or foreign one is an InputError naming it and what it should hold."""
    run = RunFolder(run_dir)
    if not run.root.is_dir():
        raise InputError(run.root, "run folder", "a run folder trained by `cryospire train`", "no such folder")
    saved = run.read_config()
    if "train" not in saved:
        raise InputError(run.config_path, "train", "a run trained by `cryospire train`", "no train section")
    cfg = TrainConfig.from_dict(saved["train"], run.config_path)
    for stage, build in (("hierarchical", lambda: hierarchical_model(run, cfg.hierarchical)),
                         ("discovery", lambda: discovery_model(run, cfg.discovery, _n_particles(run, saved)))):
        if (run.root / stage / "model.pt").exists():
            return _load_state(build(), run.root / stage / "model.pt").eval()
    raise InputError(run.root, "model", "a finished stage 1 or stage 2 (RUN/<stage>/model.pt)", "none yet")


def check_run_latents(model: PartAwareModel | PartDiscoveryModel, latents: np.ndarray, path: Path) -> None:
    """InputError naming ``path`` (RUN/latents.npy) unless ``latents`` has one row per latent of
    ``model`` and the model's latent size."""
    want = tuple(model.latents.weight.shape)
    if latents.shape != want:
        raise InputError(path, "latents", f"{want} numbers (one row of {want[1]} per latent of the run's model)",
                         latents.shape)


def _n_particles(run: RunFolder, saved: dict) -> int:
    if "n_particles" not in saved:
        raise InputError(run.config_path, "n_particles", "the number of particles the run was trained on", "none")
    return saved["n_particles"]


# --------------------------------------------------------------------------------------------
# Stages


def _on_main(dist: Distributed, write: Callable[[], object]) -> None:
    """Run ``write`` (which writes files) on rank 0 only; every rank waits until it is done."""
    if dist.is_main:
        write()
    dist.barrier()


def _stage_consensus(ps, run, cfg, device, progress, should_stop, dist) -> str:
    out = run.root / "consensus"
    if (out / "gaussians.npz").exists() and not _more_epochs(run, "consensus", cfg):
        return "finished"
    out = run.stage_dir("consensus")
    if dist.active:  # rank 0 computes and caches the map; the others read it
        _on_main(dist, lambda: seed_map(ps, out, device, progress))
    init_map = seed_map(ps, out, device, progress)
    loop = cfg.loop(cfg.consensus, device)
    return fit_consensus(ps, init_map, out, cfg.consensus, device, progress, should_stop, cfg.checkpoint_minutes,
                         loop.precision, dist).status


def _stage_discovery(ps, run, cfg, device, progress, should_stop, dist) -> str:
    out = run.root / "discovery"
    if (out / "model.pt").exists() and not _more_epochs(run, "discovery", cfg):
        return "finished"
    dcfg = cfg.discovery
    if dcfg.image_var == 1.0:  # scale the data term once, from the data, and remember it
        dcfg = dataclasses.replace(dcfg, image_var=image_variance(ps, seed=dcfg.seed))
        cfg.discovery = dcfg
        _on_main(dist, lambda: run.update_config(train=cfg))
    if not (out / "seed.npz").exists():  # rank 0 writes the seed, every rank reads it
        _on_main(dist, lambda: _write_stage1_seed(run, dcfg, len(ps)))
    model = discovery_model(run, dcfg, len(ps)).to(device)
    res = run_loop(model, model.make_optimizer(), ps, cfg.loop(dcfg, device), out / "checkpoint.pt",
                   STAGE_NAMES["discovery"], device, progress, should_stop, dist=dist)
    if res.status != "finished" or not dist.is_main:
        return res.status
    latents = model.latents.numpy()
    rng = np.random.default_rng(dcfg.seed)
    sample = np.sort(rng.choice(len(ps), size=min(cfg.gate_sample, len(ps)), replace=False))
    with torch.no_grad():
        z = torch.as_tensor(latents[sample], device=device)
        gates = model.gates(z)
        improved = model.improved_map(torch.as_tensor(latents, device=device), gates)
        gates = gates.cpu().numpy()
    write_map(out / "map.mrc", improved.cpu().numpy(), ps.apix)
    write_npz(out / "outputs.npz", latents=latents, gate_sample_index=sample, gates_sample=gates,
              features=model.features().detach().cpu().numpy())
    _save_state(out / "model.pt", model, STAGE_NAMES["discovery"])
    return "finished"


def _stage1_outputs(run: RunFolder, n_particles: int, zdim: int) -> dict[str, np.ndarray]:
    """RUN/discovery/outputs.npz, checked against the run: latents (N, zdim), the gate sample's
    indices (S,) and gates (S, G), features (G, F)."""
    path = run.root / "discovery" / "outputs.npz"
    out = read_npz(path, "stage-1 outputs", ("latents", "gate_sample_index", "gates_sample", "features"))
    idx = out["gate_sample_index"]
    if out["latents"].shape != (n_particles, zdim) or not np.all(np.isfinite(out["latents"])):
        raise InputError(path, "latents", f"({n_particles}, {zdim}) finite numbers (one latent per particle)",
                         f"{out['latents'].dtype} array of shape {out['latents'].shape}")
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or (len(idx) and (idx.min() < 0 or idx.max() >= n_particles)) \
            or out["gates_sample"].ndim != 2 or len(out["gates_sample"]) != len(idx) or out["features"].ndim != 2:
        raise InputError(path, "gate_sample_index, gates_sample, features",
                         f"indices (S,) in 0..{n_particles - 1}, gates (S, G), features (G, F)",
                         f"shapes {idx.shape}, {out['gates_sample'].shape}, {out['features'].shape}")
    return out


def _stage_parts(ps, run, cfg, device, progress, should_stop, dist) -> str:
    out = run.root / "parts"
    if (out / "clustering.npz").exists() or not dist.is_main:  # quick: rank 0 alone clusters
        return "finished"
    model = _load_state(discovery_model(run, cfg.discovery, len(ps)), run.root / "discovery" / "model.pt")
    outputs = _stage1_outputs(run, len(ps), cfg.discovery.zdim)
    with torch.no_grad():
        centres = model.base.centres.numpy()
        masses = (model.base.amplitudes * model.widths**3).abs().numpy()
        shifts = model.shifts(torch.as_tensor(outputs["latents"][outputs["gate_sample_index"]])).numpy()
    gates = outputs["gates_sample"]  # the same model at the same latents, computed after stage 1
    if gates.shape[1] != len(centres) or outputs["features"].shape[0] != len(centres):
        raise InputError(run.root / "discovery" / "outputs.npz", "gates_sample, features",
                         f"one column/row per stage-1 Gaussian ({len(centres)})",
                         f"shapes {gates.shape}, {outputs['features'].shape}")
    dynamics = dynamics_signature(shifts, gates, centres, masses, ps.apix) if cfg.parts_signal == "dynamics" else None
    clustering = discover_parts(outputs["features"], centres, masses, dynamics, gates.mean(0), cfg.parts_level1,
                                cfg.parts_level2, seed=cfg.seed)
    clustering.to_npz(run.stage_dir("parts") / "clustering.npz")
    return "finished"


def _stage_hierarchical(ps, run, cfg, device, progress, should_stop, dist) -> str:
    out = run.root / "hierarchical"
    if (out / "model.pt").exists() and not _more_epochs(run, "hierarchical", cfg):
        return "finished"
    hcfg = cfg.hierarchical
    if hcfg.image_var == 1.0:
        hcfg = dataclasses.replace(hcfg, image_var=cfg.discovery.image_var)
        cfg.hierarchical = hcfg
        _on_main(dist, lambda: run.update_config(train=cfg))
    _on_main(dist, lambda: stage2_selection(run, cfg, ps))  # written once, read by every rank
    keep, n_all = stage2_selection(run, cfg, ps), len(ps)
    if keep is not None:
        ps = ps.subset(keep)
    if not (out / "seed.npz").exists():
        _on_main(dist, lambda: _write_stage2_seed(ps, run, cfg, device, keep, n_all))
    model = hierarchical_model(run, hcfg).to(device)
    res = run_loop(model, model.make_optimizer(), ps, cfg.loop(hcfg, device), out / "checkpoint.pt",
                   STAGE_NAMES["hierarchical"], device, progress, should_stop, dist=dist)
    if res.status != "finished":
        return res.status
    if dist.is_main:
        _save_state(out / "model.pt", model, STAGE_NAMES["hierarchical"])
    return "finished"


STAGE_NAMES = {"consensus": "consensus", "discovery": "stage 1: part discovery",
               "hierarchical": "stage 2: hierarchical"}
"""How progress and errors name each trained stage."""

EPOCH_OPTIONS = {"consensus": "--epochs-consensus", "discovery": "--epochs-1", "hierarchical": "--epochs-2"}
"""The `cryospire train` option that sets each trained stage's epochs."""

FINISHED = {"consensus": "consensus/gaussians.npz", "discovery": "discovery/model.pt",
            "parts": "parts/clustering.npz", "hierarchical": "hierarchical/model.pt"}
"""The file each stage writes last: the stage is finished when it exists."""


def stage2_started(run: RunFolder) -> bool:
    """True once stage 2 has written anything of its own (its seed, checkpoint or model): from
    then on its particle selection is fixed. An empty RUN/hierarchical folder is not a start."""
    return any((run.root / "hierarchical" / name).exists() for name in ("seed.npz", "checkpoint.pt", "model.pt"))


def _trained_epochs(run: RunFolder, stage: str) -> int:
    """Epochs the checkpoint of ``stage`` (consensus, discovery or hierarchical) has finished;
    0 without a checkpoint."""
    path = run.root / stage / "checkpoint.pt"
    return int(load_loop_state(path)["epoch"]) if path.exists() else 0


def _more_epochs(run: RunFolder, stage: str, cfg: TrainConfig) -> bool:
    """True when a finished stage was asked for more epochs than it trained (it then continues
    from its checkpoint; :func:`check_training_inputs` made sure no later stage depends on it)."""
    path = run.root / stage / "checkpoint.pt"
    return path.exists() and _trained_epochs(run, stage) < getattr(cfg, stage).epochs


def check_stage_order(run: RunFolder, stages: tuple[str, ...]) -> None:
    """InputError unless every stage before each of ``stages`` is finished or among them (e.g.
    ``--stage parts`` needs a finished stage 1). Reads only which files exist."""
    for k, stage in enumerate(STAGES):
        if stage not in stages:
            continue
        for before in STAGES[:k]:
            if before not in stages and not (run.root / FINISHED[before]).exists():
                raise InputError(run.root / FINISHED[before], f"--stage {stage}",
                                 f"a finished {before} stage first (leave out --stage, or add --stage {before})",
                                 "no such file")


def check_training_inputs(particles: ParticleSet, run: RunFolder, cfg: TrainConfig,
                          stages: tuple[str, ...] = STAGES) -> None:
    """Everything the ``stages`` of a run need that can be known before they start, each wrong
    one an InputError: the stage order (:func:`check_stage_order`); the part counts against stage
    1's Gaussian count; the particle selection (a file of indices into ``particles``, or a subset
    of them); the epochs of a finished stage (at least those it trained; more only when no later
    stage was built on it)."""
    check_stage_order(run, stages)
    n1, exact = _stage1_gaussians(run, cfg)
    for option, value in (("--parts", cfg.parts_level1), ("--parts-level2", cfg.parts_level2)):
        if isinstance(value, int) and value > n1:
            size = f"{n1}" if exact else f"at most {n1}"
            raise InputError(None, option, f"at most the stage-1 Gaussian count ({size})", value)
    if cfg.select is not None and "hierarchical" in stages and not stage2_started(run):
        read_selection(cfg.select, particles)
    for stage, option in EPOCH_OPTIONS.items():
        path = run.root / stage / "checkpoint.pt"
        if not path.exists():
            continue
        done, wanted = _trained_epochs(run, stage), getattr(cfg, stage).epochs
        trained = f"{STAGE_NAMES[stage]} has trained {done} epoch{'s' if done != 1 else ''}"
        if wanted < done:
            raise InputError(path, option, f"at least {done} ({trained})", wanted)
        later = [s for s in STAGES[STAGES.index(stage) + 1:] if (run.root / FINISHED[s]).exists()]
        if wanted > done and (run.root / FINISHED[stage]).exists() and later:
            raise InputError(path, option, f"{done} ({trained} and {', '.join(later)} were built on it: train longer "
                             "in a new run folder)", wanted)


def _stage1_gaussians(run: RunFolder, cfg: TrainConfig) -> tuple[int, bool]:
    """(stage 1's Gaussian count, whether exact): its seed's, else the smaller of its configured
    count and the consensus's (an upper bound while the consensus picks its own count)."""
    seed = run.root / "discovery" / "seed.npz"
    if seed.exists():
        return len(load_gaussians(seed)["centres"]), True
    consensus = run.root / "consensus" / "gaussians.npz"
    if consensus.exists():
        return min(cfg.discovery.n_gaussians, len(load_gaussians(consensus)["centres"])), True
    n0 = cfg.consensus.n_gaussians
    return (min(cfg.discovery.n_gaussians, n0), True) if n0 else (cfg.discovery.n_gaussians, False)


def stage2_selection(run: RunFolder, cfg: TrainConfig, ps: ParticleSet) -> np.ndarray | None:
    """Indices of the particles stage 2 trains on (None: all), read once from ``cfg.select`` and
    kept as RUN/selection.npy so a resumed run uses the same set."""
    path = run.root / "selection.npy"
    if path.exists():
        keep = read_npy(path, "selection")
        if keep.ndim != 1 or keep.dtype.kind not in "iu" or not len(keep) or keep.min() < 0 or keep.max() >= len(ps):
            raise InputError(path, "selection", f"indices in 0..{len(ps) - 1} of the particles stage 2 keeps",
                             f"{keep.dtype} array of shape {keep.shape}")
        return keep
    if cfg.select is None:
        return None
    keep = read_selection(cfg.select, ps)
    write_npy(path, keep)
    return keep


def _write_stage2_seed(ps: ParticleSet, run: RunFolder, cfg: TrainConfig, device: torch.device,
                       keep: np.ndarray | None, n_particles: int) -> None:
    """Stage-2 Gaussians seeded from stage 1's improved map, each assigned the part of its nearest
    coarse Gaussian; anchors from the clustering; latents from stage 1 (of the kept particles
    ``keep`` among the ``n_particles`` stage 1 trained on; ``ps`` holds the kept ones)."""
    hcfg = cfg.hierarchical
    improved = read_map(run.root / "discovery" / "map.mrc").data
    seed_cfg = dataclasses.replace(cfg.consensus, n_gaussians=hcfg.n_gaussians)
    centres, widths, amps = seed_from_map(improved, ps.apix, seed_cfg, np.random.default_rng(hcfg.seed))
    mixture = GaussianMixture(centres, widths, amps, ps.box, ps.apix, hcfg.min_width_px).to(device)
    fit_to_map(mixture, torch.tensor(improved, device=device), cfg.consensus.map_fit_steps, lr=0.05)
    g = mixture.export()
    clustering = PartClustering.from_npz(run.root / "parts" / "clustering.npz")
    coarse = load_gaussians(run.root / "discovery" / "seed.npz")["centres"]
    if len(coarse) != len(clustering.part_index):
        raise InputError(run.root / "parts" / "clustering.npz", "part_index",
                         f"one part per stage-1 Gaussian ({len(coarse)})", len(clustering.part_index))
    part_index = assign_to_parts(g["centres"], coarse, clustering.part_index)
    latents = _stage1_outputs(run, n_particles, cfg.discovery.zdim)["latents"]
    if keep is not None:
        latents = latents[keep]
    write_npz(run.stage_dir("hierarchical") / "seed.npz",
              **{**g, "amplitudes": g["amplitudes"] * _gate0(hcfg.gate_bias)}, part_index=part_index,
              anchor_centres=clustering.anchor_centres, anchor_features=clustering.anchor_features, latents=latents)


_RUNNERS: dict[str, Callable] = {
    "consensus": _stage_consensus,
    "discovery": _stage_discovery,
    "parts": _stage_parts,
    "hierarchical": _stage_hierarchical,
}


def train(
    particles: ParticleSet,
    run: RunFolder,
    cfg: TrainConfig,
    device: torch.device,
    stages: tuple[str, ...] = STAGES,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist: Distributed = Distributed(),
) -> str:
    """Run ``stages`` in order into ``run`` (the caller holds the run's lock); returns
    ``finished`` or ``cancelled``. RUN/latents.npy is updated after each latent stage. What the
    stages need is checked first (:func:`check_training_inputs`): a refusal trains nothing.

    dist: in a data-parallel run (:mod:`distributed`) every rank calls train with the same
    arguments; the ranks share the training steps, rank 0 alone writes files (the others wait
    for it at barriers) and the run folder must be on a file system every rank sees."""
    check_training_inputs(particles, run, cfg, stages)
    torch.manual_seed(cfg.seed)
    for stage in stages:
        dist.barrier()  # every rank sees the files the previous stage wrote
        status = _RUNNERS[stage](particles, run, cfg, device, progress, should_stop, dist)
        if status != "finished":
            return status
        _on_main(dist, lambda: _publish_latents(run))
    return "finished"


def _publish_latents(run: RunFolder) -> None:
    """RUN/latents.npy from the most advanced finished stage (refused when not finite)."""
    model = run.root / "hierarchical" / "model.pt"
    if model.exists():
        state = _read_state(model)
        if "latents.embedding.weight" not in state:
            raise InputError(model, "latents.embedding.weight", "the stage-2 latent table", "missing")
        latents, stage = state["latents.embedding.weight"].numpy(), STAGE_NAMES["hierarchical"]
    elif (run.root / "discovery" / "outputs.npz").exists():
        latents = read_npz(run.root / "discovery" / "outputs.npz", "stage-1 outputs", ("latents",))["latents"]
        stage = STAGE_NAMES["discovery"]
    else:
        return
    require_finite(latents, run.root / "latents.npy", "latents", f"{stage} diverged: {DIVERGED}")
    write_npy(run.root / "latents.npy", latents.astype(np.float32))
