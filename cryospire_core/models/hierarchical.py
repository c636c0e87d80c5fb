"""Stage 2: the part-aware hierarchical model.

G Gaussians, each with a fixed part index a_i among K parts. Each part has an anchor (centre,
fixed, and feature, learnable). Gaussians are parametrised relative to their anchor:
``c_i = anchor_c[a_i] + dc_i`` and ``f_i = anchor_f[a_i] + df_i`` (df starts at 0, penalised by
``offset_weight * sum_i |df_i|^2``). Three MLPs (see :class:`discovery.PairMLP`):

1. anchors, [z_n, anchor_f[a]] -> rotation vector (radians) and translation (pixels) of part a
   in image n, the rotation about the anchor centre; the last layer starts at zero (identity);
2. residuals, [z_n, f_i] -> small displacement of Gaussian i (pixels), starts at zero;
3. presence, [z_n, f_i] -> sigmoid gate on the amplitude, starts at sigmoid(gate_bias) (the
   stored amplitudes are divided by it so the initial model reproduces its seed).

Deformed centre: ``R_a (c_i - anchor_c[a]) + anchor_c[a] + t_a + residual_i``.
Loss normalisation as in stage 1 (:mod:`discovery`): the paper's per-image loss (sum of squared
pixel errors for unit-variance images + prior |z|^2) averaged over the batch, plus
``offset_weight * sum |df|^2``, all divided by D^2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.precision import float32_region
from cryospire_core.io.mixture import mixture_lattice
from cryospire_core.models.consensus import GaussianMixture
from cryospire_core.models.discovery import PairMLP, as_arrays
from cryospire_core.models.engine import Batch
from cryospire_core.models.latents import LatentTable, MultiOptimizer, make_optimizer
from cryospire_core.models.rigid import rotvec_to_rotation
from cryospire_core.models.stage import Decoded, StageConfig, StageModel


@dataclass(kw_only=True)
class HierarchicalConfig(StageConfig):
    """Every knob of stage 2: the shared ones (:class:`~cryospire_core.models.stage.StageConfig`;
    n_gaussians is the G the stage-2 seed should have, the caller builds the seed) at stage 2's
    sizes, and offset_weight: weight of sum |df|^2; anchors: False drops the per-part rigid
    motions (every Gaussian moves by its residual alone: the paper's "without anchors" ablation).
    """

    n_gaussians: int = 8192
    hidden: int = 128
    depth: int = 3
    lr_mlp: float = 1e-3
    epochs: int = 30
    offset_weight: float = 0.01
    anchors: bool = True


class PartAwareModel(StageModel):
    """Stage 2 model.

    centres (G, 3) Å, widths (G,) Å, amplitudes (G,): the seed mixture; part_index (G,) int in
    [0, K); anchor_centres (K, 3) Å; anchor_features (K, feature_dim); latents (N, zdim) starting
    codes (stage 1's); lattice: the data's. The MLPs' initial weights are drawn from a
    generator seeded by ``cfg.seed``.
    """

    stage = "hierarchical"

    def __init__(self, centres: np.ndarray, widths: np.ndarray, amplitudes: np.ndarray, part_index: np.ndarray,
                 anchor_centres: np.ndarray, anchor_features: np.ndarray, latents: np.ndarray, lattice: Lattice,
                 cfg: HierarchicalConfig) -> None:
        super().__init__()
        part_index = np.asarray(part_index, dtype=np.int64)
        anchor_centres = np.asarray(anchor_centres, dtype=np.float64)
        K = len(anchor_centres)
        if part_index.shape != (len(centres),) or part_index.min() < 0 or part_index.max() >= K:
            raise ValueError(f"PartAwareModel: part_index must be (G,) = ({len(centres)},) in [0, {K}), got "
                             f"shape {part_index.shape} range [{part_index.min()}, {part_index.max()}]")
        if np.asarray(anchor_features).shape != (K, cfg.feature_dim):
            raise ValueError(f"PartAwareModel: anchor_features must be {(K, cfg.feature_dim)}, got {np.asarray(anchor_features).shape}")
        self.cfg, self.lattice, self.n_parts = cfg, lattice, K
        gate0 = 1.0 / (1.0 + np.exp(-cfg.gate_bias))
        # The mixture's "centres" are the offsets dc_i from each Gaussian's anchor.
        offsets = np.asarray(centres, dtype=np.float64) - anchor_centres[part_index]
        self.offsets = GaussianMixture(offsets, widths, np.asarray(amplitudes) / gate0, lattice, cfg.min_width_px)
        self.register_buffer("part_index", torch.as_tensor(part_index))
        self.register_buffer("anchor_centres", torch.as_tensor(anchor_centres, dtype=torch.float32))
        self.anchor_feature = nn.Parameter(torch.as_tensor(np.asarray(anchor_features), dtype=torch.float32).clone())
        self.feature_offset = nn.Parameter(torch.zeros(len(centres), cfg.feature_dim))
        self.latents = LatentTable(len(latents), cfg.zdim, init=latents)
        mlp = dict(zdim=cfg.zdim, fdim=cfg.feature_dim, hidden=cfg.hidden, depth=cfg.depth,
                   generator=torch.Generator().manual_seed(cfg.seed))
        # Only K pairs per image: the anchor MLP is always dense.
        self.anchor_mlp = PairMLP(out=6, form="dense", **mlp)
        self.residual_mlp = PairMLP(out=3, form=cfg.mlp_form, rank=cfg.rank, **mlp)
        self.presence_mlp = PairMLP(out=1, form=cfg.mlp_form, rank=cfg.rank, out_bias=cfg.gate_bias, **mlp)

    @classmethod
    def from_parts(cls, gaussians: Mapping, part_index: np.ndarray, anchor_centres: np.ndarray,
                   anchor_features: np.ndarray, latents: np.ndarray, cfg: HierarchicalConfig,
                   device: torch.device | str = "cpu") -> PartAwareModel:
        """Build from a stage-2 seed mixture (dict with centres, widths, amplitudes, box, apix),
        its part labels, the anchors and stage 1's latents."""
        g = as_arrays(gaussians)
        return cls(g["centres"], g["widths"], g["amplitudes"], part_index, anchor_centres, anchor_features,
                   latents, mixture_lattice(g), cfg).to(device)

    # -- decoding -----------------------------------------------------------------------------

    @property
    def centres(self) -> torch.Tensor:
        """(G, 3) Å rest centres ``anchor_c[a_i] + dc_i``."""
        return self.anchor_centres[self.part_index] + self.offsets.centres

    @property
    def widths(self) -> torch.Tensor:
        """(G,) Å, shared by every image."""
        return self.offsets.widths

    def features(self) -> torch.Tensor:
        """(G, feature_dim) ``anchor_f[a_i] + df_i``."""
        return self.anchor_feature[self.part_index] + self.feature_offset

    def part_motions(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents z (B, zdim) -> (rotvec (B, K, 3) radians, translation (B, K, 3) Å) of each part
        (rotation about its anchor centre); zero without anchors."""
        if not self.cfg.anchors:
            return z.new_zeros(len(z), self.n_parts, 3), z.new_zeros(len(z), self.n_parts, 3)
        out = self.anchor_mlp(z, self.anchor_feature)
        return out[..., :3], out[..., 3:] * self.lattice.apix

    def gates(self, z: torch.Tensor) -> torch.Tensor:
        """(B, G) amplitude gates in [0, 1]."""
        return torch.sigmoid(self.presence_mlp(z, self.features())[..., 0])

    def part_presence(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K) mean gate of each part's Gaussians."""
        g = self.gates(z)
        total = torch.zeros(g.shape[0], self.n_parts, dtype=g.dtype, device=g.device).index_add_(1, self.part_index, g)
        count = torch.bincount(self.part_index, minlength=self.n_parts).clamp(min=1).to(g.dtype)
        return total / count

    def decode(self, z: torch.Tensor) -> Decoded:
        """Latents z (B, zdim) -> centres (B, G, 3) Å, gates and gated amplitudes (B, G), and the
        parts' motions (:meth:`part_motions`)."""
        rotvec, trans = self.part_motions(z)
        residual = self.residual_mlp(z, self.features()) * self.lattice.apix
        gates = self.gates(z)
        with float32_region(z.device.type):  # rigid motions of Å-scale offsets: float32 under autocast
            R = rotvec_to_rotation(rotvec)[:, self.part_index]  # (B, G, 3, 3)
            anchor = self.anchor_centres[self.part_index]
            rel = self.offsets.centres  # c_i - anchor_c[a_i]
            centres = torch.einsum("bgij,gj->bgi", R, rel) + anchor + trans[:, self.part_index] + residual
        return Decoded(centres, gates * self.offsets.amplitudes, gates, (rotvec, trans))

    # -- training -----------------------------------------------------------------------------

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Normalised L2 + latent prior + feature-offset penalty (see the module docstring)."""
        cfg = self.cfg
        z = self.latents(batch.index)
        data = self.data_term(batch, z)
        prior = cfg.prior_weight * z.pow(2).sum(1).mean() / self.lattice.box**2
        offset = cfg.offset_weight * self.feature_offset.pow(2).sum() / self.lattice.box**2
        metrics = {"data": float(data.detach()), "prior": float(prior.detach()), "offset": float(offset.detach())}
        return data + prior + offset, metrics

    def make_optimizer(self) -> MultiOptimizer:
        """Adam over the mixture, features and MLPs; SparseAdam over the latents."""
        cfg = self.cfg
        amp_scale = float(self.offsets.amplitudes.detach().abs().mean()) or 1.0
        mlps = [p for mod in (self.anchor_mlp, self.residual_mlp, self.presence_mlp) for p in mod.parameters()]
        groups = [
            {"params": [self.offsets.centres_px, self.offsets.width_raw], "lr": cfg.lr_gaussians},
            {"params": [self.offsets.amplitudes], "lr": cfg.lr_gaussians * amp_scale},
            {"params": [self.anchor_feature, self.feature_offset], "lr": cfg.lr_features},
            {"params": mlps, "lr": cfg.lr_mlp},
        ]
        return make_optimizer(groups, self.latents, cfg.lr_latent)
