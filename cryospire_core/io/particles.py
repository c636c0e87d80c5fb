"""One in-memory description of N particles, whatever file format they came from.

Images stay on disk: :class:`ImageSource` reads them in batches from memory-mapped stacks.
Poses follow the RELION conventions: ``rotations`` are the matrices A of
:mod:`cryospire_core.imaging.geometry`, ``shifts`` are RELION origins in Å (the shift that re-centres
the particle: the observed particle sits at ``-shift`` from the box centre).

Every reader ends with :meth:`ParticleSet.validate`, the one place where values are checked
against physics (``ctf.impossible_ctf``) and against the float32 precision the images are
computed in; errors name the file and the field as that format spells them
(``Provenance.fields``), the first bad particle (1-based) and how many are bad.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.imaging.ctf import CTF_COLUMNS, N_CTF, impossible_ctf, unusual_ctf
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.noise import normalize_backgrounds
from cryospire_core.imaging.window import background_mask

#: Pixel sizes in Å a reader accepts: detectors and binning give 0.2-20 Å, so values beyond these
#: bounds are unit errors (and tiny ones overflow the CTF's |s|^4 term in float32).
APIX_RANGE = (0.01, 1e4)
#: How far a pose matrix may be from a rotation (|A A^T - I| and |det A - 1|): float32 round trip.
ROTATION_TOLERANCE = 1e-3
#: Largest Euler angle (or rotation-vector angle) in degrees: float64 still resolves 1e-6 degrees
#: of such an angle, and no program writes angles beyond a few turns.
MAX_ANGLE_DEG = 1e6


def finite32(values: np.ndarray) -> np.ndarray:
    """Element-wise: finite once cast to float32 (1e39 is finite in float64, inf in float32)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.isfinite(np.asarray(values, dtype=np.float64).astype(np.float32))


def require(
    path: str | os.PathLike | None,
    field: str,
    ok: np.ndarray,
    expected: str,
    values: np.ndarray,
    unit: str = "",
    groups: np.ndarray | None = None,
) -> None:
    """InputError unless every particle is ``ok``.

    ok: (N,) bool, one per particle (row of the file); values: (N,) what is shown of the first bad
    particle, followed by ``unit``; groups: (N,) optics groups, shown too when given.
    The message names the first bad particle (1-based, as RELION counts rows) and how many are bad.
    """
    ok = np.asarray(ok, dtype=bool)
    if ok.all():
        return
    i = int(np.argmin(ok))
    value = values[i]
    shown = f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)
    group = f", optics group {int(groups[i])}" if groups is not None else ""
    count = f"{int((~ok).sum())} of {len(ok)} particles"
    raise InputError(path, field, expected, f"{shown}{unit} at particle {i + 1}{group} ({count})")


