"""How a run prepares the images its stages fit: the soft window, per-image normalisation and
noise weighting (the run config's ``preprocess`` section, :class:`PreprocessConfig`).

- Normalisation: when a run starts, the backgrounds of a sample of the stack's images are
  measured (:func:`inspect_normalization`, :mod:`~cryospire_core.imaging.noise`) and the verdict
  saved in the config (``stack_normalization``), so a resumed run keeps it. With ``normalize``
  ``auto`` an ``unnormalized`` stack is then normalised per image as it is read
  (:func:`prepared`); ``yes``/``no`` force it on or off.
- Noise weighting: the radial noise power spectrum of each optics group is measured once, at the
  stack's box, from the background of up to :data:`PSD_IMAGES` images of the group
  (:func:`measure_noise_spectrum`), and saved as RUN/noise_psd.npz (:class:`NoiseSpectrum`); a
  resumed run reads it back. A stage at a smaller box uses the same spectra: its Fourier-cropped
  images keep shell i at index i, so no resampling is needed.
- Each stage's data term (:func:`stage_misfit`) is the window and the whitening weights at the
  box the stage reads its images at.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.imaging.misfit import ImageMisfit
from cryospire_core.imaging.noise import (
    NormalizationReport,
    background_power,
    background_stats,
    classify_backgrounds,
    finish_spectrum,
    n_shells,
    whitening_weights,
)
from cryospire_core.imaging.window import (
    DEFAULT_WINDOW_RADIUS,
    background_mask,
    background_taper,
    soft_window,
)
from cryospire_core.io.arrays import read_npz
from cryospire_core.io.atomic import write_npz
from cryospire_core.io.particles import ParticleSet
from cryospire_core.progress import Phase, ProgressCallback, StopCheck, check_stop

NORMALIZE_CHOICES = ("auto", "yes", "no")
#: Images whose backgrounds decide whether a stack is normalised.
INSPECT_IMAGES = 2000
#: Images per optics group whose backgrounds give its noise spectrum.
PSD_IMAGES = 2000
#: Images read at once while measuring (memory stays bounded at any box).
READ_CHUNK = 256


@dataclass
class PreprocessConfig:
    """How the data term sees the images (config.json ``train.preprocess``).

    window: see the images through a soft circular window (flat to ``window_radius`` of the half
    box, a cosine fall to 0 at the half box, 0 in the corners), in the loss, for observed and
    rendered images alike; window_radius: also the particle radius beyond which the background
    (normalisation, noise spectrum) is measured; normalize: ``auto`` (normalise per image when the
    stack looks unnormalised), ``yes`` or ``no``; stack_normalization: what the stack looked like
    when the run first started (``normalized``, ``scaled``, ``unnormalized`` or ``low-noise``;
    None: not inspected, and ``auto`` then leaves the images as they are); noise_weighting: weight the data
    term by the inverse noise power spectrum of each optics group (RUN/noise_psd.npz).
    """

    window: bool = True
    window_radius: float = DEFAULT_WINDOW_RADIUS
    normalize: str = "auto"
    stack_normalization: str | None = None
    noise_weighting: bool = False

    @property
    def normalizes(self) -> bool:
        """Whether the images are normalised per image as they are read."""
        return self.normalize == "yes" or (self.normalize == "auto" and self.stack_normalization == "unnormalized")

    def describe(self) -> str:
        """One phrase for the run's summary line."""
        window = f"window {self.window_radius:g}" if self.window else "no window"
        norm = "normalised per image" if self.normalizes else "not normalised"
        return f"{window}; {norm} (--normalize {self.normalize}); noise weighting {'on' if self.noise_weighting else 'off'}"


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def inspect_normalization(particles: ParticleSet, radius: float, n: int = INSPECT_IMAGES,
                          seed: int = 0, progress: ProgressCallback | None = None,
                          should_stop: StopCheck | None = None) -> NormalizationReport:
    """The backgrounds (beyond ``radius`` half boxes) of up to ``n`` randomly chosen images of
    ``particles``, read at the stack's box as they are on disk, and the verdict on them
    (:func:`~cryospire_core.imaging.noise.classify_backgrounds`). progress: the images read, after
    each chunk of ``READ_CHUNK``; should_stop: asked as often
    (:class:`~cryospire_core.progress.Cancelled`)."""
    stack = dataclasses.replace(particles.at_box(particles.source.box), normalize_radius=None)
    mask = background_mask(stack.box, radius)
    idx = _sample(len(stack), n, seed)
    phase = Phase("checking the image backgrounds", len(idx), progress, should_stop, unit="image")
    phase.step(0)
    means, stds, image_stds = [], [], []
    for i in range(0, len(idx), READ_CHUNK):
        images = stack.images(idx[i : i + READ_CHUNK])
        m, s = background_stats(images, mask)
        means.append(m)
        stds.append(s)
        image_stds.append(images.std(axis=(1, 2), dtype=np.float64))
        phase.step(min(i + READ_CHUNK, len(idx)))
    return classify_backgrounds(np.concatenate(means), np.concatenate(stds), np.concatenate(image_stds))


