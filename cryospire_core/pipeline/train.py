"""The whole CryoSPIRE pipeline into one run folder: consensus, stage 1 (part discovery),
clustering into parts, stage 2 (the part-aware hierarchical model).

Each stage writes its products into its own sub-folder and is skipped when they exist, so a run
killed anywhere continues with ``--resume``: a finished stage is not redone and an unfinished
one continues from its checkpoint. The run folder's layout, and the readers that rebuild its
models for rendering, analysis and inference on any machine, are :mod:`runfolder`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryospire_core.errors import InputError, require_finite
from cryospire_core.imaging.misfit import ImageMisfit
from cryospire_core.io.arrays import read_npz
from cryospire_core.io.atomic import write_npy, write_npz
from cryospire_core.io.mrc import read_map, write_map
from cryospire_core.io.particles import ParticleSet
from cryospire_core.io.selection import read_selection
from cryospire_core.models.consensus import (
    GaussianMixture,
    fit_consensus,
    fit_to_map,
    seed_from_map,
    seed_map,
)
from cryospire_core.models.discovery import (
    DiscoveryConfig,
    PartDiscoveryModel,
    image_variance,
)
from cryospire_core.models.distributed import Distributed
from cryospire_core.models.engine import (
    DIVERGED,
    load_loop_state,
    run_loop,
    save_checkpoint,
)
from cryospire_core.models.hierarchical import PartAwareModel
from cryospire_core.models.parts import (
    PartClustering,
    assign_to_parts,
    discover_parts,
    dynamics_signature,
)
from cryospire_core.pipeline.config import STAGES, TrainConfig
from cryospire_core.pipeline.preprocess import (
    NoiseSpectrum,
    measure_noise_spectrum,
    prepared,
    stage_misfit,
)
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.progress import (
    Cancelled,
    Phase,
    ProgressCallback,
    StopCheck,
    interruptible,
)


def _save_state(path: Path, model: torch.nn.Module, stage: str) -> None:
    save_checkpoint(path, model.state_dict(), stage)


# --------------------------------------------------------------------------------------------
# The seeds of the latent stages


def _write_stage1_seed(run: RunFolder, cfg: DiscoveryConfig, ps: ParticleSet, should_stop: StopCheck | None) -> None:
    """RUN/discovery/seed.npz: the consensus coarsened to stage 1's Gaussian count, on the
    lattice of stage 1's particles ``ps`` (the Gaussians are in Å: they carry over unchanged
    when the stages see the images at different boxes). The coarsening (one k-means, seconds
    for 16,384 Gaussians) is :func:`~cryospire_core.progress.interruptible` by ``should_stop``."""
    gaussians = run.gaussians("consensus")
    model = interruptible(lambda: PartDiscoveryModel.from_consensus(gaussians, len(ps), cfg, ps.lattice), should_stop)
    g = model.base.export()
    run.stage_dir("discovery")
    write_npz(run.seed_path("discovery"), **{**g, "amplitudes": g["amplitudes"] * _gate0(cfg.gate_bias)})


def _gate0(bias: float) -> float:
    # The models divide seed amplitudes by the initial gate; storing seed x gate0 round-trips.
    return float(1.0 / (1.0 + np.exp(-bias)))


def check_run_latents(model: PartAwareModel | PartDiscoveryModel, latents: np.ndarray, path: Path) -> None:
    """InputError naming ``path`` (RUN/latents.npy) unless ``latents`` has one row per latent of
    ``model`` and the model's latent size."""
    want = tuple(model.latents.weight.shape)
    if latents.shape != want:
        raise InputError(path, "latents", f"{want} numbers (one row of {want[1]} per latent of the run's model)",
                         latents.shape)


# --------------------------------------------------------------------------------------------
# Stages


def _on_main(dist: Distributed, write: Callable[[], object]) -> None:
    """Run ``write`` (which writes files) on rank 0 only; every rank waits until it is done."""
    if dist.is_main:
        write()
    dist.barrier()


