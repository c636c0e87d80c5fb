"""Fourier shell correlation between two maps, its area under the curve and the resolution it reads.

FSC (CryoBench / cryoDRGN definition): both maps are multiplied by the mask, transformed with a
centred 3D FFT, and correlated over shells of radius [i - 1, i) Fourier pixels for
i = 1 .. D/2 - 1, reported at frequency i / D cycles/pixel, after FSC = 1 at frequency 0: D/2
points in all. AUC is the trapezoid rule over that curve; its maximum is (D/2 - 1) / D.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def _half_shells(D: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shells of the real-input half transform (``rfftn``) of a D^3 map, cached per D.

    Returns (index, shell, weight) over the voxels with shell < D/2: flat indices into the
    (D, D, D//2 + 1) half transform, the shell number floor(radius) + 1 (radius in Fourier pixels:
    a voxel at radius r belongs to shell i when i - 1 <= r < i) and the weight that turns a sum over
    the half transform into the sum over the full one: 1 on the planes that are their own mirror
    image (k_z = 0, and k_z = D/2 for even D), 2 elsewhere, since F(-k) = conj(F(k)).
    """
    k = np.fft.fftfreq(D, 1.0 / D)
    kz = np.fft.rfftfreq(D, 1.0 / D)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2)
    shell = (np.floor(r).astype(np.int64) + 1).ravel()
    weight = np.full((D, D, len(kz)), 2.0)
    weight[..., 0] = 1.0
    if D % 2 == 0:
        weight[..., -1] = 1.0
    index = np.flatnonzero(shell < D // 2)
    return index, shell[index], weight.ravel()[index]


def fsc(vol1: np.ndarray, vol2: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two (D, D, D) maps on the same lattice.

    Returns (freqs, curve), each (D/2,): freqs i / D cycles/pixel (0 first); curve[0] = 1 and
    curve[i] the correlation over shell [i - 1, i). A shell where either map has no power
    scores 0.

    The sums run over the half transform of the real maps, without centring shifts: a shift
    multiplies both transforms by the same phase, which cancels in every product summed here.
    """
    v1 = np.asarray(vol1, dtype=np.float64)
    v2 = np.asarray(vol2, dtype=np.float64)
    if v1.shape != v2.shape or v1.ndim != 3 or len(set(v1.shape)) != 1:
        raise ValueError(f"fsc needs two cubic maps of the same shape, got {v1.shape} and {v2.shape}")
    if mask is not None:
        v1 = v1 * mask
        v2 = v2 * mask
    D = v1.shape[0]
    index, shell, weight = _half_shells(D)
    F1 = np.fft.rfftn(v1).ravel()[index]
    F2 = np.fft.rfftn(v2).ravel()[index]
    n_shells = D // 2
    cross = np.bincount(shell, weight * (F1.real * F2.real + F1.imag * F2.imag), minlength=n_shells)
    p1 = np.bincount(shell, weight * (F1.real ** 2 + F1.imag ** 2), minlength=n_shells)
    p2 = np.bincount(shell, weight * (F2.real ** 2 + F2.imag ** 2), minlength=n_shells)
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
