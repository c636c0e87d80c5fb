"""Simulate particle images with ground truth from a procedural bead phantom (CryoBench-like).

Image formation, per image: a state drawn from the preset's populations (exact counts, shuffled);
a uniform random rotation A; the exact projection of the state's beads along z' (a 3D Gaussian
projects to a 2D Gaussian of the same width and amplitude m sqrt(2 pi) s / apix), evaluated
separably as one GEMM per image on a lattice ``oversample`` x finer than the box; its centred
FFT cropped to the box; a shift (RELION origin, uniform within +-box/12.8 px per axis) and a
300 kV CTF (defocus U 1-3 um, astigmatism up to 400 Å at a random angle, Cs 2.7 mm, w 0.1)
applied in Fourier space; white Gaussian noise at SNR = mean over images of the clean image's
variance over the whole box / noise variance. Shift and CTF multiply Fourier samples one by
one, so applying them after the crop equals applying them at the fine lattice and cropping.

Two options make the images more like real ones (both off by default; the default images are
unchanged). ``noise_spectrum="coloured"``: the noise has the power spectrum
``1 / (1 + (f / COLOURED_F0)^2) + COLOURED_FLOOR`` (f in cycles/pixel; strong low frequencies
over a white floor, about 9x from the zero frequency to Nyquist), scaled so its variance per
pixel is the white noise's: the SNR keeps its definition against the total noise variance.
``clutter=K``: K neighbouring particles per image, each a copy of the molecule in a random state
and orientation, centred ``CLUTTER_DISTANCE`` boxes from the image centre in a random direction
(outside the box: only their near side overlaps the box edges and corners), projected exactly
and filtered by the image's CTF; they are not part of the clean image and count as noise in the
measured SNR (their parameters come from their own random stream, so the rest is unchanged).

Images come out in the CTF model's dark convention; by default they are written white
(multiplied by -1, as RELION extraction with contrast inversion does), and metadata.json says
which. Ground-truth maps are rendered by :func:`cryospire_core.sim.phantoms.rasterise` with the same
band limit, so the images (before CTF and shift) are exactly the z-sums of the rotated GT maps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from cryospire_core import __version__
from cryospire_core.errors import InputError
from cryospire_core.imaging.ctf import compute_ctf, make_ctf_params
from cryospire_core.imaging.fourier import (
    freq_grid_2d,
    ifft2_centered,
    rfft_centered_crop,
    shift_phase,
)
from cryospire_core.imaging.geometry import random_rotations
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.atomic import write_json, write_npy, write_npz
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.io.particles import ImageSource, ParticleSet, Provenance
from cryospire_core.progress import ProgressCallback, ProgressEvent
from cryospire_core.sim.phantoms import (
    Phantom,
    make_phantom,
    state_volume,
    state_volumes,
)

#: Field of view of CryoBench's images (128 px at 3 Å): the default pixel size is this / box.
DEFAULT_FOV_A = 384.0
SHIFT_RANGE_FRACTION = 1.0 / 12.8  # +-10 px at 128 px
DEFOCUS_RANGE_A = (10000.0, 30000.0)
ASTIGMATISM_MAX_A = 400.0
VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.1
PILOT_IMAGES = 1024  # clean images used to set the noise level
NOISE_SPECTRA = ("white", "coloured")
#: Coloured noise: power ∝ 1 / (1 + (f / COLOURED_F0)^2) + COLOURED_FLOOR, f in cycles/pixel.
COLOURED_F0, COLOURED_FLOOR = 0.1, 0.1
#: Distance of a neighbouring particle's centre from the image centre, in boxes (uniform in this range).
CLUTTER_DISTANCE = (0.6, 0.8)
#: Budget for the per-batch 1D Gaussian factor arrays; sets the default batch size.
BATCH_BYTES = 192 << 20


@dataclass
class SimulationResult:
    """Everything needed to produce (and re-produce) a simulated data set, images made on demand.

    phantom: the ground truth; labels: (N,) int state per image; rotations: (N, 3, 3) pose
    matrices A; shifts: (N, 2) Å RELION origins; ctf: (N, 9) ``ctf.CTF_COLUMNS``; snr: requested;
    signal_var: mean clean-image variance measured on the first ``PILOT_IMAGES`` images;
    noise_std: standard deviation of the added noise; contrast: ``white`` (written inverted) or
    ``dark``; noise_seed: seed of the noise stream (consumed in image order, so the images do
    not depend on the batch size); options: the arguments of :func:`simulate`; noise_spectrum:
    ``white`` or ``coloured``; clutter: the neighbouring particles of each image, or None.
    """

    phantom: Phantom
    labels: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    ctf: np.ndarray
    snr: float
    signal_var: float
    noise_std: float
    contrast: str
    oversample: int
    noise_seed: int
    device: torch.device
    options: dict[str, Any] = field(default_factory=dict)
    noise_spectrum: str = "white"
    clutter: Clutter | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def box(self) -> int:
        return self.phantom.box

    @property
    def apix(self) -> float:
        return self.phantom.apix

    @property
    def sign(self) -> float:
        """+1 for dark images, -1 for white: the ParticleSet.contrast that reads them as dark."""
        return -1.0 if self.contrast == "white" else 1.0

    def default_batch_size(self) -> int:
        P = self.box * self.oversample
        return int(max(1, min(1024, BATCH_BYTES // (3 * 4 * P * max(1, self.phantom.n_beads)))))

    def projections(self, idx: np.ndarray) -> np.ndarray:
        """Band-limited projections (B, D, D) float32 of images ``idx``: no shift, no CTF."""
        return ifft2_centered(self._spectra(np.asarray(idx))).cpu().numpy()

    def clean_images(self, idx: np.ndarray) -> np.ndarray:
        """Noise-free images (B, D, D) float32 of ``idx`` in the dark convention (CTF(0) = -w)."""
        return self._clean(np.asarray(idx)).cpu().numpy()

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(start, clean, images)`` over the whole data set in order.

        clean: (B, D, D) float32 noise-free, dark convention; images: (B, D, D) float32 as
        written to disk (noise added, multiplied by -1 when white). Every call gives the same
        images.
        """
        bs = batch_size or self.default_batch_size()
        noise = np.random.default_rng(self.noise_seed)
        D = self.box
        for start in range(0, len(self), bs):
            idx = np.arange(start, min(len(self), start + bs))
            clean = self.clean_images(idx)
            images = self.sign * clean
            if self.clutter is not None:
                images += self.sign * self.clutter_images(idx)
            if self.noise_std > 0:
                white = noise.standard_normal((len(idx), D, D), dtype=np.float32)
                images += self.noise_std * (coloured(white) if self.noise_spectrum == "coloured" else white)
            yield start, clean, images.astype(np.float32, copy=False)

    def clutter_images(self, idx: np.ndarray) -> np.ndarray:
        """The neighbouring particles (B, D, D) float32 of images ``idx`` (dark convention, each
        image's CTF): zeros without clutter."""
        idx = np.asarray(idx)
        out = torch.zeros((len(idx), self.box, self.box), device=self.device)
        if self.clutter is None:
            return out.cpu().numpy()
        ph, cl, dev = self.phantom, self.clutter, self.device
        ctf = compute_ctf(freq_grid_2d(self.box, device=dev) / self.apix,
                          torch.as_tensor(self.ctf[idx], dtype=torch.float32, device=dev))
        for k in range(cl.labels.shape[1]):
            lab, rot = cl.labels[idx, k], cl.rotations[idx, k]
            # A centre c + A^T t lands at A c + t: the neighbour's projection moved by t in the image plane.
            t = np.concatenate([cl.offsets[idx, k], np.zeros((len(idx), 1))], 1)
            centres = ph.centres[lab] + np.einsum("bji,bj->bi", rot, t)[:, None, :]
            fine = project_beads(centres, ph.sigmas, ph.amplitudes[None] * ph.presence[lab], rot, ph.lattice,
                                 self.oversample, dev)
            out += ifft2_centered(rfft_centered_crop(fine, self.box) / self.oversample**2 * ctf)
        return out.cpu().numpy()

    def particle_set(self, stack: str | os.PathLike) -> ParticleSet:
        """The particles as a ParticleSet reading ``stack`` (the written .mrcs)."""
        n = len(self)
        return ParticleSet(
            source=ImageSource([Path(stack)], np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64), self.box),
            apix=self.apix,
            rotations=self.rotations,
            shifts=self.shifts,
            ctf=self.ctf,
            optics_group=np.ones(n, dtype=np.int64),
            provenance=Provenance(format="simulated", path=Path(stack)),
            contrast=self.sign,
        )

    # -- image formation ----------------------------------------------------------------------

    def _spectra(self, idx: np.ndarray) -> torch.Tensor:
        """Centred FFTs (B, D, D) complex64 of the band-limited projections of images ``idx``."""
        ph, dev = self.phantom, self.device
        lab = self.labels[idx]
        fine = project_beads(
            ph.centres[lab], ph.sigmas, ph.amplitudes[None] * ph.presence[lab], self.rotations[idx],
            ph.lattice, self.oversample, dev,
        )
        # Keeping real-space values: the fine image's DFT is oversample^2 times larger.
        return rfft_centered_crop(fine, self.box) / self.oversample**2

    def _clean(self, idx: np.ndarray) -> torch.Tensor:
        dev = self.device
        freqs = freq_grid_2d(self.box, device=dev)
        spectra = self._spectra(idx)
        shifts_px = torch.as_tensor(self.shifts[idx] / self.apix, dtype=torch.float32, device=dev)
        ctf = compute_ctf(freqs / self.apix, torch.as_tensor(self.ctf[idx], dtype=torch.float32, device=dev))
        return ifft2_centered(spectra * shift_phase(freqs, -shifts_px) * ctf)


