"""Stage 1: part discovery, a coarse Gaussian mixture deformed per image by small MLPs.

Each Gaussian i has a learnable feature f_i (R^24) and each image n a latent z_n (R^4,
auto-decoder, see :mod:`latents`). Two MLPs read [z_n, f_i]: one shifts the centre,
``c_i(n) = c_i + MLP_c(z_n, f_i)``, one gates the amplitude, ``m_i(n) = sigmoid(MLP_m) m_i``.
Widths never depend on z. Gaussians that move or vanish together end up with similar features,
which is what the part clustering (parts.py) reads.

With ``handles`` > 0 (our option, off by default) the shift MLP is replaced by
:class:`SkinnedMotion`: H rigid motions per image, blended per Gaussian. On the realistic hinge
sets the paper's MLP decodes about a third of the true domain motion (slope 0.25-0.30) and the
blend 0.63-0.86 (``benchmarks/parts_oracle.py``, three seeds). What turns that into better parts is
the rigid reassignment (``--parts-refine rigid``, :func:`~cryospire_core.models.parts.rigid_reassign`);
both are off by default because together they break the ``hinge`` preset (see parts.py and the
README's "Results on real molecules").

Loss normalisation (our choice). The paper's loss is, per image, the SUM of squared errors over
the D^2 pixels plus 0.1 |z_n|^2, for images normalised to unit variance. We compute the mean
over pixels and images, divided by ``image_var`` (the variance of the observed pixels, so any
image scale means the same), plus ``prior_weight * mean_n |z_n|^2 / D^2``. That is exactly the
paper's per-image loss divided by the constant D^2 (Adam is insensitive to a constant factor),
so ``prior_weight = 0.1`` means what the paper's 0.1 means at every box size. The squared
errors are the model's ``misfit`` (:mod:`~cryospire_core.imaging.misfit`): seen through the
run's soft window and, with noise weighting, whitened; it keeps the scale of the plain mean.

The MLPs (:class:`PairMLP`) split their first layer, ``[z, f] W = z Wz + f Wf``: ``z Wz`` is
computed once per image and ``f Wf`` once per Gaussian, and only the sum and what follows is per
(image, Gaussian) pair. Form ``dense`` is the paper's MLP; form ``lowrank`` replaces the
per-pair layers by a rank-r product of a per-image and a per-Gaussian network, whose per-pair
cost is only r x outputs multiply-adds (see benchmarks/models.py for speed and quality).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans
from torch import nn
from torch.nn.utils import skip_init

from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.precision import float32_region, to_float32
from cryospire_core.imaging.render import rasterize
from cryospire_core.io.mixture import mixture_lattice
from cryospire_core.io.particles import ParticleSet
from cryospire_core.models.consensus import GaussianMixture
from cryospire_core.models.engine import Batch
from cryospire_core.models.latents import LatentTable, MultiOptimizer, make_optimizer
from cryospire_core.models.rigid import rotvec_to_rotation
from cryospire_core.models.stage import Decoded, StageConfig, StageModel
from cryospire_core.progress import StopCheck, check_stop

MLP_FORMS = ("dense", "lowrank")

#: Largest per-pair activation (scalars) the dense form builds at once: 4 MiB in float32.
PAIR_CHUNK_ELEMENTS = 2**20


@dataclass(kw_only=True)
class DiscoveryConfig(StageConfig):
    """Every knob of stage 1: the shared ones (:class:`~cryospire_core.models.stage.StageConfig`)
    at stage 1's sizes; latent_init_std/feature_init_std, the spread of the random initial
    codes/features; feature_tv, the weight of the features' total variation over neighbouring
    Gaussians (:func:`feature_total_variation`; 0: off). It is off by default because it did not
    hold up over stage-1 seeds: at 1e-4 it made the parts of a complex whose chains come and go
    better and those of a two-domain hinge worse (``benchmarks/results/parts_seeds.txt``).
    handles: 0, every Gaussian is displaced by the shift MLP (the paper's); H > 0, by a blend of
    H rigid motions per image (:class:`SkinnedMotion`)."""

    n_gaussians: int = 2048
    hidden: int = 32
    depth: int = 1
    lr_mlp: float = 1e-2
    epochs: int = 15
    latent_init_std: float = 0.1
    feature_init_std: float = 1.0
    feature_tv: float = 0.0
    handles: int = 0


#: Each Gaussian's nearest neighbours (by seed centre) that the feature total variation compares it with.
TV_NEIGHBOURS = 8


def neighbour_pairs(centres: np.ndarray, k: int = TV_NEIGHBOURS) -> torch.Tensor:
    """(P, 2) int64 index pairs i < j, each Gaussian with its ``k`` nearest others (centres (G, 3) Å)."""
    centres = np.asarray(centres, np.float64)
    k = min(k, len(centres) - 1)
    if k < 1:
        return torch.zeros((0, 2), dtype=torch.int64)
    _, near = cKDTree(centres).query(centres, k=k + 1)
    pairs = np.stack([np.repeat(np.arange(len(centres)), k), near[:, 1:].reshape(-1)], axis=1)
    return torch.as_tensor(np.unique(np.sort(pairs, axis=1), axis=0), dtype=torch.int64)


def feature_total_variation(features: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean over neighbour ``pairs`` (P, 2) of |f_i - f_j| (Euclidean) for features (G, F): the
    graph total variation, which favours features that are constant over spatial patches and
    change in a step between them (a rigid domain and its neighbour), unlike a squared penalty
    that blurs the step. A tiny floor keeps the gradient finite where two features are equal."""
    if len(pairs) == 0:
        return features.sum() * 0.0
    diff = features[pairs[:, 0]] - features[pairs[:, 1]]
    return torch.sqrt(diff.pow(2).sum(1) + 1e-12).mean()


def seeded_linear(n_in: int, n_out: int, generator: torch.Generator, bias: bool = True) -> nn.Linear:
    """``nn.Linear(n_in, n_out)`` with torch's default initialisation (Kaiming-uniform weights,
    uniform bias in +-1/sqrt(n_in)) drawn from ``generator``: the global RNG is neither read nor
    advanced, so a model's initial weights depend on its seed alone."""
    layer = skip_init(nn.Linear, n_in, n_out, bias=bias)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        if bias:
            bound = 1.0 / math.sqrt(n_in)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def zero_linear(n_in: int, n_out: int, bias: float = 0.0) -> nn.Linear:
    """``nn.Linear(n_in, n_out)`` starting at zero weights and a constant ``bias`` (draws nothing)."""
    layer = skip_init(nn.Linear, n_in, n_out)
    with torch.no_grad():
        nn.init.zeros_(layer.weight)
        nn.init.constant_(layer.bias, bias)
    return layer


class PairMLP(nn.Module):
    """An MLP of [z, f] evaluated for every (image, item) pair: ``forward(z (B, zdim), f (G, fdim))
    -> (B, G, out)``.

    The first layer is split (``z Wz + b`` per image, ``f Wf`` per item). ``dense``: the sum goes
    through ReLU, ``depth - 1`` more hidden layers of ``hidden`` and a linear output, all per
    pair. ``lowrank``: ``z Wz + b`` and ``f Wf + b_f`` each go through their own ``depth - 1``
    hidden layers; the image branch ends in (rank, out) coefficients U(z), the item branch in
    (rank,) values V(f), and the output is ``sum_r V_r(f) U_r(z) + bias``.
    The last layer starts at zero so the output starts at ``out_bias`` for every z and f; the
    other layers' initial weights are drawn from ``generator`` (:func:`seeded_linear`).
    """

    def __init__(self, zdim: int, fdim: int, out: int, hidden: int, depth: int, form: str = "dense",
                 rank: int = 8, out_bias: float = 0.0, *, generator: torch.Generator) -> None:
        super().__init__()
        if form not in MLP_FORMS:
            raise ValueError(f"PairMLP: form must be one of {MLP_FORMS}, got {form!r}")
        if depth < 1:
            raise ValueError(f"PairMLP: depth must be >= 1, got {depth}")
        self.form, self.out, self.rank = form, int(out), int(rank)
        self.z_in = seeded_linear(zdim, hidden, generator)
        self.f_in = seeded_linear(fdim, hidden, generator, bias=form == "lowrank")

        def trunk() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(depth - 1):
                layers += [seeded_linear(hidden, hidden, generator), nn.ReLU()]
            return nn.Sequential(*layers)

        self.trunk = trunk()
        if form == "dense":
            self.head = zero_linear(hidden, out, out_bias)
        else:
            self.f_trunk = trunk()
            self.u_head = zero_linear(hidden, rank * out)
            self.v_head = seeded_linear(hidden, rank, generator)
            self.bias = nn.Parameter(torch.full((out,), float(out_bias)))

    def forward(self, z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """(B, G, out) float32 (the layers themselves run in the autocast dtype when one is active)."""
        zh = self.z_in(z)  # (B, H) once per image
        fh = self.f_in(f)  # (G, H) once per item, shared by the batch
        if self.form == "dense":
            # Items in chunks: each chunk's (B, g, H) activations stay below glibc's mmap
            # threshold (32 MiB), so they come from the reused heap instead of fresh pages
            # (measured ~3x faster at 4,096-8,192 Gaussians, batch 64, width 32).
            step = max(1, PAIR_CHUNK_ELEMENTS // (zh.shape[0] * zh.shape[1]))
            out = torch.cat([self.head(self.trunk(torch.relu(zh[:, None, :] + fh[None, i : i + step, :])))
                             for i in range(0, fh.shape[0], step)], 1)
        else:
            u = self.u_head(self.trunk(torch.relu(zh))).view(-1, self.rank, self.out)  # (B, r, out)
            v = self.v_head(self.f_trunk(torch.relu(fh)))  # (G, r)
            out = torch.einsum("gr,bro->bgo", v, u) + self.bias
        return to_float32(out)  # under autocast the MLP runs in bf16/fp16; what follows in float32


class SkinnedMotion(nn.Module):
    """Per-image displacements as a blend of H rigid motions (linear-blend skinning).

    Each image's latent z (B, zdim) gives, through an MLP, H rigid motions: a rotation vector
    (radians) about a fixed pivot p_h (Å) and a translation (pixels). Gaussian i carries
    learnable blend weights w_i = softmax(logits_i) over the handles and moves by
    ``sum_h w_ih [(R_h - I)(c_i - p_h) + t_h]``. A rigid domain is then moved rigidly however
    far it is from the hinge axis, with 6 H numbers per image instead of 3 G.

    centres: (G, 3) Å rest centres; masses: (G,) weights of the k-means that places the H pivots;
    the initial logits are -|c_i - p_h|^2 / (2 s^2) with s half the median distance between
    neighbouring pivots, so each handle starts as a soft spatial patch. The MLP's last layer
    starts at zero: every Gaussian starts at rest.
    """

    def __init__(self, centres: np.ndarray, masses: np.ndarray, zdim: int, handles: int, hidden: int, depth: int,
                 apix: float, *, seed: int, generator: torch.Generator) -> None:
        super().__init__()
        c = np.asarray(centres, np.float64)
        H = int(min(handles, len(c)))
        pivots = KMeans(n_clusters=H, n_init=1, random_state=seed).fit(c, sample_weight=masses).cluster_centers_
        spacing = np.median(cKDTree(pivots).query(pivots, k=2)[0][:, 1]) if H > 1 else 1.0
        d2 = ((c[:, None, :] - pivots[None]) ** 2).sum(-1)
        self.handles, self.apix = H, float(apix)
        self.register_buffer("pivots", torch.as_tensor(pivots, dtype=torch.float32))
        self.logits = nn.Parameter(torch.as_tensor(-d2 / (2 * (spacing / 2) ** 2), dtype=torch.float32))
        layers: list[nn.Module] = [seeded_linear(zdim, hidden, generator), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [seeded_linear(hidden, hidden, generator), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, zero_linear(hidden, 6 * H))

    def weights(self) -> torch.Tensor:
        """(G, H) blend weights, rows summing to 1."""
        return torch.softmax(self.logits, dim=1)

    def motions(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents z (B, zdim) -> each handle's (rotvec (B, H, 3) radians about its pivot,
        translation (B, H, 3) Å)."""
        out = to_float32(self.mlp(z)).view(len(z), self.handles, 6)
        return out[..., :3], out[..., 3:] * self.apix

    def forward(self, z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Latents z (B, zdim), rest centres (G, 3) Å -> displacements (B, G, 3) Å."""
        rotvec, trans = self.motions(z)
        with float32_region(z.device.type):  # rigid motions of Å-scale coordinates: float32 under autocast
            # Handle h moves x to x + A_h x + b_h with A_h = R_h - I, b_h = t_h - A_h p_h; blending
            # the 12 numbers (A_h, b_h) first is one (G, H) x (H, 12 B) product, instead of moving
            # every Gaussian by every handle (B x H x G x 3, ~6x slower at G = 1,600, H = 24).
            A = rotvec_to_rotation(rotvec) - torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)  # (B, H, 3, 3)
            b = trans - torch.einsum("bhij,hj->bhi", A, self.pivots)
            affine = torch.cat([A.flatten(2), b], 2)  # (B, H, 12)
            blended = torch.einsum("gh,bhk->bgk", self.weights(), affine)  # (B, G, 12)
            return torch.einsum("bgij,gj->bgi", blended[..., :9].unflatten(2, (3, 3)), centres) + blended[..., 9:]


def coarsen(centres: np.ndarray, widths: np.ndarray, amplitudes: np.ndarray, n: int, seed: int = 0):
    """Reduce a mixture to at most ``n`` Gaussians: (centres (n, 3) Å, widths (n,) Å, amplitudes (n,)).

    Mixtures of at most n Gaussians are returned unchanged. Otherwise k-means on the centres
    weighted by each Gaussian's mass (m s^3) groups them, and each group becomes one Gaussian
    with the group's mass, mass-weighted centre and matched second moment
    (s^2 = mean of s_i^2 + |c_i - c|^2 / 3), so the coarse map keeps the density's mass and spread.
    """
    c = np.asarray(centres, dtype=np.float64)
    s = np.asarray(widths, dtype=np.float64)
    m = np.asarray(amplitudes, dtype=np.float64)
    if len(c) <= n:
        return c, s, m
    mass = np.maximum(m * s**3, 1e-12 * np.abs(m * s**3).max())
    labels = KMeans(n_clusters=n, n_init=1, max_iter=50, random_state=seed).fit(c, sample_weight=mass).labels_
    total = np.bincount(labels, weights=mass, minlength=n)
    centre = np.stack([np.bincount(labels, weights=mass * c[:, a], minlength=n) for a in range(3)], 1) / total[:, None]
    spread = s**2 + np.sum((c - centre[labels]) ** 2, axis=1) / 3.0
    width = np.sqrt(np.bincount(labels, weights=mass * spread, minlength=n) / total)
    # Mass of a Gaussian is m s^3 (2 pi)^1.5: keep each group's total signed mass.
    signed = np.bincount(labels, weights=m * s**3, minlength=n)
    return centre, width, signed / width**3


def image_variance(particles: ParticleSet, n: int = 1024, seed: int = 0, should_stop: StopCheck | None = None) -> float:
    """Variance of the pixels of up to ``n`` randomly chosen images (the data term's scale).

    The images are read ``VARIANCE_CHUNK`` at a time (each image is read alone: the same
    numbers as one read), with ``should_stop`` asked between reads
    (:class:`~cryospire_core.progress.Cancelled`)."""
    idx = np.sort(np.random.default_rng(seed).choice(len(particles), size=min(n, len(particles)), replace=False))
    chunks = []
    for i in range(0, len(idx), VARIANCE_CHUNK):
        check_stop(should_stop)
        chunks.append(particles.images(idx[i : i + VARIANCE_CHUNK]))
    return float(np.concatenate(chunks).astype(np.float64).var())


VARIANCE_CHUNK = 128
"""Images :func:`image_variance` reads at once (~0.1 s at 128 px cropped from 256 px)."""


def as_arrays(gaussians: Mapping) -> dict[str, np.ndarray]:
    """A consensus export (dict or loaded gaussians.npz) as plain numpy arrays."""
    return {k: np.asarray(gaussians[k]) for k in ("centres", "widths", "amplitudes", "box", "apix")}


class PartDiscoveryModel(StageModel):
    """Stage 1 model. centres/widths/amplitudes seed the base mixture (Å, Å, density);
    n_particles: number of latents; lattice: the data's. The random initial features,
    latents and MLP weights are drawn from a generator seeded by ``cfg.seed``."""

    stage = "discovery"

    def __init__(self, centres: np.ndarray, widths: np.ndarray, amplitudes: np.ndarray, n_particles: int,
                 lattice: Lattice, cfg: DiscoveryConfig) -> None:
        super().__init__()
        self.cfg, self.lattice = cfg, lattice
        rng = torch.Generator().manual_seed(cfg.seed)
        gate0 = 1.0 / (1.0 + np.exp(-cfg.gate_bias))
        self.base = GaussianMixture(centres, widths, np.asarray(amplitudes) / gate0, lattice, cfg.min_width_px)
        self.feature = nn.Parameter(torch.randn(len(centres), cfg.feature_dim, generator=rng) * cfg.feature_init_std)
        self.latents = LatentTable(n_particles, cfg.zdim, cfg.latent_init_std, generator=rng)
        mlp = dict(zdim=cfg.zdim, fdim=cfg.feature_dim, hidden=cfg.hidden, depth=cfg.depth, form=cfg.mlp_form,
                   rank=cfg.rank, generator=rng)
        if cfg.handles > 0:
            masses = np.abs(np.asarray(amplitudes, np.float64) * np.asarray(widths, np.float64) ** 3)
            self.skinned = SkinnedMotion(centres, masses, cfg.zdim, cfg.handles, cfg.hidden, cfg.depth, lattice.apix,
                                         seed=cfg.seed, generator=rng)
        else:
            self.shift_mlp = PairMLP(out=3, **mlp)  # pixels
        self.gate_mlp = PairMLP(out=1, out_bias=cfg.gate_bias, **mlp)
        if cfg.feature_tv > 0:
            # Only with the penalty on: loading a model (the GUI does it often) needs no neighbour
            # search, and a run without it has the module's usual buffers (DDP broadcasts them).
            # Not saved: rebuilt from the seed centres, so checkpoints keep their keys.
            self.register_buffer("tv_pairs", neighbour_pairs(centres), persistent=False)

    @classmethod
    def from_consensus(cls, gaussians: Mapping, n_particles: int, cfg: DiscoveryConfig,
                       lattice: Lattice | None = None, device: torch.device | str = "cpu") -> PartDiscoveryModel:
        """Seed from a consensus export (``GaussianMixture.export()`` or gaussians.npz), coarsened
        to ``cfg.n_gaussians`` by :func:`coarsen` when it has more, on ``lattice`` (default: the
        consensus's; the Gaussians are in Å, so they carry over to any box)."""
        g = as_arrays(gaussians)
        c, s, m = coarsen(g["centres"], g["widths"], g["amplitudes"], cfg.n_gaussians, cfg.seed)
        return cls(c, s, m, n_particles, lattice or mixture_lattice(g), cfg).to(device)

    # -- decoding -----------------------------------------------------------------------------

    @property
    def centres(self) -> torch.Tensor:
        """(G, 3) Å rest centres (the base mixture's)."""
        return self.base.centres

    def features(self) -> torch.Tensor:
        """(G, feature_dim) per-Gaussian features."""
        return self.feature

    def shifts(self, z: torch.Tensor) -> torch.Tensor:
        """(B, G, 3) Å centre displacements for latents z (B, zdim)."""
        if self.cfg.handles > 0:
            return self.skinned(z, self.base.centres)
        return self.shift_mlp(z, self.feature) * self.lattice.apix

    def gates(self, z: torch.Tensor) -> torch.Tensor:
        """(B, G) amplitude gates in [0, 1] for latents z (B, zdim)."""
        return torch.sigmoid(self.gate_mlp(z, self.feature)[..., 0])

    def decode(self, z: torch.Tensor) -> Decoded:
        """Latents z (B, zdim) -> centres (B, G, 3) Å, gates and gated amplitudes (B, G); no part motions."""
        gates = self.gates(z)
        return Decoded(self.base.centres[None] + self.shifts(z), gates * self.base.amplitudes, gates)

    @property
    def widths(self) -> torch.Tensor:
        """(G,) Å, shared by every image."""
        return self.base.widths

    def volume(self, z: torch.Tensor, gates: torch.Tensor | None = None, *,
               lattice: Lattice | None = None) -> torch.Tensor:
        """The mixture at one latent z (zdim,) rasterised on ``lattice`` (default: the model's),
        (B, B, B); ``gates`` (G,) replace the decoded presence when given."""
        if gates is None:
            return super().volume(z, lattice=lattice)
        centres = self.base.centres + self.shifts(z.reshape(1, -1))[0]
        return rasterize(centres, self.widths, gates * self.base.amplitudes, lattice or self.lattice)

    def improved_map(self, latents: torch.Tensor, gates_sample: torch.Tensor) -> torch.Tensor:
        """The map that seeds stage 2, (D, D, D): one sharp conformation (the particle nearest
        the mean of ``latents`` (N, zdim), where the consensus is smeared by motion) with every
        Gaussian at its present-state gate, the 95th percentile of ``gates_sample`` (n, G). A
        conformation that lacks an optional part would otherwise seed stage 2 with few Gaussians
        on it, and those few learn to stay on."""
        rep = int(torch.argmin(torch.linalg.norm(latents - latents.mean(0), dim=1)))
        return self.volume(latents[rep], torch.quantile(gates_sample, 0.95, dim=0))

    # -- training -----------------------------------------------------------------------------

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Normalised L2 + latent prior (see the module docstring) + the features' total variation
        when ``feature_tv`` > 0."""
        z = self.latents(batch.index)
        data = self.data_term(batch, z)
        prior = self.cfg.prior_weight * z.pow(2).sum(1).mean() / self.lattice.box**2
        terms = {"data": float(data.detach()), "prior": float(prior.detach())}
        loss = data + prior
        if self.cfg.feature_tv > 0:
            tv = self.cfg.feature_tv * feature_total_variation(self.feature, self.tv_pairs)
            loss, terms["feature_tv"] = loss + tv, float(tv.detach())
        return loss, terms

    def make_optimizer(self) -> MultiOptimizer:
        """Adam over the mixture, features and MLPs; SparseAdam over the latents."""
        cfg = self.cfg
        amp_scale = float(self.base.amplitudes.detach().abs().mean()) or 1.0
        motion = self.skinned.mlp if cfg.handles > 0 else self.shift_mlp
        mlps = [p for mod in (motion, self.gate_mlp) for p in mod.parameters()]
        per_gaussian = [self.feature, self.skinned.logits] if cfg.handles > 0 else [self.feature]
        groups = [
            {"params": [self.base.centres_px, self.base.width_raw], "lr": cfg.lr_gaussians},
            {"params": [self.base.amplitudes], "lr": cfg.lr_gaussians * amp_scale},
            {"params": per_gaussian, "lr": cfg.lr_features},
            {"params": mlps, "lr": cfg.lr_mlp},
        ]
        return make_optimizer(groups, self.latents, cfg.lr_latent)
