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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import write_npy, write_npz
from .consensus import ConsensusConfig, GaussianMixture, fit_consensus, fit_to_map, seed_from_map, seed_map
from .discovery import DiscoveryConfig, PartDiscoveryModel, image_variance
from .distributed import Distributed
from .engine import LoopConfig, read_weights, run_loop, save_checkpoint
from .errors import InputError
from .hierarchical import HierarchicalConfig, PartAwareModel
from .mrc import read_map, write_map
from .particles import ParticleSet
from .precision import PRECISIONS, resolve_precision
from .parts import PartClustering, assign_to_parts, discover_parts, dynamics_signature
from .progress import ProgressCallback
from .runfolder import RunFolder
from .selection import read_selection

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
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["consensus"] = ConsensusConfig(**d["consensus"])
        d["discovery"] = DiscoveryConfig(**d["discovery"])
        d["hierarchical"] = HierarchicalConfig(**d["hierarchical"])
        return cls(**d)


def _save_state(path: Path, model: torch.nn.Module) -> None:
    save_checkpoint(path, model.state_dict())


def _read_state(path: Path) -> dict:
    return read_weights(path, "model", "a state dict saved by `cryospire train` (tensors only)")


def _load_state(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    model.load_state_dict(_read_state(path))
    return model


# --------------------------------------------------------------------------------------------
# Building the models from what a run folder holds (training, and later render/analyze/infer)


def discovery_model(run: RunFolder, cfg: DiscoveryConfig, n_particles: int) -> PartDiscoveryModel:
    """Stage 1 rebuilt from RUN/discovery/seed.npz (written on first use from the consensus)."""
    seed_path = run.stage_dir("discovery") / "seed.npz"
    if not seed_path.exists():
        gaussians = dict(np.load(run.root / "consensus" / "gaussians.npz"))
        model = PartDiscoveryModel.from_consensus(gaussians, n_particles, cfg)
        g = model.base.export()
        write_npz(seed_path, **{**g, "amplitudes": g["amplitudes"] * _gate0(cfg.gate_bias)})
    g = dict(np.load(seed_path))
    return PartDiscoveryModel(g["centres"], g["widths"], g["amplitudes"], n_particles, int(g["box"]), float(g["apix"]), cfg)


def _gate0(bias: float) -> float:
    # The models divide seed amplitudes by the initial gate; storing seed x gate0 round-trips.
    return float(1.0 / (1.0 + np.exp(-bias)))


def hierarchical_model(run: RunFolder, cfg: HierarchicalConfig) -> PartAwareModel:
    """Stage 2 rebuilt from RUN/hierarchical/seed.npz."""
    g = dict(np.load(run.root / "hierarchical" / "seed.npz"))
    return PartAwareModel(g["centres"], g["widths"], g["amplitudes"], g["part_index"], g["anchor_centres"],
                          g["anchor_features"], g["latents"], int(g["box"]), float(g["apix"]), cfg)


def load_trained_model(run_dir: str | Path) -> PartAwareModel | PartDiscoveryModel:
    """The most advanced finished model of a run (stage 2, else stage 1), on the CPU, eval mode."""
    run = RunFolder(run_dir)
    saved = run.read_config()
    if "train" not in saved:
        raise InputError(run.config_path, "train", "a run trained by `cryospire train`", "no train section")
    cfg = TrainConfig.from_dict(saved["train"])
    for stage, build in (("hierarchical", lambda: hierarchical_model(run, cfg.hierarchical)),
                         ("discovery", lambda: discovery_model(run, cfg.discovery, saved["n_particles"]))):
        if (run.root / stage / "model.pt").exists():
            return _load_state(build(), run.root / stage / "model.pt").eval()
    raise InputError(run.root, "model", "a finished stage 1 or stage 2 (RUN/<stage>/model.pt)", "none yet")


# --------------------------------------------------------------------------------------------
# Stages


def _on_main(dist: Distributed, write: Callable[[], object]) -> None:
    """Run ``write`` (which writes files) on rank 0 only; every rank waits until it is done."""
    if dist.is_main:
        write()
    dist.barrier()


def _stage_consensus(ps, run, cfg, device, progress, should_stop, dist) -> str:
    out = run.stage_dir("consensus")
    if (out / "gaussians.npz").exists():
        return "finished"
    if dist.active:  # rank 0 computes and caches the map; the others read it
        _on_main(dist, lambda: seed_map(ps, out, device, progress))
    init_map = seed_map(ps, out, device, progress)
    loop = cfg.loop(cfg.consensus, device)
    return fit_consensus(ps, init_map, out, cfg.consensus, device, progress, should_stop, cfg.checkpoint_minutes,
                         loop.precision, dist).status


def _stage_discovery(ps, run, cfg, device, progress, should_stop, dist) -> str:
    out = run.stage_dir("discovery")
    if (out / "model.pt").exists():
        return "finished"
    dcfg = cfg.discovery
    if dcfg.image_var == 1.0:  # scale the data term once, from the data, and remember it
        dcfg = dataclasses.replace(dcfg, image_var=image_variance(ps, seed=dcfg.seed))
        cfg.discovery = dcfg
        _on_main(dist, lambda: run.update_config(train=cfg))
    if dist.active and not (out / "seed.npz").exists():  # rank 0 writes the seed, the others read it
        _on_main(dist, lambda: discovery_model(run, dcfg, len(ps)))
    model = discovery_model(run, dcfg, len(ps)).to(device)
    res = run_loop(model, model.make_optimizer(), ps, cfg.loop(dcfg, device), out / "checkpoint.pt",
                   "stage 1: part discovery", device, progress, should_stop, dist=dist)
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
    _save_state(out / "model.pt", model)
    return "finished"


def _stage_parts(ps, run, cfg, device, progress, should_stop, dist) -> str:
    out = run.stage_dir("parts")
    if (out / "clustering.npz").exists() or not dist.is_main:  # quick: rank 0 alone clusters
        return "finished"
    model = _load_state(discovery_model(run, cfg.discovery, len(ps)), run.root / "discovery" / "model.pt")
    outputs = np.load(run.root / "discovery" / "outputs.npz")
    with torch.no_grad():
        centres = model.base.centres.numpy()
        masses = (model.base.amplitudes * model.widths**3).abs().numpy()
        shifts = model.shifts(torch.as_tensor(outputs["latents"][outputs["gate_sample_index"]])).numpy()
    gates = outputs["gates_sample"]  # the same model at the same latents, computed after stage 1
    dynamics = dynamics_signature(shifts, gates, centres, masses, ps.apix) if cfg.parts_signal == "dynamics" else None
    clustering = discover_parts(outputs["features"], centres, masses, dynamics, gates.mean(0), cfg.parts_level1,
                                cfg.parts_level2, seed=cfg.seed)
    clustering.to_npz(out / "clustering.npz")
    return "finished"


def _stage_hierarchical(ps, run, cfg, device, progress, should_stop, dist) -> str:
    out = run.stage_dir("hierarchical")
    if (out / "model.pt").exists():
        return "finished"
    hcfg = cfg.hierarchical
    if hcfg.image_var == 1.0:
        hcfg = dataclasses.replace(hcfg, image_var=cfg.discovery.image_var)
        cfg.hierarchical = hcfg
        _on_main(dist, lambda: run.update_config(train=cfg))
    _on_main(dist, lambda: stage2_selection(run, cfg, ps))  # written once, read by every rank
    keep = stage2_selection(run, cfg, ps)
    if keep is not None:
        ps = ps.subset(keep)
    if not (out / "seed.npz").exists():
        _on_main(dist, lambda: _write_stage2_seed(ps, run, cfg, device, keep))
    model = hierarchical_model(run, hcfg).to(device)
    res = run_loop(model, model.make_optimizer(), ps, cfg.loop(hcfg, device), out / "checkpoint.pt",
                   "stage 2: hierarchical", device, progress, should_stop, dist=dist)
    if res.status != "finished":
        return res.status
    if dist.is_main:
        _save_state(out / "model.pt", model)
    return "finished"


def stage2_selection(run: RunFolder, cfg: TrainConfig, ps: ParticleSet) -> np.ndarray | None:
    """Indices of the particles stage 2 trains on (None: all), read once from ``cfg.select`` and
    kept as RUN/selection.npy so a resumed run uses the same set."""
    path = run.root / "selection.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    if cfg.select is None:
        return None
    keep = read_selection(cfg.select, ps)
    write_npy(path, keep)
    return keep


def _write_stage2_seed(ps: ParticleSet, run: RunFolder, cfg: TrainConfig, device: torch.device,
                       keep: np.ndarray | None) -> None:
    """Stage-2 Gaussians seeded from stage 1's improved map, each assigned the part of its nearest
    coarse Gaussian; anchors from the clustering; latents from stage 1 (of the kept particles)."""
    hcfg = cfg.hierarchical
    improved = read_map(run.root / "discovery" / "map.mrc").data
    seed_cfg = dataclasses.replace(cfg.consensus, n_gaussians=hcfg.n_gaussians)
    centres, widths, amps = seed_from_map(improved, ps.apix, seed_cfg, np.random.default_rng(hcfg.seed))
    mixture = GaussianMixture(centres, widths, amps, ps.box, ps.apix, hcfg.min_width_px).to(device)
    fit_to_map(mixture, torch.as_tensor(improved, device=device), cfg.consensus.map_fit_steps, lr=0.05)
    g = mixture.export()
    clustering = PartClustering.from_npz(run.root / "parts" / "clustering.npz")
    coarse = np.load(run.root / "discovery" / "seed.npz")["centres"]
    part_index = assign_to_parts(g["centres"], coarse, clustering.part_index)
    latents = np.load(run.root / "discovery" / "outputs.npz")["latents"]
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
    ``finished`` or ``cancelled``. RUN/latents.npy is updated after each latent stage.

    dist: in a data-parallel run (:mod:`distributed`) every rank calls train with the same
    arguments; the ranks share the training steps, rank 0 alone writes files (the others wait
    for it at barriers) and the run folder must be on a file system every rank sees."""
    torch.manual_seed(cfg.seed)
    for stage in stages:
        dist.barrier()  # every rank sees the files the previous stage wrote
        status = _RUNNERS[stage](particles, run, cfg, device, progress, should_stop, dist)
        if status != "finished":
            return status
        _on_main(dist, lambda: _publish_latents(run))
    return "finished"


def _publish_latents(run: RunFolder) -> None:
    """RUN/latents.npy from the most advanced finished stage."""
    if (run.root / "hierarchical" / "model.pt").exists():
        latents = _read_state(run.root / "hierarchical" / "model.pt")["latents.embedding.weight"].numpy()
    elif (run.root / "discovery" / "outputs.npz").exists():
        latents = np.load(run.root / "discovery" / "outputs.npz")["latents"]
    else:
        return
    write_npy(run.root / "latents.npy", latents.astype(np.float32))
