"""Plain dense Gaussian-mixture rendering: the reference the fast renderer is tested against.

Every (image, pixel, Gaussian) or (voxel, Gaussian) term is evaluated with no windowing and no
separable tricks. Work is chunked over Gaussians only to bound memory; each chunk is
checkpointed so that the backward pass recomputes it instead of keeping it alive.
Same arguments and conventions as :mod:`cryospire_core.imaging.render`.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from cryospire_core.imaging import ctf as ctf_mod
from cryospire_core.imaging import fourier
from cryospire_core.imaging.lattice import Lattice

#: Largest number of (sample, Gaussian) terms evaluated at once.
CHUNK_TERMS = 2**23


def project_dense(
    centres: torch.Tensor,
    widths: torch.Tensor,
    amplitudes: torch.Tensor,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    lattice: Lattice,
    ctf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference projection, (B, D, D); see :func:`cryospire_core.imaging.render.project`."""
    B = rotations.shape[0]
    c = centres if centres.dim() == 3 else centres[None].expand(B, -1, -1)
    m = amplitudes if amplitudes.dim() == 2 else amplitudes[None].expand(B, -1)
    dtype, dev = c.dtype, c.device
    xy = torch.einsum("bij,bgj->bgi", rotations[:, :2, :].to(dtype), c) - shifts.to(dtype)[:, None, :]
    box, apix = lattice.box, lattice.apix
    axis = lattice.axis_torch(dev, dtype)
    Y, X = torch.meshgrid(axis, axis, indexing="ij")
    X, Y = X.reshape(1, -1, 1), Y.reshape(1, -1, 1)  # (1, D*D, 1) Å
    peak = m * math.sqrt(2.0 * math.pi) * widths / apix  # (B, G)
    inv2 = 0.5 / widths**2

    def part(xy_c, peak_c, inv2_c):
        r2 = (X - xy_c[:, None, :, 0]) ** 2 + (Y - xy_c[:, None, :, 1]) ** 2  # (B, D*D, g)
        return torch.bmm(_exp_neg(r2 * inv2_c), peak_c[:, :, None])[..., 0]

    images = _chunked(part, xy, peak, inv2, box * box).reshape(B, box, box)
    if ctf is None:
        return images
    freqs = fourier.freq_grid_2d(box, device=dev, dtype=dtype) / apix
    return fourier.ifft2_centered(fourier.fft2_centered(images) * ctf_mod.compute_ctf(freqs, ctf))


def rasterize_dense(
    centres: torch.Tensor, widths: torch.Tensor, amplitudes: torch.Tensor, lattice: Lattice
) -> torch.Tensor:
    """Reference volume, (D, D, D) (z, y, x); see :func:`cryospire_core.imaging.render.rasterize`.

    Takes a single set of centres (G, 3) Å and amplitudes (G,).
    """
    dtype, dev = centres.dtype, centres.device
    axis = lattice.axis_torch(dev, dtype)
    Z, Y, X = (a.reshape(1, -1, 1) for a in torch.meshgrid(axis, axis, axis, indexing="ij"))
    inv2 = 0.5 / widths**2

    def part(c_c, m_c, inv2_c):
        r2 = (X - c_c[:, None, :, 0]) ** 2 + (Y - c_c[:, None, :, 1]) ** 2 + (Z - c_c[:, None, :, 2]) ** 2
        return torch.bmm(_exp_neg(r2 * inv2_c), m_c[:, :, None])[..., 0]

    return _chunked(part, centres[None], amplitudes[None], inv2, lattice.box**3).reshape(lattice.shape)


def _exp_neg(q: torch.Tensor) -> torch.Tensor:
    """exp(-q), with q capped at 80 (exp(-80) = 1.8e-35): far samples would otherwise give
    float32 denormals, which are very slow, for a change below 2e-35."""
    return torch.exp(-q.clamp(max=80.0))


def _chunked(part, pos: torch.Tensor, peak: torch.Tensor, inv2: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Sum ``part`` over chunks of Gaussians; pos (B, G, .), peak (B, G), inv2 (G,).

    Returns (B, n_samples). Chunks are checkpointed when a gradient is needed.
    """
    B, G = peak.shape
    step = max(1, CHUNK_TERMS // max(1, B * n_samples))
    total = torch.zeros(B, n_samples, dtype=pos.dtype, device=pos.device)
    for g0 in range(0, G, step):
        args = (pos[:, g0 : g0 + step], peak[:, g0 : g0 + step], inv2[g0 : g0 + step])
        if torch.is_grad_enabled() and any(a.requires_grad for a in args):
            total = total + checkpoint(part, *args, use_reentrant=False)
        else:
            total = total + part(*args)
    return total
