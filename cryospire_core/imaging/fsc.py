"""Fourier shell correlation between two maps, its area under the curve and the resolution it reads.

FSC (CryoBench / cryoDRGN definition): both maps are multiplied by the mask, transformed with a
centred 3D FFT, and correlated over shells of radius [i - 1, i) Fourier pixels for
i = 1 .. D/2 - 1, reported at frequency i / D cycles/pixel, after FSC = 1 at frequency 0: D/2
points in all. AUC is the trapezoid rule over that curve; its maximum is (D/2 - 1) / D.
"""

from __future__ import annotations

import numpy as np

from cryospire_core.imaging.lattice import Lattice


def _shells(D: int) -> np.ndarray:
    """(D, D, D) int: shell number floor(radius) + 1 of each voxel of a centred D^3 transform.

    A voxel at radius r (Fourier pixels) belongs to shell i when i - 1 <= r < i.
    """
    f = Lattice.pixels(D).axis()
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    return np.floor(r).astype(np.int64) + 1


def fsc(vol1: np.ndarray, vol2: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two (D, D, D) maps on the same lattice.

    Returns (freqs, curve), each (D/2,): freqs i / D cycles/pixel (0 first); curve[0] = 1 and
    curve[i] the correlation over shell [i - 1, i). A shell where either map has no power
    scores 0.
    """
    v1 = np.asarray(vol1, dtype=np.float64)
    v2 = np.asarray(vol2, dtype=np.float64)
    if v1.shape != v2.shape or v1.ndim != 3 or len(set(v1.shape)) != 1:
        raise ValueError(f"fsc needs two cubic maps of the same shape, got {v1.shape} and {v2.shape}")
    if mask is not None:
        v1 = v1 * mask
        v2 = v2 * mask
    D = v1.shape[0]
    F1 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v1)))
    F2 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v2)))
    n_shells = D // 2
    shells = _shells(D).ravel()
    keep = shells < n_shells
    shells = shells[keep]
    cross = np.bincount(shells, (F1 * F2.conj()).real.ravel()[keep], minlength=n_shells)
    p1 = np.bincount(shells, (np.abs(F1) ** 2).ravel()[keep], minlength=n_shells)
    p2 = np.bincount(shells, (np.abs(F2) ** 2).ravel()[keep], minlength=n_shells)
    denom = np.sqrt(p1 * p2)
    curve = np.divide(cross, denom, out=np.zeros(n_shells), where=denom > 0)
    curve[0] = 1.0
    freqs = np.arange(n_shells) / D
    return freqs, curve


def auc(freqs: np.ndarray, curve: np.ndarray) -> float:
    """Area under an FSC curve by the trapezoid rule (frequency in cycles/pixel)."""
    return float(np.trapezoid(curve, freqs))


def max_auc(box: int) -> float:
    """The AUC of a perfect FSC curve of (D, D, D) maps: (D/2 - 1) / D (0.484 at 64 px)."""
    return (box // 2 - 1) / box


def resolution(freqs: np.ndarray, curve: np.ndarray, threshold: float = 0.5) -> float:
    """First frequency (cycles/pixel) where the FSC drops below ``threshold``.

    If it never does, the last (highest) frequency of the curve.
    """
    below = np.nonzero(np.asarray(curve) < threshold)[0]
    return float(freqs[below[0]] if len(below) else freqs[-1])


def freq_to_angstrom(freq: float, apix: float) -> float:
    """Resolution in Å of a frequency in cycles/pixel."""
    return float(apix) / freq


def freq_to_pixels(freq: float) -> float:
    """Resolution in pixels (the period) of a frequency in cycles/pixel."""
    return 1.0 / freq