def prepared(particles: ParticleSet, cfg: PreprocessConfig) -> ParticleSet:
    """``particles`` as the stages read them: normalised per image when ``cfg`` says so."""
    return dataclasses.replace(particles, normalize_radius=cfg.window_radius if cfg.normalizes else None)


@dataclass(frozen=True)
class NoiseSpectrum:
    """Radial noise power spectra of a stack's optics groups (RUN/noise_psd.npz).

    groups: (G,) int64 optics group numbers; psd: (G, S) float64 noise power per pixel in
    radial shell i = 0 .. S-1 (i cycles per box, :func:`~cryospire_core.imaging.noise.n_shells`);
    box: the box (px) it was measured at, the stack's; apix: its pixel size (Å); n_images: (G,)
    images each group's estimate averaged.
    """

    groups: np.ndarray
    psd: np.ndarray
    box: int
    apix: float
    n_images: np.ndarray

    def to_npz(self, path: str | os.PathLike) -> None:
        write_npz(path, groups=self.groups, psd=self.psd, box=np.int64(self.box), apix=np.float64(self.apix),
                  n_images=self.n_images)

    @classmethod
    def from_npz(cls, path: str | os.PathLike, particles: ParticleSet) -> NoiseSpectrum:
        """The spectra saved at ``path``, checked against the run's ``particles`` (InputError
        naming the file: a foreign or damaged file, another stack's box or optics groups)."""
        d = read_npz(path, "noise spectrum", ("groups", "psd", "box", "apix", "n_images"))
        groups, psd = d["groups"], d["psd"]
        box = int(d["box"]) if d["box"].shape == () else -1
        shape = (len(groups), n_shells(box)) if box > 0 else None
        if groups.ndim != 1 or groups.dtype.kind not in "iu" or psd.shape != shape or not np.all(np.isfinite(psd)) \
                or not np.all(psd > 0):
            raise InputError(path, "groups, psd", "optics groups (G,) and positive spectra (G, shells of the box)",
                             f"shapes {groups.shape}, {psd.shape}")
        if box != particles.source.box or not set(np.unique(particles.optics_group)) <= set(groups.tolist()):
            raise InputError(path, "box, groups", f"spectra of the run's {particles.source.box} px stack and its "
                             f"optics groups {sorted(set(particles.optics_group.tolist()))}",
                             f"{box} px, groups {groups.tolist()}")
        return cls(groups.astype(np.int64), psd.astype(np.float64), box, float(d["apix"]), d["n_images"])


def measure_noise_spectrum(particles: ParticleSet, radius: float, n_per_group: int = PSD_IMAGES,
                           seed: int = 0, should_stop: StopCheck | None = None) -> NoiseSpectrum:
    """The noise spectrum of each optics group of ``particles`` (read at the stack's box, as the
    stages read them otherwise: normalised when they are), from the backgrounds beyond
    ``radius`` half boxes of up to ``n_per_group`` randomly chosen images per group.
    should_stop: asked before each chunk of ``READ_CHUNK`` images
    (:class:`~cryospire_core.progress.Cancelled`)."""
    stack = particles.at_box(particles.source.box)
    taper = background_taper(stack.box, radius)
    groups = np.unique(stack.optics_group)
    rng = np.random.default_rng(seed)
    psd, counts = [], []
    for g in groups:
        members = np.flatnonzero(stack.optics_group == g)
        idx = np.sort(rng.choice(members, size=min(n_per_group, len(members)), replace=False))
        total = 0
        for i in range(0, len(idx), READ_CHUNK):
            check_stop(should_stop)
            total = total + background_power(stack.images(idx[i : i + READ_CHUNK]), taper)
        psd.append(finish_spectrum(total / len(idx)))
        counts.append(len(idx))
    return NoiseSpectrum(groups.astype(np.int64), np.stack(psd), stack.box, stack.apix, np.asarray(counts))


def stage_misfit(cfg: PreprocessConfig, box: int, spectrum: NoiseSpectrum | None = None) -> ImageMisfit:
    """The data term of a stage that reads its images at ``box`` px: the window of ``cfg`` and,
    with noise weighting, the whitening weights of ``spectrum`` (required then)."""
    window = soft_window(box, cfg.window_radius) if cfg.window else None
    if not cfg.noise_weighting:
        return ImageMisfit(window)
    if spectrum is None:
        raise ValueError("noise weighting needs the run's noise spectrum")
    return ImageMisfit(window, whitening_weights(spectrum.psd, box), spectrum.groups)