@dataclass
class StageContext:
    """What every stage of :func:`train` works with: particles, the input ParticleSet (all of
    it, at the stack's box: each stage reads it at its own box and stage 2 applies the selection
    itself); run, the run folder (locked by the caller); cfg,
    the run's config (stages 1 and 2 store the image variance they measure in it); device;
    progress and should_stop, as :func:`train` takes them; dist, this process's place in a
    data-parallel run."""

    particles: ParticleSet
    run: RunFolder
    cfg: TrainConfig
    device: torch.device
    progress: ProgressCallback | None
    should_stop: Callable[[], bool] | None
    dist: Distributed

    @property
    def stop(self) -> StopCheck | None:
        """should_stop for the work outside the training loop: None in a data-parallel run (the
        ranks would part ways; the loop stops them together at its next step)."""
        return None if self.dist.active else self.should_stop

    def phase(self, stage: str, total: int = 1, unit: str = "") -> Phase:
        """A :class:`~cryospire_core.progress.Phase` reporting to this run's progress and
        stopped by :attr:`stop`."""
        return Phase(stage, total, self.progress, self.stop, unit)

    def misfit(self, ps: ParticleSet) -> ImageMisfit:
        """The data term of a stage reading ``ps`` (at its box), on the device. With noise
        weighting, rank 0 measures the noise spectrum once (RUN/noise_psd.npz, at the stack's
        box) and every stage and resumed run reads it back."""
        pre, path = self.cfg.preprocess, self.run.noise_psd_path
        spectrum = None
        if pre.noise_weighting:
            if not path.exists():
                self.phase("measuring the noise spectrum").step(0)
            _on_main(self.dist, lambda: path.exists() or measure_noise_spectrum(
                self.particles, pre.window_radius, seed=self.cfg.seed, should_stop=self.stop).to_npz(path))
            spectrum = NoiseSpectrum.from_npz(path, self.particles)
        return stage_misfit(pre, ps.box, spectrum).to(self.device)


def _stage_consensus(ctx: StageContext) -> str:
    run, cfg, device, dist = ctx.run, ctx.cfg, ctx.device, ctx.dist
    ps = ctx.particles.at_most(cfg.consensus.box)
    if run.stage_done("consensus") and not _more_epochs(run, "consensus", cfg):
        return "finished"
    files = run.consensus_files()
    progress = _named(ctx.progress, "consensus: backprojecting the particles")
    if dist.active:  # rank 0 computes and caches the map; the others read it
        _on_main(dist, lambda: seed_map(ps, files.backprojection, device, progress))
    init_map = seed_map(ps, files.backprojection, device, progress, should_stop=ctx.stop)
    loop = cfg.loop(cfg.consensus, device)
    return fit_consensus(ps, init_map, files, cfg.consensus, device, ctx.progress, ctx.should_stop,
                         cfg.checkpoint_minutes, loop.precision, dist, ctx.misfit(ps)).status


def _stage_discovery(ctx: StageContext) -> str:
    run, cfg, device, dist = ctx.run, ctx.cfg, ctx.device, ctx.dist
    ps = ctx.particles.at_most(cfg.discovery.box)
    if run.stage_done("discovery") and not _more_epochs(run, "discovery", cfg):
        return "finished"
    dcfg = cfg.discovery
    if dcfg.image_var == 1.0:  # scale the data term once, from the data, and remember it
        ctx.phase("stage 1: measuring the image variance").step(0)
        dcfg = dataclasses.replace(dcfg, image_var=image_variance(ps, seed=dcfg.seed, should_stop=ctx.stop))
        cfg.discovery = dcfg
        _on_main(dist, lambda: run.update_config(train=cfg))
    if not run.seed_path("discovery").exists():  # rank 0 writes the seed, every rank reads it
        ctx.phase("stage 1: seeding from the consensus").step(0)
        _on_main(dist, lambda: _write_stage1_seed(run, dcfg, ps, ctx.stop))
    model = run.seeded_model("discovery", dcfg, len(ps)).to(device)
    model.misfit = ctx.misfit(ps)
    res = run_loop(model, model.make_optimizer(), ps, cfg.loop(dcfg, device), run.checkpoint_path("discovery"),
                   STAGE_NAMES["discovery"], device, ctx.progress, ctx.should_stop, dist=dist)
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
    write_map(run.map_path("discovery"), improved.cpu().numpy(), ps.apix)
    write_npz(run.outputs_path, latents=latents, gate_sample_index=sample, gates_sample=gates,
              features=model.features().detach().cpu().numpy())
    _save_state(run.model_path("discovery"), model, STAGE_NAMES["discovery"])
    return "finished"


def _stage1_outputs(run: RunFolder, n_particles: int, zdim: int) -> dict[str, np.ndarray]:
    """RUN/discovery/outputs.npz, checked against the run: latents (N, zdim), the gate sample's
    indices (S,) and gates (S, G), features (G, F)."""
    path = run.outputs_path
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


