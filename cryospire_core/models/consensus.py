"""Stage 0: a homogeneous Gaussian mixture fitted to the particle images.

The mixture is seeded where a map (the backprojection, or one the user gives) is dense, first
fitted to that map in 3D (cheap, gets amplitudes and widths into range), then refined against
the images with the exact projection, shifts and CTF. The result is a product of its own: a
GMM consensus map, and the seed of the heterogeneous stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.filters import threshold_otsu
from torch import nn

from cryospire_core.errors import InputError
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.misfit import ImageMisfit
from cryospire_core.imaging.render import project, rasterize
from cryospire_core.io.atomic import write_json, write_npz
from cryospire_core.io.mrc import read_map, write_map
from cryospire_core.io.particles import ParticleSet
from cryospire_core.models.backproject import backproject
from cryospire_core.models.distributed import Distributed
from cryospire_core.models.engine import Batch, LoopConfig, run_loop
from cryospire_core.progress import Cancelled, Phase, ProgressCallback, StopCheck


@dataclass
class ConsensusConfig:
    """Options of the consensus stage (all saved in the run's config).

    n_gaussians: G, 0 = choose from the map (one Gaussian per ``voxels_per_gaussian`` voxels of
    the thresholded map, clipped to [512, 16384]); epochs/batch_size/lr: image fitting (lr is
    Adam's, in units of one pixel for centres); map_fit_steps: 3D pre-fit iterations;
    init_width_px / min_width_px: Gaussian widths in pixels (the minimum keeps maps free of
    aliasing); box: the pixels per side the images are fitted at (Fourier-cropped as they are
    read; None or a larger value: the stack's box).
    """

    n_gaussians: int = 0
    voxels_per_gaussian: float = 4.0
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.01
    map_fit_steps: int = 300
    init_width_px: float = 1.2
    min_width_px: float = 0.7
    seed: int = 0
    box: int | None = None


class GaussianMixture(nn.Module):
    """G isotropic Gaussians: centres (G, 3) Å, widths (G,) Å, amplitudes (G,), rendered on
    ``lattice`` (the data's).

    Parameters are stored in pixel units so one learning rate suits every box and pixel size;
    widths are ``min_width + softplus(raw)`` so they never fall below the anti-aliasing floor.
    ``misfit`` is the data term of :meth:`loss` (plain mean squared error until the pipeline
    gives it the run's window and noise weights, :mod:`~cryospire_core.imaging.misfit`).
    """

    def __init__(self, centres: np.ndarray, widths: np.ndarray, amplitudes: np.ndarray, lattice: Lattice,
                 min_width_px: float = 0.7) -> None:
        super().__init__()
        self.lattice, self.min_width_px = lattice, float(min_width_px)
        apix = lattice.apix
        w_px = np.maximum(np.asarray(widths, dtype=np.float64) / apix - min_width_px, 1e-3)
        self.centres_px = nn.Parameter(torch.as_tensor(np.asarray(centres) / apix, dtype=torch.float32))
        self.width_raw = nn.Parameter(torch.as_tensor(np.log(np.expm1(w_px)), dtype=torch.float32))
        self.amplitudes = nn.Parameter(torch.as_tensor(amplitudes, dtype=torch.float32))
        self.misfit = ImageMisfit()

    @property
    def centres(self) -> torch.Tensor:
        """(G, 3) Å."""
        return self.centres_px * self.lattice.apix

    @property
    def widths(self) -> torch.Tensor:
        """(G,) Å."""
        return (self.min_width_px + nn.functional.softplus(self.width_raw)) * self.lattice.apix

    def render_images(self, batch: Batch) -> torch.Tensor:
        """Predicted images (B, D, D) for a batch's poses, shifts and CTFs."""
        return project(self.centres, self.widths, self.amplitudes, batch.rotations, batch.shifts, self.lattice,
                       ctf=batch.ctf)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mse = self.misfit(self.render_images(batch), batch.images, batch.optics_group)
        return mse, {"mse": float(mse.detach())}

    def volume(self) -> torch.Tensor:
        """The mixture rasterised on its lattice, (D, D, D)."""
        return rasterize(self.centres, self.widths, self.amplitudes, self.lattice)

    def export(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``gaussians.npz``: centres Å, widths Å, amplitudes, and the lattice's
        box and apix."""
        with torch.no_grad():
            return {
                "centres": self.centres.cpu().numpy().astype(np.float32),
                "widths": self.widths.cpu().numpy().astype(np.float32),
                "amplitudes": self.amplitudes.cpu().numpy().astype(np.float32),
                "box": np.int64(self.lattice.box),
                "apix": np.float64(self.lattice.apix),
            }


def density_threshold(volume: np.ndarray) -> float:
    """A threshold separating molecule from solvent: Otsu on the positive voxels' values.

    Backprojections have noisy solvent around zero and a long tail of molecule density; Otsu's
    split of that histogram is stable across SNRs where a fixed multiple of sigma is not.
    """
    pos = volume[volume > 0]
    if pos.size < 16:
        raise ValueError("the map has almost no positive density: wrong contrast sign?")
    return float(threshold_otsu(pos))


def seed_from_map(volume: np.ndarray, apix: float, cfg: ConsensusConfig, rng: np.random.Generator):
    """Initial centres (G, 3) Å, widths (G,) Å and amplitudes (G,) from a map (D, D, D).

    Centres are drawn from the voxels above the density threshold with probability
    proportional to their density, jittered within the voxel.
    """
    lattice = Lattice(volume.shape[0], apix)
    thr = density_threshold(volume)
    zyx = np.argwhere(volume > thr)
    weights = volume[volume > thr].astype(np.float64)
    g = cfg.n_gaussians or int(np.clip(len(zyx) / cfg.voxels_per_gaussian, 512, 16384))
    pick = rng.choice(len(zyx), size=g, replace=g > len(zyx), p=weights / weights.sum())
    # (x, y, z) voxels from the lattice centre, jittered within the voxel.
    xyz_px = zyx[pick][:, ::-1].astype(np.float64) - lattice.centre + rng.uniform(-0.5, 0.5, (g, 3))
    widths = np.full(g, cfg.init_width_px * apix)
    # Each Gaussian starts with the share of density its neighbourhood holds.
    amplitudes = volume[zyx[pick, 0], zyx[pick, 1], zyx[pick, 2]] * len(zyx) / g / (2 * np.pi * cfg.init_width_px**2) ** 1.5
    return xyz_px * apix, widths, amplitudes.astype(np.float64)


def fit_to_map(model: GaussianMixture, volume: torch.Tensor, steps: int, lr: float,
               progress: ProgressCallback | None = None, should_stop: StopCheck | None = None,
               stage: str = "fitting the mixture to the map") -> list[float]:
    """Least-squares fit of the mixture's rasterised volume to ``volume`` (D, D, D); returns the loss curve.

    progress gets ``stage`` with the steps done (:class:`~cryospire_core.progress.Phase`) at the
    start and after every step; should_stop is asked as often (one step: one rasterisation of the
    mixture and its gradient, ~0.6 s for 4,096 Gaussians on a busy 2-core CPU) and raises
    :class:`~cryospire_core.progress.Cancelled`, the model left part-fitted.
    """
    phase = Phase(stage, steps, progress, should_stop)
    phase.step(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = (model.volume() - volume).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        phase.step(k + 1)
    return losses


def make_optimizer(model: GaussianMixture, lr: float) -> torch.optim.Optimizer:
    """Adam with per-group rates: centres and widths move in pixels, amplitudes relative to their scale."""
    amp_scale = float(model.amplitudes.detach().abs().mean()) or 1.0
    return torch.optim.Adam(
        [
            {"params": [model.centres_px], "lr": lr},
            {"params": [model.width_raw], "lr": lr},
            {"params": [model.amplitudes], "lr": lr * amp_scale},
        ]
    )


@dataclass
class ConsensusResult:
    """status: ``finished`` or ``cancelled``; model: the fitted mixture; history: image-fit loss per epoch."""

    status: str
    model: GaussianMixture
    history: list[float]


@dataclass(frozen=True)
class ConsensusFiles:
    """Where a consensus fit writes (a run folder's consensus stage:
    :meth:`~cryospire_core.pipeline.runfolder.RunFolder.consensus_files`): the cached seed
    backprojection, the loop's checkpoint, and once finished the mixture (``export()``), its
    rasterised map and the loss history."""

    backprojection: Path
    checkpoint: Path
    gaussians: Path
    map: Path
    history: Path


def seed_map(particles: ParticleSet, cache: Path, device: torch.device, progress: ProgressCallback | None = None,
             user_map: str | None = None, should_stop: StopCheck | None = None) -> np.ndarray:
    """The (D, D, D) map the consensus is seeded from: ``user_map`` (checked to lie on the
    particles' lattice), else the particles' backprojection, computed once and cached as
    ``cache`` (an .mrc) so a resumed run does not redo it. should_stop: asked after every batch
    of the backprojection (:class:`~cryospire_core.progress.Cancelled`, nothing cached)."""
    if user_map is not None:
        m = read_map(user_map)
        if m.data.shape != (particles.box,) * 3 or not np.isclose(m.apix, particles.apix, rtol=1e-3):
            raise InputError(user_map, "map grid", f"{particles.box}^3 voxels of {particles.apix:.4g} Å like the particles",
                             f"{m.data.shape} of {m.apix:.4g} Å")
        return m.data
    cached = Path(cache)
    if cached.exists():
        return read_map(cached).data
    volume = backproject(particles, device=device, progress=progress, should_stop=should_stop).volume
    write_map(cached, volume, particles.apix)
    return volume


def fit_consensus(
    particles: ParticleSet,
    init_map: np.ndarray,
    files: ConsensusFiles,
    cfg: ConsensusConfig,
    device: torch.device,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpoint_minutes: float = 5.0,
    precision: str = "fp32",
    dist: Distributed = Distributed(),
    misfit: ImageMisfit | None = None,
) -> ConsensusResult:
    """Fit the consensus mixture; writes ``files.checkpoint`` while it runs and, when finished,
    ``files.gaussians``, ``files.map`` and ``files.history`` (their folders must exist).

    particles: ParticleSet; init_map: (D, D, D) map on the data lattice to seed from (see
    :func:`seed_map`); cfg's epochs, batch_size and seed drive the loop. A checkpoint already at ``files.checkpoint`` is resumed from (the seeding
    and 3D pre-fit are skipped: the checkpoint holds their result). precision: a resolved
    :mod:`precision` name; dist: in a data-parallel run every rank calls this, rank 0 writes;
    misfit: the data term the images are fitted with (default: plain mean squared error).
    should_stop is asked between the steps of the 3D pre-fit too (``cancelled`` then, with no
    checkpoint: a resumed fit starts over) and of the image fit.
    """
    checkpoint = files.checkpoint
    rng = np.random.default_rng(cfg.seed)
    centres, widths, amps = seed_from_map(init_map, particles.apix, cfg, rng)
    model = GaussianMixture(centres, widths, amps, particles.lattice, cfg.min_width_px).to(device)
    if misfit is not None:
        model.misfit = misfit.to(device)
    if not checkpoint.exists() and cfg.map_fit_steps > 0:
        try:
            fit_to_map(model, torch.tensor(init_map, dtype=torch.float32, device=device), cfg.map_fit_steps, lr=0.05,
                       progress=progress, should_stop=None if dist.active else should_stop,  # ranks stop together in the loop
                       stage="consensus: fitting the seed to the map")
        except Cancelled:
            return ConsensusResult("cancelled", model, [])
    optimizer = make_optimizer(model, cfg.lr)
    loop = LoopConfig.for_stage(cfg, checkpoint_minutes, precision)
    result = run_loop(model, optimizer, particles, loop, checkpoint, "consensus", device, progress, should_stop, dist=dist)
    if result.status == "finished" and dist.is_main:
        export = model.export()
        write_npz(files.gaussians, **export)
        with torch.no_grad():
            write_map(files.map, model.volume().cpu().numpy(), particles.apix)
        write_json(files.history, {"epoch_loss": result.history})
    return ConsensusResult(result.status, model, result.history)
