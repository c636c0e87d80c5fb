"""Centred discrete Fourier transforms and Fourier-space lattices (torch, any device).

Real-space arrays have their origin at index ``D // 2`` on every axis (RELION's convention, the
centre of :class:`~cryospire_core.imaging.lattice.Lattice`); the centred transforms put the zero
frequency at index ``D // 2`` too, so a slice through the
origin of a 3D transform lines up with a 2D transform without phase ramps.
"""

from __future__ import annotations

import torch

from cryospire_core.imaging.lattice import Lattice


def fft2_centered(x: torch.Tensor) -> torch.Tensor:
    """(..., D, D) real or complex -> (..., D, D) complex, zero frequency at D // 2."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def ifft2_centered(X: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2_centered`; returns the real part, (..., D, D)."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(X, dim=dims), dim=dims), dim=dims).real


def fft3_centered(x: torch.Tensor) -> torch.Tensor:
    """(..., D, D, D) -> (..., D, D, D) complex, zero frequency at D // 2 on each axis."""
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def ifft3_centered(X: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft3_centered`; returns the real part."""
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(X, dim=dims), dim=dims), dim=dims).real


def freqs_1d(box: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Frequencies (box,) in cycles/pixel of a centred transform: (i - box // 2) / box."""
    return Lattice.pixels(box).axis_torch(device, dtype) / box


def freq_grid_2d(box: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(box, box, 2) frequencies (kx, ky) in cycles/pixel; kx varies along the last axis."""
    f = freqs_1d(box, device, dtype)
    ky, kx = torch.meshgrid(f, f, indexing="ij")
    return torch.stack([kx, ky], -1)


def radius_grid_2d(box: int, device=None) -> torch.Tensor:
    """(box, box) distance in pixels of each Fourier sample from the zero frequency."""
    return freq_grid_2d(box, device).norm(dim=-1) * box


def shift_phase(freqs: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Phase factors that move image content by ``shifts_px``.

    freqs: (H, W, 2) cycles/pixel; shifts_px: (B, 2) pixels (x, y). Returns (B, H, W) complex:
    multiplying a centred transform by it translates the image by +shift.
    """
    arg = -2.0 * torch.pi * (freqs[None, ..., 0] * shifts_px[:, None, None, 0] + freqs[None, ..., 1] * shifts_px[:, None, None, 1])
    return torch.polar(torch.ones_like(arg), arg)


def fourier_crop_2d(X: torch.Tensor, box: int) -> torch.Tensor:
    """Crop a centred 2D transform (..., D, D) to (..., box, box) around the zero frequency.

    With :func:`fft2_centered`/:func:`ifft2_centered` this downsamples an image by D / box;
    the caller rescales amplitudes by (box / D)^2 to keep real-space values.
    """
    s = Lattice.pixels(X.shape[-1]).centred_slice(box)
    return X[..., s, s]


def fourier_crop_3d(X: torch.Tensor, box: int) -> torch.Tensor:
    """Crop a centred 3D transform (..., D, D, D) to (..., box, box, box)."""
    s = Lattice.pixels(X.shape[-1]).centred_slice(box)
    return X[..., s, s, s]


def rfft_centered_crop(x: torch.Tensor, box: int, ndim: int = 2) -> torch.Tensor:
    """``fourier_crop_2d(fft2_centered(x), box)`` (``ndim=2``) or the 3D equivalent for real input,
    computed through ``rfftn``.

    x: (..., P, ..., P) real, ``ndim`` trailing axes of even size P; box: even, <= P.
    Returns (..., box, ..., box) complex. Several times faster than shifting the full complex
    spectrum: with the origin at P // 2, the centred transform at integer frequency f is (-1)^f
    times the plain DFT at f mod P, and negative x-frequencies are conjugates of positive ones.
    """
    P = x.shape[-1]
    half = box // 2
    dims = tuple(range(-ndim, 0))
    R = torch.fft.rfftn(x, dim=dims)  # last axis holds fx in [0, P/2]
    f = torch.arange(-half, half, device=x.device)
    pos, neg = R[..., :half], R[..., 1 : half + 1]
    for d in dims[:-1]:  # the full-length axes: frequencies f mod P (and -f mod P for the mirror)
        pos = pos.index_select(x.dim() + d, f % P)
        neg = neg.index_select(x.dim() + d, (-f) % P)
    out = torch.cat([neg.conj().flip(-1), pos], dim=-1)
    parity = torch.zeros((box,) * ndim, dtype=torch.int64, device=x.device)
    for k in range(ndim):
        parity = parity + f.reshape((box,) + (1,) * (ndim - 1 - k))
    return out * (1.0 - 2.0 * (parity % 2).to(x.dtype))


def resample(x: torch.Tensor, box: int, ndim: int = 2) -> torch.Tensor:
    """Real images (``ndim=2``) or maps (``ndim=3``) of D samples per axis on ``box`` samples over
    the same field of view: :func:`downsample` for ``box`` < D, zero-padding the centred
    transform for ``box`` > D (band-limited interpolation: nothing is added above the input's
    Nyquist frequency). Values keep their real-space scale; D and ``box`` even."""
    D = x.shape[-1]
    if box <= D:
        return downsample(x, box, ndim)
    if box % 2 or D % 2:
        raise ValueError(f"resample needs even sizes, got D={D}, box={box}")
    fft, ifft = (fft2_centered, ifft2_centered) if ndim == 2 else (fft3_centered, ifft3_centered)
    X = fft(x)
    s = Lattice.pixels(box).centred_slice(D)
    out = torch.zeros(X.shape[:-ndim] + (box,) * ndim, dtype=X.dtype, device=X.device)
    out[(...,) + (s,) * ndim] = X
    return ifft(out) * (box / D) ** ndim


def downsample(x: torch.Tensor, box: int, ndim: int = 2) -> torch.Tensor:
    """Real images (..., D, D) (``ndim=2``) or maps (``ndim=3``) resampled to ``box`` samples per
    axis over the same field of view by cropping their centred transform: the band-limited
    resampling RELION and cryoDRGN downsample with. Values keep their real-space scale (a flat
    image stays at its level), so the samples land on :meth:`Lattice.cropped`.

    x: (..., D, ..., D) real float, D even; box: even, 2 <= box <= D (``box == D`` returns ``x``).
    """
    D = x.shape[-1]
    if box == D:
        return x
    if not (2 <= box < D and box % 2 == 0 and D % 2 == 0):
        raise ValueError(f"downsample needs even sizes with box <= D, got D={D}, box={box}")
    ifft = ifft2_centered if ndim == 2 else ifft3_centered
    return ifft(rfft_centered_crop(x, box, ndim)) * (box / D) ** ndim