@dataclass
class Stage1Motion:
    """What stage 1 decoded at its gate sample, the inputs of part discovery.

    features: (G, F); centres: (G, 3) Å; masses: (G,) |amplitude x width^3|; sample: (S,) image
    indices; latents: (S, zdim) theirs; shifts: (S, G, 3) Å and gates: (S, G) in [0, 1] at those
    latents; apix: stage 1's pixel, Å.
    """

    features: np.ndarray
    centres: np.ndarray
    masses: np.ndarray
    sample: np.ndarray
    latents: np.ndarray
    shifts: np.ndarray
    gates: np.ndarray
    apix: float


def stage1_motion(run: RunFolder, n_particles: int, cfg: TrainConfig) -> Stage1Motion:
    """The finished stage 1 of ``run`` decoded at its gate sample (InputError naming
    RUN/discovery/outputs.npz when it does not match the model)."""
    model = run.model("discovery")
    outputs = _stage1_outputs(run, n_particles, cfg.discovery.zdim)
    with torch.no_grad():
        centres = model.base.centres.numpy()
        masses = (model.base.amplitudes * model.widths**3).abs().numpy()
        latents = outputs["latents"][outputs["gate_sample_index"]]
        shifts = model.shifts(torch.as_tensor(latents)).numpy()
    gates = outputs["gates_sample"]  # the same model at the same latents, computed after stage 1
    if gates.shape[1] != len(centres) or outputs["features"].shape[0] != len(centres):
        raise InputError(run.outputs_path, "gates_sample, features",
                         f"one column/row per stage-1 Gaussian ({len(centres)})",
                         f"shapes {gates.shape}, {outputs['features'].shape}")
    return Stage1Motion(outputs["features"], centres, masses, outputs["gate_sample_index"], latents, shifts, gates,
                        model.lattice.apix)


def _stage_parts(ctx: StageContext) -> str:
    run, cfg, ps = ctx.run, ctx.cfg, ctx.particles
    if run.stage_done("parts") or not ctx.dist.is_main:  # quick: rank 0 alone clusters
        return "finished"
    ctx.phase("parts: clustering the Gaussians into parts").step(0)
    m = stage1_motion(run, len(ps), cfg)

    def cluster() -> PartClustering:  # an SVD and k-means: seconds that cannot ask should_stop themselves
        dynamics = (dynamics_signature(m.shifts, m.gates, m.centres, m.masses, m.apix)
                    if cfg.parts_signal == "dynamics" else None)
        motion = m.shifts / m.apix if cfg.parts_refine == "rigid" else None
        return discover_parts(m.features, m.centres, m.masses, dynamics, m.gates.mean(0), cfg.parts_level1,
                              cfg.parts_level2, seed=cfg.seed, motion=motion, gates=None if motion is None else m.gates)

    clustering = interruptible(cluster, ctx.stop)
    run.stage_dir("parts")
    clustering.to_npz(run.clustering_path)
    return "finished"


def _stage_hierarchical(ctx: StageContext) -> str:
    run, cfg, device, dist = ctx.run, ctx.cfg, ctx.device, ctx.dist
    if run.stage_done("hierarchical") and not _more_epochs(run, "hierarchical", cfg):
        return "finished"
    hcfg = cfg.hierarchical
    ps = ctx.particles.at_most(hcfg.box)
    if hcfg.image_var == 1.0:
        # Cropping averages the noise down, so a stage at another box than stage 1 measures its own.
        same_box = ps.box == ctx.particles.at_most(cfg.discovery.box).box
        if not same_box:
            ctx.phase("stage 2: measuring the image variance").step(0)
        var = cfg.discovery.image_var if same_box else image_variance(ps, seed=hcfg.seed, should_stop=ctx.stop)
        hcfg = dataclasses.replace(hcfg, image_var=var)
        cfg.hierarchical = hcfg
        _on_main(dist, lambda: run.update_config(train=cfg))
    _on_main(dist, lambda: stage2_selection(run, cfg, ps))  # written once, read by every rank
    keep, n_all = stage2_selection(run, cfg, ps), len(ps)
    if keep is not None:
        ps = ps.subset(keep)
    if not run.seed_path("hierarchical").exists():
        _on_main(dist, lambda: _write_stage2_seed(ps, run, cfg, device, keep, n_all, ctx.progress, ctx.stop))
    model = run.seeded_model("hierarchical", hcfg).to(device)
    model.misfit = ctx.misfit(ps)
    res = run_loop(model, model.make_optimizer(), ps, cfg.loop(hcfg, device), run.checkpoint_path("hierarchical"),
                   STAGE_NAMES["hierarchical"], device, ctx.progress, ctx.should_stop, dist=dist)
    if res.status != "finished":
        return res.status
    if dist.is_main:
        _save_state(run.model_path("hierarchical"), model, STAGE_NAMES["hierarchical"])
    return "finished"