@dataclass(frozen=True)
class Clutter:
    """K neighbouring particles of each of N images: labels (N, K) int, their states;
    rotations (N, K, 3, 3) pose matrices A; offsets (N, K, 2) Å, where their centres sit in the
    image plane (x, y) from the image centre."""

    labels: np.ndarray
    rotations: np.ndarray
    offsets: np.ndarray


def draw_clutter(phantom: Phantom, n: int, k: int, box: int, apix: float, rng: np.random.Generator) -> Clutter:
    """``k`` neighbours for each of ``n`` images: states drawn from the phantom's populations,
    uniform random orientations, centres :data:`CLUTTER_DISTANCE` boxes away in a random direction."""
    labels = rng.choice(phantom.n_states, size=(n, k), p=phantom.populations)
    rotations = random_rotations(n * k, rng).reshape(n, k, 3, 3)
    angle = rng.uniform(0.0, 2.0 * np.pi, size=(n, k))
    distance = rng.uniform(*CLUTTER_DISTANCE, size=(n, k)) * box * apix
    return Clutter(labels, rotations, np.stack([distance * np.cos(angle), distance * np.sin(angle)], -1))


def coloured_spectrum(box: int) -> np.ndarray:
    """(D, D // 2 + 1) float64 noise power of the half spectrum (``np.fft.rfft2`` layout):
    ``1 / (1 + (f / COLOURED_F0)^2) + COLOURED_FLOOR``, scaled to mean 1 over the full spectrum."""
    f = np.fft.fftfreq(box)
    full = 1.0 / (1.0 + (np.hypot(f[None, :], f[:, None]) / COLOURED_F0) ** 2) + COLOURED_FLOOR
    return full[:, : box // 2 + 1] / full.mean()  # |f| is symmetric: column D/2 (-0.5) is rfft's +0.5


def coloured(white: np.ndarray) -> np.ndarray:
    """White noise (B, D, D) of unit variance filtered to :func:`coloured_spectrum`: float32,
    still unit variance per pixel on average."""
    box = white.shape[-1]
    spectrum = np.fft.rfft2(white.astype(np.float64)) * np.sqrt(coloured_spectrum(box))
    return np.fft.irfft2(spectrum, s=(box, box)).astype(np.float32)


def project_beads(
    centres: np.ndarray,
    sigmas: np.ndarray,
    weights: np.ndarray,
    rotations: np.ndarray,
    lattice: Lattice,
    oversample: int = 2,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Exact projections of Gaussian beads along z', sampled on an ``oversample`` x finer lattice.

    centres: (B, G, 3) Å model frame (x, y, z); sigmas: (G,) Å; weights: (B, G) density at each
    centre (amplitude x presence); rotations: (B, 3, 3) pose matrices A; lattice: the images'.
    Returns (B, P, P) float32 on ``lattice.cropped(P)``, P = oversample * D (the same field of
    view, apix / oversample apart); values are line integrals in units of the final pixel (m sqrt(2 pi) s / apix at a bead's
    centre), so cropping the centred FFT to the box keeps them. One GEMM per image:
    image[y, x] = sum_g Ey[y, g] w_g Ex[g, x].
    """
    dev = torch.device(device)
    # Fourier-padded: the images' field of view sampled oversample x finer.
    coords = lattice.cropped(lattice.box * int(oversample)).axis_torch(dev, torch.float32)
    c = torch.as_tensor(np.asarray(centres), dtype=torch.float32, device=dev)
    A = torch.as_tensor(np.asarray(rotations), dtype=torch.float32, device=dev)
    s = torch.as_tensor(np.asarray(sigmas), dtype=torch.float32, device=dev)
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float32, device=dev)
    xy = torch.einsum("bij,bgj->bgi", A[:, :2], c)  # (B, G, 2): x', y'
    inv = (-0.5 / s**2)[None, :, None]

    def factor(u: torch.Tensor) -> torch.Tensor:  # (B, G) -> (B, G, P); in place: memory-bound
        d = coords - u[..., None]
        # exp below -88 underflows float32 through a slow path (15-40x slower on x86), and
        # products of tiny factors in the GEMM would be denormal (slow too): factors under 1e-19
        # of a bead's peak, nothing a float32 image can show, are set to 0.
        f = d.square_().mul_(inv).clamp_(min=-80.0).exp_()
        return torch.nn.functional.threshold_(f, 1e-19, 0.0)

    ex, ey = factor(xy[..., 0]), factor(xy[..., 1])
    peak = w * (np.sqrt(2.0 * np.pi) / lattice.apix) * s  # (B, G)
    return (ey * peak[..., None]).transpose(1, 2) @ ex


def exact_counts(populations: np.ndarray, n: int) -> np.ndarray:
    """Images per state (S,) summing to n, closest to n * populations (largest remainders)."""
    raw = np.asarray(populations, dtype=np.float64) * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def simulate(
    preset: str,
    box: int,
    n: int,
    snr: float,
    seed: int = 0,
    apix: float | None = None,
    oversample: int = 2,
    contrast: str = "white",
    phantom_seed: int = 0,
    device: str | torch.device = "cpu",
    phantom: Phantom | None = None,
    progress: ProgressCallback | None = None,
    noise_spectrum: str = "white",
    clutter: int = 0,
) -> SimulationResult:
    """Draw a data set of ``n`` images of ``preset`` at ``box`` px (images are made lazily).

    apix: Å/px, default ``DEFAULT_FOV_A / box`` (CryoBench's 384 Å field of view).
    snr: signal-to-noise ratio (``inf`` for noise-free images). seed: poses, CTFs, states and
    noise; phantom_seed: the molecule itself (see :func:`phantoms.make_phantom`); ``phantom``
    replaces the preset's molecule (its box and apix must match; ``preset`` is then only the
    name recorded). contrast: ``white`` or ``dark``.
    The noise level is set from the first ``PILOT_IMAGES`` clean images (reported to
    ``progress`` as stage ``noise level``). noise_spectrum: ``white`` or ``coloured``; clutter:
    neighbouring particles per image (see the module docstring).
    """
    if contrast not in ("white", "dark"):
        raise InputError(None, "--contrast", "white or dark", contrast)
    if box < 8 or box % 2:
        raise InputError(None, "--box", "an even number of pixels >= 8", box)
    if n < 1:
        raise InputError(None, "--n", "at least 1 image", n)
    if not snr > 0:
        raise InputError(None, "--snr", "a positive number (inf for no noise)", snr)
    if noise_spectrum not in NOISE_SPECTRA:
        raise InputError(None, "--noise-spectrum", " or ".join(NOISE_SPECTRA), noise_spectrum)
    if clutter < 0:
        raise InputError(None, "--clutter", "a whole number >= 0", clutter)
    if oversample not in (1, 2, 3, 4):
        raise InputError(None, "--oversample", "1, 2, 3 or 4", oversample)
    apix = float(apix) if apix is not None else DEFAULT_FOV_A / box
    if not (np.isfinite(apix) and apix > 0):
        raise InputError(None, "--apix", "a positive number of Å/pixel", apix)
    if phantom is None:
        phantom = make_phantom(preset, box, apix, seed=phantom_seed)
    elif phantom.box != box or not np.isclose(phantom.apix, apix):
        raise ValueError(f"phantom built for {phantom.box} px at {phantom.apix} Å, asked for {box} px at {apix} Å")

    params_seed, noise_seed, clutter_seed = np.random.SeedSequence(seed).generate_state(3)
    rng = np.random.default_rng(params_seed)
    labels = rng.permutation(np.repeat(np.arange(phantom.n_states), exact_counts(phantom.populations, n)))
    rotations = random_rotations(n, rng)
    max_shift = SHIFT_RANGE_FRACTION * box
    shifts = rng.uniform(-max_shift, max_shift, size=(n, 2)) * apix
    dfu = rng.uniform(*DEFOCUS_RANGE_A, size=n)
    dfv = dfu - rng.uniform(0.0, ASTIGMATISM_MAX_A, size=n)
    ctf = make_ctf_params(n, dfu, dfv, rng.uniform(0.0, 180.0, size=n), VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST)

    result = SimulationResult(
        phantom=phantom, labels=labels, rotations=rotations, shifts=shifts, ctf=ctf, snr=float(snr),
        signal_var=0.0, noise_std=0.0, contrast=contrast, oversample=int(oversample),
        noise_seed=int(noise_seed), device=torch.device(device),
        options={"preset": preset, "box": int(box), "n": int(n), "snr": float(snr), "seed": int(seed),
                 "apix": apix, "oversample": int(oversample), "contrast": contrast,
                 "phantom_seed": int(phantom_seed), "device": str(device), "noise_spectrum": noise_spectrum,
                 "clutter": int(clutter)},
        noise_spectrum=noise_spectrum,
        clutter=draw_clutter(phantom, n, clutter, box, apix, np.random.default_rng(clutter_seed)) if clutter else None,
    )
    pilot = np.arange(min(n, PILOT_IMAGES))
    bs = result.default_batch_size()
    total = 0.0
    for i in range(0, len(pilot), bs):
        total += float(result.clean_images(pilot[i : i + bs]).var(axis=(1, 2), dtype=np.float64).sum())
        if progress is not None:
            progress(ProgressEvent("noise level", min(i + bs, len(pilot)), len(pilot)))
    result.signal_var = total / len(pilot)
    result.noise_std = float(np.sqrt(result.signal_var / snr)) if np.isfinite(snr) else 0.0
    return result


# ---------------------------------------------------------------------------------------------
# Ground-truth products


def evaluation_mask(union: np.ndarray, threshold: float, dilate_px: float, edge_px: float) -> np.ndarray:
    """Soft mask (D, D, D) float32: 1 within ``dilate_px`` of voxels above ``threshold``, then a
    raised-cosine fall to 0 over ``edge_px``."""
    dist = ndimage.distance_transform_edt(union <= threshold)
    ramp = np.clip((dist - dilate_px) / edge_px, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * ramp))).astype(np.float32)


def domain_map(phantom: Phantom, state: int, threshold: float, device: str | torch.device = "cpu") -> np.ndarray:
    """(D, D, D) labels: 1 + index of the domain with the most density at each voxel of ``state``
    where the total density exceeds ``threshold``, 0 (solvent) elsewhere."""
    best = total = None
    labels = np.zeros((phantom.box,) * 3, dtype=np.int16)
    for k in range(len(phantom.domain_names)):
        vol = state_volume(phantom, state, device=device, select=phantom.domains == k)
        if best is None:
            best, total = vol, vol.copy()
        else:
            labels[vol > best] = k
            best, total = np.maximum(best, vol), total + vol
    return np.where(total > threshold, labels + 1, 0).astype(np.int16)


def _density_threshold(phantom: Phantom) -> float:
    """Map level that encloses the beads: 20% of the median bead's peak density."""
    return 0.2 * float(np.median(phantom.amplitudes))


SIMULATION_FILES = ("particles.mrcs", "particles.star", "poses.pkl", "ctf.pkl", "metadata.json")
GROUND_TRUTH_FILES = ("mask.mrc", "domains.mrc", "labels.npy", "beads.npz")
"""The fixed names :func:`write_simulation` writes into OUT and OUT/gt (plus gt/vol_###.mrc)."""


def _state_maps(gt: Path) -> list[Path]:
    """The ``gt/vol_<digits>.mrc`` files there now (an earlier simulation's maps, or the user's)."""
    return [p for p in gt.glob("vol_*.mrc") if p.stem.removeprefix("vol_").isdigit()] if gt.is_dir() else []


def check_output_folder(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse (InputError), before anything is simulated, to replace or delete any file
    :func:`write_simulation` would write into ``out_dir``, unless ``overwrite`` (every existing
    gt/vol_###.mrc counts: it is either replaced or deleted); see :mod:`cryospire_core.io.outputs`."""
    out = Path(out_dir)
    gt = out / "gt"
    paths = [out / n for n in SIMULATION_FILES] + [gt / n for n in GROUND_TRUTH_FILES] + _state_maps(gt)
    check_new_outputs(paths, overwrite, under=out)


def write_simulation(
    out_dir: str | os.PathLike,
    result: SimulationResult,
    progress: ProgressCallback | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the data set and its ground truth into ``out_dir`` (every file atomically).

    Files: particles.mrcs, particles.star (RELION 3.1), poses.pkl, ctf.pkl (cryoDRGN),
    gt/vol_XXX.mrc per state, gt/labels.npy, gt/mask.mrc, gt/domains.mrc, gt/beads.npz and
    metadata.json (written last: its presence marks a complete folder). Returns ``out_dir``.
    """
    from cryospire_core.io import (  # the writers import the readers' stack; load them lazily
        cryodrgn,
        mrc,
        star,
    )

    out = Path(out_dir)
    check_output_folder(out, overwrite)
    gt = out / "gt"
    gt.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ph, dev = result.phantom, result.device

    # Ground truth first: it is cheap, and a folder with GT but no metadata.json is incomplete.
    union = np.zeros((ph.box,) * 3, dtype=np.float32)
    # Sampled as the images are (point samples with --oversample 1, else band-limited from 2x):
    # a 256 px state at 2x is a 512^3 GEMM, ~40 s each, where 1x takes a few.
    for k, vol in enumerate(state_volumes(ph, oversample=min(result.oversample, 2), device=dev)):
        mrc.write_map(gt / f"vol_{k:03d}.mrc", vol, ph.apix)
        np.maximum(union, vol, out=union)
        if progress is not None:
            progress(ProgressEvent("ground truth", k + 1, ph.n_states, elapsed=time.perf_counter() - t0))
    for old in _state_maps(gt):
        if int(old.stem.removeprefix("vol_")) >= ph.n_states:
            old.unlink()  # left by an earlier simulation with more states (replaced only with overwrite)
    threshold = _density_threshold(ph)
    dilate, edge = max(2.0, ph.box / 32), max(3.0, ph.box / 16)
    mrc.write_map(gt / "mask.mrc", evaluation_mask(union, threshold, dilate, edge), ph.apix)
    mrc.write_map(gt / "domains.mrc", domain_map(ph, 0, threshold, dev), ph.apix)
    write_npy(gt / "labels.npy", result.labels.astype(np.int64))
    write_npz(gt / "beads.npz", domains=ph.domains, domain_names=np.asarray(ph.domain_names), sigmas=ph.sigmas,
              amplitudes=ph.amplitudes, centres=ph.centres, presence=ph.presence,
              populations=ph.populations, state_names=np.asarray(ph.state_names))

    stack = out / "particles.mrcs"
    n, signal, noise_sq = len(result), 0.0, 0.0
    if progress is not None:
        progress(ProgressEvent("simulate", 0, n, elapsed=time.perf_counter() - t0))
    with mrc.StackWriter(stack, ph.box, ph.apix) as writer:
        for start, clean, images in result.batches(batch_size):
            writer.append(images)
            signal += float(clean.var(axis=(1, 2), dtype=np.float64).sum())
            noise_sq += float(np.sum((images - result.sign * clean).astype(np.float64) ** 2))
            if progress is not None:
                done = start + len(images)
                elapsed = time.perf_counter() - t0
                progress(ProgressEvent("simulate", done, n, elapsed=elapsed, eta=elapsed * (n - done) / done))
    noise_var = noise_sq / (n * ph.box**2)

    ps = result.particle_set(stack)
    star.write_star(out / "particles.star", ps)
    cryodrgn.write_poses_pkl(out / "poses.pkl", ps)
    cryodrgn.write_ctf_pkl(out / "ctf.pkl", ps)
    write_json(out / "metadata.json", _metadata(result, signal / n, noise_var, time.perf_counter() - t0))
    return out


def _metadata(result: SimulationResult, signal_var: float, noise_var: float, seconds: float) -> dict[str, Any]:
    ph = result.phantom
    counts = np.bincount(result.labels, minlength=ph.n_states)
    return {
        "cryospire_version": __version__,
        "command": "simulate",
        "options": result.options,
        "box": ph.box,
        "apix": ph.apix,
        "n_images": len(result),
        "contrast": result.contrast,
        "contrast_note": "white: written multiplied by -1 (particles bright), read with ParticleSet.contrast = -1",
        "snr": result.snr,
        "noise_std": result.noise_std,
        "signal_var_pilot": result.signal_var,
        "signal_var": signal_var,
        "noise_var": noise_var,
        "snr_measured": signal_var / noise_var if noise_var > 0 else None,
        "n_states": ph.n_states,
        "state_names": list(ph.state_names),
        "populations": ph.populations.tolist(),
        "counts": counts.tolist(),
        "domain_names": list(ph.domain_names),
        "n_beads": ph.n_beads,
        "phantom": ph.info,
        "image_formation": {
            "rotations": "uniform on SO(3)",
            "shift_range_px": SHIFT_RANGE_FRACTION * ph.box,
            "shift_distribution": "uniform per axis; stored as RELION origins (image content at -origin)",
            "defocus_u_range_A": list(DEFOCUS_RANGE_A),
            "astigmatism_max_A": ASTIGMATISM_MAX_A,
            "defocus_angle_range_deg": [0.0, 180.0],
            "voltage_kv": VOLTAGE_KV,
            "cs_mm": CS_MM,
            "amplitude_contrast": AMPLITUDE_CONTRAST,
            "projection": "exact line integrals of the Gaussian beads (amplitude x sqrt(2 pi) sigma / apix), "
                          f"sampled at {result.oversample}x and Fourier-cropped to the box",
            "order": "project, crop, shift and CTF (Fourier space), contrast sign, noise",
            "noise": f"{result.noise_spectrum} Gaussian; snr = mean over images of var(clean image over the whole box) "
                     "/ noise variance (per pixel, all frequencies)",
            "noise_spectrum": ("white" if result.noise_spectrum == "white" else
                               f"power ∝ 1 / (1 + (f / {COLOURED_F0:g})^2) + {COLOURED_FLOOR:g}, f in cycles/pixel, "
                               "mean 1 over the spectrum"),
            "clutter": (f"{result.clutter.labels.shape[1]} neighbouring particles per image (random state and "
                        f"orientation, centred {CLUTTER_DISTANCE[0]:g}-{CLUTTER_DISTANCE[1]:g} boxes from the image "
                        "centre, the image's CTF); counted in noise_var" if result.clutter is not None else "none"),
            "gt_maps": "density sampled at 2x and Fourier-cropped (same band limit as the images); "
                       "voxel values are densities, projection = sum over z in voxel units",
            "mask": "union of all states above 20% of the median bead peak, dilated and cosine-edged",
        },
        "files": {
            "particles": "particles.mrcs", "star": "particles.star", "poses": "poses.pkl", "ctf": "ctf.pkl",
            "volumes": [f"gt/vol_{k:03d}.mrc" for k in range(ph.n_states)], "labels": "gt/labels.npy",
            "mask": "gt/mask.mrc", "domains": "gt/domains.mrc", "beads": "gt/beads.npz",
        },
        "seconds": seconds,
    }