def check_pixel_size(path: str | os.PathLike | None, field: str, values: np.ndarray) -> None:
    """InputError unless every pixel size (N,) in Å lies in ``APIX_RANGE``."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = APIX_RANGE
    ok = finite32(values) & (values >= lo) & (values <= hi)
    if len(values) == 1 and not ok[0]:  # one value for the whole set: no particle to point to
        raise InputError(path, field, f"a pixel size in Å between {lo:g} and {hi:g}", f"{values[0]:g}")
    require(path, field, ok, f"a pixel size in Å between {lo:g} and {hi:g}", values)


def common_pixel_size(path: str | os.PathLike | None, field: str, values: np.ndarray) -> float:
    """The one pixel size (Å) of per-particle ``values`` (N,); InputError when one is impossible
    or they differ by more than 0.01 %."""
    values = np.asarray(values, dtype=np.float64)
    check_pixel_size(path, field, values)
    if not np.allclose(values, values[0], rtol=1e-4):
        raise InputError(path, field, "one pixel size for all particles", f"{values.min():g} to {values.max():g} Å")
    return float(values[0])


def check_angles(path: str | os.PathLike | None, field: str, degrees: np.ndarray) -> None:
    """InputError unless every angle (N,) in degrees is finite and within ``MAX_ANGLE_DEG``."""
    degrees = np.asarray(degrees, dtype=np.float64)
    ok = finite32(degrees) & (np.abs(degrees) <= MAX_ANGLE_DEG)
    require(path, field, ok, f"an angle in degrees, |angle| <= {MAX_ANGLE_DEG:g}", degrees, unit="°")


@dataclass
class ImageSource:
    """Particle i is frame ``frames[i]`` (0-based) of stack ``files[file_index[i]]``.

    files: stack paths (.mrcs / .mrc); file_index: (N,) int; frames: (N,) int; box: pixels.
    """

    files: list[Path]
    file_index: np.ndarray
    frames: np.ndarray
    box: int
    _handles: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)

    #: Stacks kept open at once; the least recently used is closed beyond this, so data sets
    #: spread over thousands of stacks stay within the usual 1024 open-file limit.
    MAX_OPEN = 64

    def __len__(self) -> int:
        return len(self.frames)

    def __getstate__(self) -> dict:
        # Memory maps do not survive pickling (e.g. into data-loader workers); reopen lazily.
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def subset(self, idx: np.ndarray) -> ImageSource:
        return ImageSource(self.files, self.file_index[idx], self.frames[idx], self.box)

    def _stack(self, k: int) -> np.ndarray:
        """The memory-mapped data (n, D, D) of stack k."""
        if k in self._handles:
            self._handles.move_to_end(k)
        else:
            while len(self._handles) >= self.MAX_OPEN:
                self._handles.popitem(last=False)[1][0].close()
            path = self.files[k]
            if not path.exists():
                raise InputError(path, "image stack", "an existing .mrcs/.mrc file", "no such file")
            try:
                handle = mrcfile.mmap(path, mode="r", permissive=True)
            except Exception as exc:  # mrcfile raises ValueError / OSError variants
                raise InputError(path, "MRC header", "a readable MRC/MRCS stack", exc) from exc
            from cryospire_core.io.mrc import (  # mrc builds on this module
                axis_order,
                to_zyx,
            )

            data = handle.data
            if data is None:
                raise InputError(path, "MRC data", "a data block matching the header", "none (truncated file?)")
            data = to_zyx(data, axis_order(handle.header))  # the header's axis order, as for maps
            if data.ndim == 2:
                data = data[None]
            if data.ndim != 3 or data.shape[1] != data.shape[2]:
                raise InputError(path, "image shape", "square images (n, D, D)", data.shape)
            if data.shape[1] != self.box:
                raise InputError(path, "box size", f"{self.box} px like the rest of the particles", data.shape[1])
            self._handles[k] = (handle, data)
        return self._handles[k][1]

    def read(self, idx: np.ndarray | slice | list) -> np.ndarray:
        """Images (B, D, D) float32 for the particles ``idx`` (in that order)."""
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        fi = self.file_index[idx]
        for k in np.unique(fi):
            rows = np.nonzero(fi == k)[0]
            frames = self.frames[idx[rows]]
            data = self._stack(int(k))
            if frames.max() >= data.shape[0]:
                raise InputError(self.files[k], "image index", f"at most {data.shape[0]}", int(frames.max()) + 1)
            order = np.argsort(frames, kind="stable")  # sequential reads of the memory map
            out[rows[order]] = data[frames[order]]
            _unmap_pages(data)
            bad = ~np.isfinite(out[rows])
            if bad.any():
                # A few corrupt pixels must not poison a training run: they become 0 (the
                # background mean of normalised particles) and the user is told where they are.
                frames_bad = sorted({int(f) + 1 for f in frames[bad.any(axis=(1, 2))]})
                warnings.warn(f"{self.files[k]}: {int(bad.sum())} NaN/Inf pixels in image(s) {frames_bad[:10]} "
                              f"(1-based) set to 0", RuntimeWarning, stacklevel=2)
                block = out[rows]
                block[bad] = 0.0
                out[rows] = block
        return out

    def close(self) -> None:
        for handle, _ in self._handles.values():
            handle.close()
        self._handles.clear()


def _unmap_pages(data: np.ndarray) -> None:
    """Drop the pages of a read-only memory-mapped stack from this process (they stay in the
    kernel's page cache, so reading them again is cheap).

    Every page a memory map has touched counts in the process's resident memory until the
    kernel needs it back; without this, one epoch over a stack larger than RAM would show the
    whole stack as resident. The images were copied out, so nothing refers to these pages.
    """
    base = data
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    mapping = getattr(base, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


@dataclass
class Provenance:
    """Where the particles came from, kept so subsets can be written back in the same format.

    format: ``relion3.1``, ``relion3.0``, ``cryosparc``, ``cryodrgn`` or ``simulated``.
    rows: the original metadata rows in particle order (a pandas DataFrame for STAR files, a
    numpy structured array for cryoSPARC), or None.
    extra: other tables (e.g. ``{"optics": DataFrame}`` for RELION 3.1, passthrough arrays).
    fields: where each quantity :meth:`ParticleSet.validate` checks was read, as
    ``quantity -> (file, that format's name for it)``; quantities are ``apix``, ``rotations``,
    ``shift_x``, ``shift_y`` and the ``ctf.CTF_COLUMNS``. One not listed is named as ours in ``path``.
    """

    format: str
    path: Path
    rows: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, tuple[Path | None, str]] = field(default_factory=dict)

    def source_of(self, quantity: str) -> tuple[Path | None, str]:
        """(file, field name) a quantity of ``fields`` was read from."""
        return self.fields.get(quantity, (self.path, quantity))

    def subset(self, idx: np.ndarray) -> Provenance:
        rows = self.rows
        if rows is not None:
            rows = rows.iloc[idx].reset_index(drop=True) if hasattr(rows, "iloc") else rows[idx]
        return replace(self, rows=rows)


@dataclass
class ParticleSet:
    """N particles with their poses and CTFs.

    source: the images; apix: Å/pixel of the stack; rotations: (N, 3, 3) float64 pose matrices A;
    shifts: (N, 2) float64 RELION origins (x, y) in Å; ctf: (N, 9) float64 (``ctf.CTF_COLUMNS``);
    optics_group: (N,) int, 1-based; contrast: +1 or -1, multiplied into every image read so
    that particles are dark, as the CTF model images them (-1 for white, contrast-inverted stacks);
    crop_box: when set, every image is Fourier-cropped from the stack's box to this many pixels
    as it is read (:meth:`at_box`), and ``apix`` is the cropped images' pixel size;
    normalize_radius: when set, every image is normalised as it is read, before any crop: its
    background (the pixels beyond this fraction of the half box) brought to mean 0 and standard
    deviation 1 (:func:`~cryospire_core.imaging.noise.normalize_backgrounds`, RELION's ``--norm``).
    """

    source: ImageSource
    apix: float
    rotations: np.ndarray
    shifts: np.ndarray
    ctf: np.ndarray
    optics_group: np.ndarray
    provenance: Provenance
    contrast: float = 1.0
    crop_box: int | None = None
    normalize_radius: float | None = None

    def __post_init__(self) -> None:
        n = len(self.source)
        path = self.provenance.path
        for name, arr, shape in (
            ("rotations", self.rotations, (n, 3, 3)),
            ("shifts", self.shifts, (n, 2)),
            ("ctf", self.ctf, (n, N_CTF)),
            ("optics_group", self.optics_group, (n,)),
        ):
            if arr.shape != shape:
                raise InputError(path, name, f"shape {shape} (one per particle)", arr.shape)

    def validate(self) -> ParticleSet:
        """Refuse values no microscope gives or that float32 cannot hold; warn about unusual ones.

        Checked (each value after the cast to float32, the precision images are computed in):
        the pixel size (``APIX_RANGE``), rotations (orthonormal with det +1 within
        ``ROTATION_TOLERANCE``), shifts (smaller than the box on each axis) and the CTF
        (``ctf.impossible_ctf``); defoci outside ``ctf.unusual_ctf``'s range give a UserWarning.
        Raises InputError naming the file and field of ``provenance.fields``. Returns self, so a
        reader can end with ``return ParticleSet(...).validate()``.
        """
        prov, n = self.provenance, len(self)
        check_pixel_size(*prov.source_of("apix"), np.array([self.apix]))
        groups = self.optics_group

        rot = self.rotations
        with np.errstate(all="ignore"):  # NaN/Inf matrices give NaN here, refused below
            err = np.abs(rot @ np.swapaxes(rot, 1, 2) - np.eye(3)).max(axis=(1, 2))
            det = np.linalg.det(rot)
            off = np.maximum(err, np.abs(det - 1))  # distance from the nearest rotation, roughly
        ok = finite32(rot).all(axis=(1, 2)) & (off < ROTATION_TOLERANCE)
        expected = f"rotation matrices (orthonormal, det +1, within {ROTATION_TOLERANCE:g})"
        require(*prov.source_of("rotations"), ok, expected, off, unit=" off a rotation", groups=groups)

        limit = self.box * self.apix
        for k, axis in enumerate(("shift_x", "shift_y")):
            s = self.shifts[:, k]
            expected = f"a shift smaller than the box, |shift| < {limit:g} Å ({self.box} px)"
            require(*prov.source_of(axis), finite32(s) & (np.abs(s) < limit), expected, s, unit=" Å", groups=groups)

        for column, ok, expected in impossible_ctf(self.ctf, self.apix):
            values = self.ctf[:, column]
            require(*prov.source_of(CTF_COLUMNS[column]), finite32(values) & ok, expected, values, groups=groups)
        for column, ok, usual in unusual_ctf(self.ctf):
            if not ok.all():
                path, name = prov.source_of(CTF_COLUMNS[column])
                i = int(np.argmin(ok))
                warnings.warn(f"{path}: {name}: {int((~ok).sum())} of {n} particles outside {usual}, e.g. "
                              f"{self.ctf[i, column]:g} at particle {i + 1}", UserWarning, stacklevel=2)
        return self

    def __len__(self) -> int:
        return len(self.source)

    @property
    def box(self) -> int:
        """Pixels per side of the images as :meth:`images` returns them."""
        return self.crop_box or self.source.box

    def at_box(self, box: int) -> ParticleSet:
        """These particles read at ``box`` pixels: each image Fourier-cropped from the stack as
        it is read (no new stack on disk; :func:`~cryospire_core.imaging.fourier.downsample`),
        over the same field of view, so ``apix`` grows by stack box / ``box`` while poses,
        shifts (Å) and CTF parameters stay as they are; the CTF is then evaluated at the new
        pixel size by whoever renders on :attr:`lattice`. Values are scaled by ``box`` / stack
        box, as the projection of the same density over the larger pixels: images follow the
        renderer's and the simulator's convention (line integrals in voxel units) at every box,
        so one mixture of Gaussians (densities, in Å) models the stack at any box. ``box``
        equal to the stack's gives the stack as it is. ValueError unless ``box`` is even and at
        most the stack's box."""
        stack_box = self.source.box
        if box == stack_box:
            crop = None
        elif box % 2 or not 2 <= box < stack_box or stack_box % 2:
            raise ValueError(f"particles of {stack_box} px can be read at an even box of at most {stack_box} px, "
                             f"not {box}")
        else:
            crop = box
        stack_apix = self.apix * self.box / stack_box
        return replace(self, apix=stack_apix * stack_box / box, crop_box=crop)

    def at_most(self, box: int | None) -> ParticleSet:
        """:meth:`at_box` at ``box``, or at the stack's box when ``box`` is None or larger (a
        stage configured for 256 px trains a 200 px stack at 200 px)."""
        return self.at_box(self.source.box if box is None or box >= self.source.box else box)

    @property
    def lattice(self) -> Lattice:
        """The images' lattice (``box`` pixels of ``apix`` Å), which models render on."""
        return Lattice(self.box, self.apix)

    def images(self, idx) -> np.ndarray:
        """Images (B, D, D) float32 in the dark-particle convention."""
        imgs = self.source.read(idx)
        if self.normalize_radius is not None:
            imgs = normalize_backgrounds(imgs, background_mask(self.source.box, self.normalize_radius))
        if self.crop_box is not None:
            import torch  # only cropped reads need it; the readers and the GUI's stack view do not

            from cryospire_core.imaging.fourier import downsample

            # A projection is a sum over voxels along the beam (render.project): over voxels
            # D / crop_box times longer, the same molecule sums to that much more per pixel.
            scale = self.crop_box / self.source.box
            imgs = (downsample(torch.from_numpy(imgs), self.crop_box) * scale).numpy()
        if self.contrast != 1.0:
            imgs *= self.contrast
        return imgs

    def subset(self, idx) -> ParticleSet:
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64).reshape(-1)
        return ParticleSet(
            source=self.source.subset(idx),
            apix=self.apix,
            rotations=self.rotations[idx],
            shifts=self.shifts[idx],
            ctf=self.ctf[idx],
            optics_group=self.optics_group[idx],
            provenance=self.provenance.subset(idx),
            contrast=self.contrast,
            crop_box=self.crop_box,
            normalize_radius=self.normalize_radius,
        )


def detect_contrast(source: ImageSource, n: int = 1000, seed: int = 0) -> float:
    """+1 if the particles in ``source`` are dark (as the CTF model images them), -1 if white.

    Low frequencies dominate a particle's appearance and the CTF is negative there, so a
    dark particle makes the central disc (radius D/4) darker than the surrounding annulus.
    Averaged over up to ``n`` images, the sign is reliable even at SNR 0.01.
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(source), size=min(n, len(source)), replace=False))
    D = source.box
    f = Lattice.pixels(D).axis()  # pixels from the image centre
    r = np.hypot(f[None, :], f[:, None])
    inner, outer = r < D / 4, (r >= D / 4) & (r < D / 2)
    total, varied = 0.0, 0
    for start in range(0, len(idx), 256):
        imgs = source.read(idx[start : start + 256]).astype(np.float64)
        total += float((imgs[:, inner].mean(1) - imgs[:, outer].mean(1)).sum())
        varied += int(np.count_nonzero(np.ptp(imgs.reshape(len(imgs), -1), axis=1) > 0))
    if varied == 0:
        raise_blank(source, len(idx))
    return 1.0 if total <= 0 else -1.0


def raise_blank(source: ImageSource, n_read: int) -> None:
    """InputError naming the first stack: every image read holds one value (e.g. all zero), so
    whatever is computed from them (a map, latents) would be empty or meaningless."""
    stack = source.files[int(source.file_index[0])]
    raise InputError(stack, "images", "particle images (pixel values that vary)",
                     f"{n_read} of {n_read} images read blank (every pixel the same value, e.g. all zero)")


def check_not_blank(source: ImageSource, n: int = 64) -> None:
    """InputError (see :func:`raise_blank`) when up to ``n`` images spread over ``source`` are
    all blank; used when :func:`detect_contrast`, which checks the same, is not run."""
    idx = np.unique(np.linspace(0, len(source) - 1, num=min(n, len(source))).astype(np.int64))
    imgs = source.read(idx)
    if not np.any(np.ptp(imgs.reshape(len(imgs), -1), axis=1) > 0):
        raise_blank(source, len(idx))