STAGE_NAMES = {"consensus": "consensus", "discovery": "stage 1: part discovery",
               "hierarchical": "stage 2: hierarchical"}
"""How progress and errors name each trained stage."""

EPOCH_OPTIONS = {"consensus": "--epochs-consensus", "discovery": "--epochs-1", "hierarchical": "--epochs-2"}
"""The `cryospire train` option that sets each trained stage's epochs."""

BOX_OPTIONS = {"consensus": "--box-consensus", "discovery": "--box-1", "hierarchical": "--box-2"}
"""The `cryospire train` option that sets the box each trained stage sees the images at."""


def _trained_epochs(run: RunFolder, stage: str) -> int:
    """Epochs the checkpoint of ``stage`` (consensus, discovery or hierarchical) has finished;
    0 without a checkpoint."""
    path = run.checkpoint_path(stage)
    return int(load_loop_state(path)["epoch"]) if path.exists() else 0


def _more_epochs(run: RunFolder, stage: str, cfg: TrainConfig) -> bool:
    """True when a finished stage was asked for more epochs than it trained (it then continues
    from its checkpoint; :func:`check_training_inputs` made sure no later stage depends on it)."""
    return run.checkpoint_path(stage).exists() and _trained_epochs(run, stage) < getattr(cfg, stage).epochs


