"""What the two latent stages (stage 1, :mod:`discovery`; stage 2, :mod:`hierarchical`) share:
their config's common knobs (:class:`StageConfig`), the model interface the training loop,
rendering, inference and analysis call (:class:`StageModel`) and what decoding a batch of
latents gives (:class:`Decoded`).

Callers that need to know which stage they hold read ``model.stage`` (``"discovery"`` or
``"hierarchical"``, the run folder's names) or whether ``Decoded.motions`` is None; they never
probe a model for attributes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.misfit import ImageMisfit
from cryospire_core.imaging.render import project, rasterize
from cryospire_core.models.engine import Batch
from cryospire_core.models.latents import LatentTable, MultiOptimizer


@dataclass(kw_only=True)
class StageConfig:
    """The knobs stage 1 and stage 2 share (each stage's config adds its own and its defaults
    for the sizes, rates and epochs that differ).

    n_gaussians: G; zdim: latent size; feature_dim: per-Gaussian feature size; hidden/depth: MLP
    width and number of hidden layers; mlp_form: ``dense`` (the paper's) or ``lowrank`` with
    ``rank`` (:class:`discovery.PairMLP`); lr_mlp/lr_features/lr_latent/lr_gaussians: Adam rates
    (centres and widths of the mixture in pixels, amplitudes relative to their mean);
    prior_weight: of |z|^2 per image (see :mod:`discovery`); image_var: variance of the observed
    pixels the data term is divided by (:func:`discovery.image_variance`); gate_bias: initial gate
    logit (sigmoid(3) = 0.95; amplitudes are divided by it so the initial model reproduces its
    seed); min_width_px: width floor; epochs, batch_size: the training loop; seed: of the model's
    random initialisation and of the loop's shuffling; box: the pixels per side the stage sees
    the images at (Fourier-cropped as they are read; None or a larger value: the stack's box).
    """

    n_gaussians: int
    zdim: int = 4
    feature_dim: int = 24
    hidden: int
    depth: int
    mlp_form: str = "dense"
    rank: int = 8
    lr_mlp: float
    lr_features: float = 1e-2
    lr_latent: float = 0.1
    lr_gaussians: float = 2e-3
    prior_weight: float = 0.1
    image_var: float = 1.0
    gate_bias: float = 3.0
    min_width_px: float = 0.7
    epochs: int
    batch_size: int = 64
    seed: int = 0
    box: int | None = None


@dataclass(frozen=True)
class Decoded:
    """A stage model's mixture at B latents (float32 on the model's device).

    centres: (B, G, 3) Å, deformed Gaussian centres; amplitudes: (B, G), the gated amplitudes
    the images and maps are made of; gates: (B, G) in [0, 1], each Gaussian's presence;
    motions: stage 2's rigid motion of each of its K parts, (rotvec (B, K, 3) radians about the
    part's anchor centre, translation (B, K, 3) Å) (zero without anchors), or None for stage 1,
    whose Gaussians move one by one.
    """

    centres: torch.Tensor
    amplitudes: torch.Tensor
    gates: torch.Tensor
    motions: tuple[torch.Tensor, torch.Tensor] | None = None


class StageModel(nn.Module, ABC):
    """A latent stage's model: G isotropic Gaussians (shared widths) deformed and gated per image
    by its latent z (B, zdim) from the auto-decoded table ``latents``.

    stage: ``"discovery"`` or ``"hierarchical"``; cfg: its config; lattice: the data's, which
    the images and maps are rendered on; misfit: the data term of :meth:`loss` (plain mean
    squared error until the pipeline gives it the run's window and noise weights,
    :mod:`~cryospire_core.imaging.misfit`).
    """

    stage: ClassVar[str]
    cfg: StageConfig
    lattice: Lattice
    latents: LatentTable

    def __init__(self) -> None:
        super().__init__()
        self.misfit = ImageMisfit()

    @property
    @abstractmethod
    def centres(self) -> torch.Tensor:
        """(G, 3) Å rest centres (before any per-image deformation)."""

    @property
    @abstractmethod
    def widths(self) -> torch.Tensor:
        """(G,) Å, shared by every image."""

    @abstractmethod
    def gates(self, z: torch.Tensor) -> torch.Tensor:
        """(B, G) amplitude gates in [0, 1] for latents z (B, zdim)."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> Decoded:
        """The mixture at latents z (B, zdim)."""

    @abstractmethod
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a batch (a scalar) and its terms by name (floats, for logs)."""

    @abstractmethod
    def make_optimizer(self) -> MultiOptimizer:
        """Adam over the mixture, features and MLPs; SparseAdam over the latents."""

    def data_term(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """The misfit of the batch's images rendered at latents z, divided by ``cfg.image_var``."""
        return self.misfit(self.render_images(batch, z), batch.images, batch.optics_group) / self.cfg.image_var

    def render_images(self, batch: Batch, z: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted images (B, D, D) of a batch (its poses, shifts and CTFs) at latents z
        (default: the batch's own latents)."""
        d = self.decode(self.latents(batch.index) if z is None else z)
        return project(d.centres, self.widths, d.amplitudes, batch.rotations, batch.shifts, self.lattice,
                       ctf=batch.ctf)

    def volume(self, z: torch.Tensor, *, lattice: Lattice | None = None) -> torch.Tensor:
        """The mixture at one latent z (zdim,) rasterised on ``lattice`` (default: the model's,
        the data's at the stage's box), (B, B, B). The Gaussians are in Å, so any lattice of
        the same field of view (``self.lattice.cropped(B)``) shows the same map, finer or coarser."""
        d = self.decode(z.reshape(1, -1))
        return rasterize(d.centres[0], self.widths, d.amplitudes[0], lattice or self.lattice)
