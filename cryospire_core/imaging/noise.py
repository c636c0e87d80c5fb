"""What the background of particle images says about them: whether they were normalised per
image (RELION's ``--norm``), and the power spectrum of their noise.

Normalisation. Each image's background (the pixels outside the particle,
:func:`~cryospire_core.imaging.window.background_mask`) has a mean m_n and a standard deviation
s_n. With S the median of s_n, a stack is ``low-noise`` when S is small next to the images'
own standard deviation (below :data:`NOISY_BACKGROUND` of its median: simulated without noise or
at a high SNR, where the background is the particle's CTF fringes, not noise, and must not be
normalised), ``normalized`` when the means are near 0 and the deviations near 1 with a small
spread (RELION's ``--norm`` makes exactly that), ``scaled`` when they are consistent across
images but S is not 1 (one scale for the whole stack, e.g. a normalised stack Fourier-cropped or
multiplied by a constant), and ``unnormalized`` when the means stray from 0 or from each other,
or the deviations vary from image to image (raw extraction: every micrograph's own offset and
scale). The statistics are robust (medians, median absolute deviations) and the tolerances are
many times the spread that noise alone gives on a 32 px box (the smallest we train), so the
verdict does not flip with the sample drawn.

Noise spectrum. The background, tapered (:func:`~cryospire_core.imaging.window.background_taper`)
after its mean is removed, is Fourier-transformed; |F|^2 averaged over images and over each
radial shell of integer radius (in cycles per box) and divided by the sum of the squared taper
estimates the noise power per pixel at that frequency (white noise of variance v gives v in
every shell). Shell 0 is set to shell 1's value: the mean was removed, so its own estimate is
biased low. :func:`whitening_weights` turns shells into the per-frequency weights of the data
term on any box that reads the same field of view (a Fourier crop keeps shell i at index i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: The verdicts of :func:`classify_backgrounds`.
NORMALIZATIONS = ("normalized", "scaled", "unnormalized", "low-noise")
#: Smallest ratio of the median background std to the median whole-image std of a stack whose
#: background is noise (SNR up to about 3 with white noise; real data are far noisier).
NOISY_BACKGROUND = 0.5
#: Largest |median background mean| and spread of the means (robust standard deviation), in
#: units of the median background standard deviation, of a normalised or scaled stack.
OFFSET_TOLERANCE = 0.5
#: Largest spread (robust standard deviation) of log(background std) across the images of a
#: normalised or scaled stack: about 25% from image to image.
SCALE_TOLERANCE = 0.25
#: Median background standard deviation of a stack that is normalised (else it is scaled).
NORMALIZED_LEVEL = (0.7, 1.4)
#: Shells whose power is below this fraction of the largest shell's are raised to it, so no
#: frequency gets more than this ratio's inverse times the weight of the noisiest one.
PSD_FLOOR = 1e-3


def background_stats(images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the mean and standard deviation (each (B,) float64) of the pixels of
    ``images`` (B, D, D) where ``mask`` (D, D) bool is set."""
    bg = np.asarray(images, dtype=np.float64)[:, mask]
    return bg.mean(1), bg.std(1)