def check_stage_order(run: RunFolder, stages: tuple[str, ...]) -> None:
    """InputError unless every stage before each of ``stages`` is finished or among them (e.g.
    ``--stage parts`` needs a finished stage 1). Reads only which files exist."""
    for k, stage in enumerate(STAGES):
        if stage not in stages:
            continue
        for before in STAGES[:k]:
            if before not in stages and not run.stage_done(before):
                raise InputError(run.finished_path(before), f"--stage {stage}",
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
    if cfg.select is not None and "hierarchical" in stages and not run.stage2_started():
        read_selection(cfg.select, particles)
    for stage, option in EPOCH_OPTIONS.items():
        path = run.checkpoint_path(stage)
        if not path.exists():
            continue
        done, wanted = _trained_epochs(run, stage), getattr(cfg, stage).epochs
        trained = f"{STAGE_NAMES[stage]} has trained {done} epoch{'s' if done != 1 else ''}"
        if wanted < done:
            raise InputError(path, option, f"at least {done} ({trained})", wanted)
        later = [s for s in STAGES[STAGES.index(stage) + 1:] if run.stage_done(s)]
        if wanted > done and run.stage_done(stage) and later:
            raise InputError(path, option, f"{done} ({trained} and {', '.join(later)} were built on it: train longer "
                             "in a new run folder)", wanted)


def _stage1_gaussians(run: RunFolder, cfg: TrainConfig) -> tuple[int, bool]:
    """(stage 1's Gaussian count, whether exact): its seed's, else the smaller of its configured
    count and the consensus's (an upper bound while the consensus picks its own count)."""
    if run.seed_path("discovery").exists():
        return len(run.gaussians("discovery")["centres"]), True
    if run.stage_done("consensus"):
        return min(cfg.discovery.n_gaussians, len(run.gaussians("consensus")["centres"])), True
    n0 = cfg.consensus.n_gaussians
    return (min(cfg.discovery.n_gaussians, n0), True) if n0 else (cfg.discovery.n_gaussians, False)


def stage2_selection(run: RunFolder, cfg: TrainConfig, ps: ParticleSet) -> np.ndarray | None:
    """Indices of the particles stage 2 trains on (None: all), read once from ``cfg.select`` and
    kept as RUN/selection.npy so a resumed run uses the same set."""
    keep = run.selection(len(ps))
    if keep is not None or cfg.select is None:
        return keep
    keep = read_selection(cfg.select, ps)
    write_npy(run.selection_path, keep)
    return keep


SEED_FIT_STAGE = "stage 2: fitting the seed to stage 1's map"
"""How progress names the fit of stage 2's seed mixture to stage 1's improved map."""


def _write_stage2_seed(ps: ParticleSet, run: RunFolder, cfg: TrainConfig, device: torch.device,
                       keep: np.ndarray | None, n_particles: int, progress: ProgressCallback | None = None,
                       should_stop: StopCheck | None = None) -> None:
    """Stage-2 Gaussians seeded from stage 1's improved map (fitted on that map's lattice, then
    carried in Å onto the lattice of stage 2's particles ``ps``), each assigned the part of its
    nearest coarse Gaussian; anchors from the clustering; latents from stage 1 (of the kept
    particles ``keep`` among the ``n_particles`` stage 1 trained on; ``ps`` holds the kept ones).
    The fit reports each step to ``progress`` as :data:`SEED_FIT_STAGE` and asks ``should_stop``
    after each (:class:`~cryospire_core.progress.Cancelled`: no seed written)."""
    hcfg = cfg.hierarchical
    improved = read_map(run.map_path("discovery"))
    seed_cfg = dataclasses.replace(cfg.consensus, n_gaussians=hcfg.n_gaussians)
    centres, widths, amps = seed_from_map(improved.data, improved.apix, seed_cfg, np.random.default_rng(hcfg.seed))
    mixture = GaussianMixture(centres, widths, amps, improved.lattice, hcfg.min_width_px).to(device)
    fit_to_map(mixture, torch.tensor(improved.data, device=device), cfg.consensus.map_fit_steps, lr=0.05,
               progress=progress, should_stop=should_stop, stage=SEED_FIT_STAGE)
    g = {**mixture.export(), "box": np.array(ps.box), "apix": np.array(ps.apix)}
    clustering = PartClustering.from_npz(run.clustering_path)  # the parts stage is finished
    coarse = run.gaussians("discovery")["centres"]
    if len(coarse) != len(clustering.part_index):
        raise InputError(run.clustering_path, "part_index",
                         f"one part per stage-1 Gaussian ({len(coarse)})", len(clustering.part_index))
    part_index = assign_to_parts(g["centres"], coarse, clustering.part_index)
    latents = _stage1_outputs(run, n_particles, cfg.discovery.zdim)["latents"]
    if keep is not None:
        latents = latents[keep]
    run.stage_dir("hierarchical")
    write_npz(run.seed_path("hierarchical"),
              **{**g, "amplitudes": g["amplitudes"] * _gate0(hcfg.gate_bias)}, part_index=part_index,
              anchor_centres=clustering.anchor_centres, anchor_features=clustering.anchor_features, latents=latents)


_RUNNERS: dict[str, Callable[[StageContext], str]] = {
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
    for it at barriers) and the run folder must be on a file system every rank sees. The stages
    read ``particles`` as ``cfg.preprocess`` says (:func:`~cryospire_core.pipeline.preprocess.prepared`:
    normalised per image or not).

    Every phase reports to ``progress`` under its own name (e.g. :data:`SEED_FIT_STAGE`, step by
    step) and asks ``should_stop`` at least every ~0.6 s of work on a busy 2-core CPU (the training
    loop between steps; the seeding, clustering, backprojection and image sampling too: see
    :mod:`cryospire_core.progress`); a phase cancelled before its end wrote nothing, so a resumed
    run redoes it."""
    check_training_inputs(particles, run, cfg, stages)
    ctx = StageContext(prepared(particles, cfg.preprocess), run, cfg, device, progress, should_stop, dist)
    for stage in stages:
        dist.barrier()  # every rank sees the files the previous stage wrote
        try:
            status = _RUNNERS[stage](ctx)
        except Cancelled:
            return "cancelled"
        if status != "finished":
            return status
        _on_main(dist, lambda: _publish_latents(run))
    return "finished"


def _named(progress: ProgressCallback | None, stage: str) -> ProgressCallback | None:
    """``progress`` receiving events renamed ``stage`` (a step of a stage, in the user's words)."""
    return None if progress is None else lambda e: progress(dataclasses.replace(e, stage=stage))


def _publish_latents(run: RunFolder) -> None:
    """RUN/latents.npy from the most advanced finished stage (refused when not finite)."""
    if run.stage_done("hierarchical"):
        state = run.weights("hierarchical")
        if "latents.embedding.weight" not in state:
            raise InputError(run.model_path("hierarchical"), "latents.embedding.weight", "the stage-2 latent table",
                             "missing")
        latents, stage = state["latents.embedding.weight"].numpy(), STAGE_NAMES["hierarchical"]
    elif run.outputs_path.exists():
        latents = read_npz(run.outputs_path, "stage-1 outputs", ("latents",))["latents"]
        stage = STAGE_NAMES["discovery"]
    else:
        return
    require_finite(latents, run.latents_path, "latents", f"{stage} diverged: {DIVERGED}")
    write_npy(run.latents_path, latents.astype(np.float32))
