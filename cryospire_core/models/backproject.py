"""Direct Fourier inversion with CTF weighting (a consensus map from particles and poses).

Each image's centred 2D transform, shifted back to the box centre and multiplied by its CTF,
is inserted on the central section ``A.T @ (kx, ky, 0)`` of a 3D Fourier grid; the squared CTF
is accumulated on a second grid. The map's transform is then ``sum(CTF F) / (sum(CTF^2) + reg)``.

Accuracy choices (measured, see tests/core/test_backproject.py):
- images are zero-padded ``pad`` times (default 2) before the FFT, so the 3D grid samples the
  transform of the map's box finely enough for trilinear insertion;
- trilinear insertion multiplies the real-space map by sinc^2 along each axis, which is divided
  out after the inverse FFT (the gridding correction);
- only frequencies strictly below Nyquist are inserted, and only one half of each central
  section: the other half follows from Hermitian symmetry (half the scatter work);
- ``reg`` is one Wiener constant, a fraction (``wiener``) of the mean summed CTF^2 inside the
  Nyquist sphere. A per-shell SSNR-based Wiener term (from half-map FSC) was measured on
  synthetic data to give the same or lower FSC against the truth (its steep per-shell gain
  blurs shells once the padded map is cropped), so the simpler constant is used.
The map comes back on the data's lattice (D, D, D) (:class:`~cryospire_core.imaging.lattice.Lattice`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from cryospire_core.imaging.ctf import compute_ctf
from cryospire_core.imaging.fourier import ifft3_centered, shift_phase
from cryospire_core.imaging.fsc import fsc
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.particles import ParticleSet
from cryospire_core.progress import (
    ProgressCallback,
    ProgressEvent,
    StopCheck,
    check_stop,
)

#: Fourier samples inserted per batch by default (bounds the per-batch temporaries to ~200 MB).
SAMPLES_PER_BATCH = 1 << 21


@dataclass
class Reconstruction:
    """A reconstructed map and, when asked for, its two half maps and their FSC.

    volume, half1, half2: (D, D, D) float32 on the data lattice; fsc_freqs (cycles/pixel) and
    fsc_curve: the unmasked half-map FSC (:func:`cryospire_core.imaging.fsc.fsc`).
    """

    volume: np.ndarray
    half1: np.ndarray | None = None
    half2: np.ndarray | None = None
    fsc_freqs: np.ndarray | None = None
    fsc_curve: np.ndarray | None = None


@dataclass
class _Section:
    """The half central section inserted per image: padded frequencies q with |q| < P/2 and
    qx > 0, or qx = 0 and qy >= 0 (the other half is their Hermitian mirror).

    pixels: (M,) flat indices into an uncentred ``rfft2`` of size (P, P // 2 + 1);
    q: (M, 2) frequencies (qx, qy) in padded-grid units; freqs: (1, M, 2) in cycles/pixel of
    the data; weight: (M,) 1 except 1/2 at the zero frequency, its own Hermitian partner.
    """

    pixels: torch.Tensor
    q: torch.Tensor
    freqs: torch.Tensor
    weight: torch.Tensor


def _padded_size(box: int, pad: float) -> int:
    """Even padded box P >= box so that +-P/2 bounds the grid symmetrically."""
    return 2 * math.ceil(pad * box / 2)


def _half_section(P: int, device: torch.device) -> _Section:
    qy, qx = torch.meshgrid(torch.fft.fftfreq(P, 1.0 / P, device=device),
                            torch.arange(P // 2 + 1, device=device, dtype=torch.float32), indexing="ij")
    keep = (qx * qx + qy * qy < (P / 2) ** 2) & ((qx > 0) | (qy >= 0))  # below Nyquist, one half
    pixels = torch.nonzero(keep.reshape(-1)).squeeze(1)
    q = torch.stack([qx, qy], -1).reshape(-1, 2)[pixels]
    weight = torch.ones(len(pixels), device=device)
    weight[(q == 0).all(1)] = 0.5
    return _Section(pixels, q, (q / P)[None], weight)


class _Accumulator:
    """Sums of CTF x F (complex) and CTF^2 on ``n_sets`` grids of (P + 1)^3 voxels.

    The odd-sized grid covers padded frequencies -P/2..P/2 on each axis, so trilinear corners of
    any sample below Nyquist fit without wrapping and the Hermitian flip is exact. Storage is
    (3, n_sets x (P + 1)^3): one contiguous row per channel (Re, Im, CTF^2), because 1D
    ``index_add_`` is several times faster on CPU than adding (K, 3) rows.
    """

    def __init__(self, P: int, n_sets: int, device: torch.device) -> None:
        self.P = P
        self.n = P + 1
        self.grid = torch.zeros(3, n_sets * self.n**3, dtype=torch.float32, device=device)

    def insert(self, coords: torch.Tensor, values: torch.Tensor, sets: torch.Tensor) -> None:
        """coords: (K, 3) (x, y, z) padded-grid units, |coords| < P/2; values: (3, K) rows
        Re(CTF F), Im(CTF F), CTF^2; sets: (K,) int64, which grid each sample goes to."""
        n = self.n
        # Rounding of (nearly orthonormal, float32) poses must not push a corner off the grid.
        coords = coords.clamp(-self.P / 2, self.P / 2 - 1e-3)
        base = torch.floor(coords)
        frac = coords - base
        base = base.long() + self.P // 2
        flat0 = (base[:, 2] * n + base[:, 1]) * n + base[:, 0] + sets * n**3
        fx, fy, fz = frac.unbind(1)
        gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
        for dz, wz in ((0, gz), (1, fz)):
            for dy, wy in ((0, gy), (1, fy)):
                wzy = wz * wy
                for dx, wx in ((0, gx), (1, fx)):
                    flat = flat0 + (dz * n * n + dy * n + dx)
                    weighted = values * (wzy * wx)
                    for c in range(3):
                        self.grid[c].index_add_(0, flat, weighted[c])

    def grids(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The Hermitian-completed numerator (P, P, P) complex and weights (P, P, P) of set k.

        Frequency +P/2 is the same DFT sample as -P/2 on a P-periodic grid: fold it over.
        """
        n = self.n
        g = self.grid[:, k * n**3 : (k + 1) * n**3].view(3, n, n, n)
        num = torch.complex(g[0], g[1])
        w = g[2]
        dims = (0, 1, 2)
        num = num + torch.flip(num, dims).conj()
        w = w + torch.flip(w, dims)
        for axis in dims:
            num = _fold(num, axis)
            w = _fold(w, axis)
        return num, w


def _fold(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(..., P + 1, ...) -> (..., P, ...): add the last plane along ``axis`` onto the first."""
    out = x.narrow(axis, 0, x.shape[axis] - 1).clone()
    out.select(axis, 0).add_(x.select(axis, x.shape[axis] - 1))
    return out


def _inside_nyquist(P: int, device: torch.device) -> torch.Tensor:
    """(P, P, P) bool: voxels of a centred P^3 grid strictly inside the Nyquist sphere."""
    f = Lattice.pixels(P).axis_torch(device, torch.float32)
    r2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2
    return r2 < (P / 2) ** 2


def _invert(num: torch.Tensor, w: torch.Tensor, wiener: float, box: int) -> np.ndarray:
    """Map (box, box, box) float32 from padded sums (P^3): divide, inverse FFT, crop, correct.

    The Wiener constant is ``wiener`` times the mean CTF^2 weight inside the Nyquist sphere, so
    it means the same whatever the number of particles.
    """
    P = num.shape[0]
    reg = wiener * float(w[_inside_nyquist(P, w.device)].mean())
    est = num / (w + reg).clamp_min(1e-12)
    vol = ifft3_centered(est)
    s = Lattice.pixels(P).centred_slice(box)
    vol = vol[s, s, s]
    # Trilinear insertion convolved the transform with a triangle one padded-grid voxel wide,
    # which multiplied the map by sinc^2 along each axis.
    x = Lattice.pixels(box).axis_torch(num.device, torch.float32) / P
    c = torch.sinc(x) ** 2
    vol = vol / (c[:, None, None] * c[None, :, None] * c[None, None, :]).to(vol.dtype)
    return vol.cpu().numpy().astype(np.float32)


def backproject(
    ps: ParticleSet,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    halves: bool = False,
    wiener: float = 0.01,
    pad: float = 2.0,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> Reconstruction:
    """Reconstruct a map from particles with known poses and CTFs.

    ps: the particles, streamed ``batch_size`` images at a time (default: about 2 million
    Fourier samples per batch). Memory is bounded by the Fourier grids, 12 bytes x (pad D + 1)^3
    per grid (two grids with ``halves``), plus about twice that while inverting.
    halves: also return the two half maps (even / odd particle indices) and their FSC.
    wiener: the constant added to the summed CTF^2, as a fraction of its mean inside the Nyquist
    sphere (0 is plain inversion; larger values trade bias for less noise where data are scarce).
    pad: real-space zero-padding factor of the images before insertion.
    progress: receives ``ProgressEvent("backproject", done, total)`` after each batch.
    should_stop: asked after each batch (~0.1-0.5 s of work); :class:`~cryospire_core.progress.Cancelled`
    when it answers True.
    """
    if pad < 1 or wiener < 0:
        raise ValueError(f"backproject needs pad >= 1 and wiener >= 0, got pad={pad}, wiener={wiener}")
    device = torch.device(device)
    lattice = ps.lattice
    D = lattice.box
    P = _padded_size(D, pad)
    section = _half_section(P, device)
    acc = _Accumulator(P, 2 if halves else 1, device)
    N = len(ps)
    batch_size = batch_size or max(1, SAMPLES_PER_BATCH // len(section.pixels))
    t0 = time.perf_counter()
    for lo in range(0, N, batch_size):
        idx = np.arange(lo, min(lo + batch_size, N))
        imgs = torch.as_tensor(ps.images(idx), device=device)
        # Zero-padded uncentred transform: pixel 0 sits at the origin. Moving the content by
        # +shift (observed = centred projection moved by -shift) and by -D//2 (box centre to the
        # origin) gives the centred transform of the re-centred particle.
        F = torch.fft.rfft2(imgs, s=(P, P)).reshape(len(idx), -1)[:, section.pixels]  # (B, M)
        shifts_px = torch.as_tensor(ps.shifts[idx] / lattice.apix - lattice.centre, dtype=torch.float32, device=device)
        F = F * shift_phase(section.freqs, shifts_px)[:, 0]
        params = torch.as_tensor(ps.ctf[idx], dtype=torch.float32, device=device)
        ctf = compute_ctf(section.freqs / ps.apix, params)[:, 0]
        CF = ctf * F * section.weight
        values = torch.stack([CF.real, CF.imag, ctf * ctf * section.weight]).reshape(3, -1)
        A = torch.as_tensor(ps.rotations[idx], dtype=torch.float32, device=device)  # (B, 3, 3)
        # A.T @ (qx, qy, 0) = qx * A[0, :] + qy * A[1, :]
        coords = section.q[None, :, 0:1] * A[:, None, 0, :] + section.q[None, :, 1:2] * A[:, None, 1, :]
        sets = torch.as_tensor(idx % 2 if halves else np.zeros(len(idx), dtype=np.int64), device=device)
        acc.insert(coords.reshape(-1, 3), values, sets.repeat_interleave(len(section.pixels)))
        if progress is not None:
            done, elapsed = int(idx[-1]) + 1, time.perf_counter() - t0
            progress(ProgressEvent("backproject", done, N, elapsed=elapsed, eta=elapsed * (N - done) / done,
                                   unit="image"))
        check_stop(should_stop)

    if not halves:
        num, w = acc.grids(0)
        return Reconstruction(_invert(num, w, wiener, D))
    (num1, w1), (num2, w2) = acc.grids(0), acc.grids(1)
    volume = _invert(num1 + num2, w1 + w2, wiener, D)
    h1, h2 = _invert(num1, w1, wiener, D), _invert(num2, w2, wiener, D)
    freqs, curve = fsc(h1, h2)
    return Reconstruction(volume, h1, h2, freqs, curve)