def normalize_backgrounds(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``images`` (B, D, D) with each image's background (``mask`` (D, D) bool) brought to mean 0
    and standard deviation 1 (float32; an image with a constant background is only shifted)."""
    means, stds = background_stats(images, mask)
    stds = np.where(stds > 0, stds, 1.0)
    return ((images - means[:, None, None]) / stds[:, None, None]).astype(np.float32)


def _robust_std(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


@dataclass(frozen=True)
class NormalizationReport:
    """The backgrounds of a sample of images: verdict, one of :data:`NORMALIZATIONS`; level, the
    median background standard deviation S; noisiness, S / the median whole-image standard
    deviation; offset, |median background mean| / S; offset_spread, robust standard deviation of
    the means / S; scale_spread, robust standard deviation of log(background std); n_images, the
    sample's size."""

    verdict: str
    level: float
    noisiness: float
    offset: float
    offset_spread: float
    scale_spread: float
    n_images: int

    def describe(self) -> str:
        """One phrase for a log line: the verdict and the numbers it rests on."""
        return (f"{self.verdict} (background of {self.n_images} images: std {self.level:.3g} ± "
                f"{100 * self.scale_spread:.0f}% ({self.noisiness:.2f} of the images'), "
                f"mean {self.offset:.2f} ± {self.offset_spread:.2f} std)")


def classify_backgrounds(means: np.ndarray, stds: np.ndarray, image_stds: np.ndarray) -> NormalizationReport:
    """The verdict on a stack from its images' background means and standard deviations and
    their whole-image standard deviations (each (N,)): see the module docstring and the
    tolerances :data:`NOISY_BACKGROUND`, :data:`OFFSET_TOLERANCE`, :data:`SCALE_TOLERANCE` and
    :data:`NORMALIZED_LEVEL`."""
    means, stds = np.asarray(means, dtype=np.float64), np.asarray(stds, dtype=np.float64)
    level = float(np.median(stds))
    unit = level if level > 0 else 1.0
    noisiness = level / max(float(np.median(image_stds)), 1e-30)
    offset, offset_spread = abs(float(np.median(means))) / unit, _robust_std(means) / unit
    scale_spread = _robust_std(np.log(np.maximum(stds, 1e-30 * unit)))
    if noisiness < NOISY_BACKGROUND:
        verdict = "low-noise"
    elif offset > OFFSET_TOLERANCE or offset_spread > OFFSET_TOLERANCE or scale_spread > SCALE_TOLERANCE:
        verdict = "unnormalized"
    elif NORMALIZED_LEVEL[0] <= level <= NORMALIZED_LEVEL[1]:
        verdict = "normalized"
    else:
        verdict = "scaled"
    return NormalizationReport(verdict, level, noisiness, offset, offset_spread, scale_spread, len(means))


def n_shells(box: int) -> int:
    """Radial shells of a box's 2D spectrum: integer radii 0 .. ceil(D / sqrt 2) (the corners)."""
    return math.ceil(box / math.sqrt(2)) + 1


def _radius_index(box: int) -> torch.Tensor:
    """(D, D) int64 shell of each sample of an uncentred 2D DFT: its radius in cycles per box, rounded."""
    k = torch.fft.fftfreq(box, dtype=torch.float64) * box
    return torch.hypot(k[None, :], k[:, None]).round().long()


def background_power(images: np.ndarray, taper: np.ndarray) -> np.ndarray:
    """(S,) float64, S = :func:`n_shells`: the sum over ``images`` (B, D, D) of each image's
    background power per shell (see the module docstring; ``taper`` (D, D) from
    :func:`~cryospire_core.imaging.window.background_taper`). Divide by the number of images for
    the estimate; shell 0 is left as measured."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float64)
    t = torch.as_tensor(taper, dtype=torch.float64)
    means = (x * t).sum((1, 2)) / t.sum()
    power = torch.fft.fft2((x - means[:, None, None]) * t).abs().square().sum(0) / t.square().sum()
    shell = _radius_index(x.shape[-1]).reshape(-1)
    sums = torch.zeros(n_shells(x.shape[-1]), dtype=torch.float64).index_add_(0, shell, power.reshape(-1))
    counts = torch.bincount(shell, minlength=len(sums)).to(torch.float64)
    return (sums / counts.clamp(min=1)).numpy()


def finish_spectrum(power: np.ndarray) -> np.ndarray:
    """A noise spectrum (..., S) from averaged :func:`background_power` shells: shell 0 set to
    shell 1 (its own estimate is biased low), every shell raised to at least :data:`PSD_FLOOR`
    of the largest."""
    psd = np.array(power, dtype=np.float64)
    psd[..., 0] = psd[..., 1]
    return np.maximum(psd, PSD_FLOOR * psd.max(-1, keepdims=True))


def rfft_multiplicity(box: int) -> torch.Tensor:
    """(D // 2 + 1,) float32: how many samples of the full (D, D) spectrum each column of the
    half spectrum (``torch.fft.rfft2``) stands for (1 for column 0 and, D even, column D / 2; 2
    for the others), so sums over the half spectrum equal sums over the whole."""
    m = torch.full((box // 2 + 1,), 2.0)
    m[0] = 1.0
    if box % 2 == 0:
        m[-1] = 1.0
    return m


def whitening_weights(psd: np.ndarray, box: int) -> np.ndarray:
    """Per-frequency weights 1 / PSD(|k|) of the half spectrum of a ``box`` px image,
    (G, D, D // 2 + 1) float32 for spectra ``psd`` (G, S) of G optics groups (shell i at i cycles
    per box, linearly interpolated between shells). Each group's weights are scaled so their mean
    over the full (D, D) spectrum is 1: for white noise they are all 1. The spectra must have
    been measured on the same field of view: a Fourier crop to ``box`` keeps shell i at index i
    (only their shape matters, so a cropped image's lower noise level changes nothing)."""
    psd = np.atleast_2d(np.asarray(psd, dtype=np.float64))
    ky = np.fft.fftfreq(box) * box
    kx = np.fft.rfftfreq(box) * box
    r = np.hypot(kx[None, :], ky[:, None])
    if r.max() > psd.shape[1] - 1:
        raise ValueError(f"noise spectra of {psd.shape[1]} shells do not reach the corners of a {box} px box")
    shells = np.arange(psd.shape[1])
    w = np.stack([1.0 / np.interp(r, shells, p) for p in psd])
    mult = rfft_multiplicity(box).numpy().astype(np.float64)
    mean = (w * mult).sum((1, 2)) / box**2
    return (w / mean[:, None, None]).astype(np.float32)
