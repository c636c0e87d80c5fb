"""MRC maps and MRCS image stacks: read, write, stream, and locate the stacks metadata names.

Arrays are (z, y, x) for maps and (n, y, x) for stacks; the voxel size is cell / grid per axis.
Headers are read on their own (``read_header``) so a stack's shape is known without touching
its data; every file is written atomically (see :mod:`cryospire_core.io.atomic`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE
from mrcfile.utils import data_shape_from_header, dtype_from_mode

from cryospire_core.errors import InputError, require_finite
from cryospire_core.imaging.lattice import MRC_ORIGIN, Lattice
from cryospire_core.io.atomic import atomic_path
from cryospire_core.io.particles import ImageSource, check_pixel_size

NONFINITE_CAUSE = "the computation diverged, or its inputs hold NaN/Inf values"

# Real-valued MRC modes: int8, int16, float32, uint16, float16 (3 and 4 are complex).
REAL_MODES = (0, 1, 2, 6, 12)


@dataclass
class MapData:
    """A 3D map. data: (z, y, x) float32; apix: Å/voxel; origin: (3,) Å, (x, y, z) as in the
    MRC header (the position of voxel index 0)."""

    data: np.ndarray
    apix: float
    origin: np.ndarray

    @property
    def lattice(self) -> Lattice:
        """The lattice the map samples (ValueError for a grid that is not D x D x D)."""
        if len(set(self.data.shape)) != 1:
            raise ValueError(f"a map on a lattice is D x D x D, got shape {self.data.shape}")
        return Lattice(self.data.shape[0], self.apix)


@dataclass
class MrcHeader:
    """What the header of an MRC/MRCS file says, read without touching the data block.

    shape: the data's shape in (z, y, x) order whatever the file's axis order ((z, y, x) for a
    map, (n, y, x) for a stack, (y, x) for one image in standard order); apix: Å/pixel along x (0
    when the header leaves the cell unset or gives a non-finite one); voxel_size: (x, y, z) Å;
    mode: MRC mode number; origin: (x, y, z) Å; axis_order: (mapc, mapr, maps), the axis (1 = x,
    2 = y, 3 = z) along which the file's columns, rows and sections run.
    """

    path: Path
    shape: tuple[int, ...]
    apix: float
    voxel_size: tuple[float, float, float]
    mode: int
    origin: np.ndarray
    axis_order: tuple[int, int, int]


def axis_order(header: np.recarray) -> tuple[int, int, int]:
    """(mapc, mapr, maps) of an mrcfile header; (1, 2, 3) when they are no permutation of it
    (some writers leave them 0)."""
    axes = (int(header.mapc), int(header.mapr), int(header.maps))
    return axes if sorted(axes) == [1, 2, 3] else (1, 2, 3)


def _zyx_dims(axes: tuple[int, int, int]) -> list[int]:
    """For z, y and x, the file dimension (0 sections, 1 rows, 2 columns) that runs along it."""
    file_axes = axes[::-1]
    return [file_axes.index(a) for a in (3, 2, 1)]


def to_zyx(data: np.ndarray, axes: tuple[int, int, int]) -> np.ndarray:
    """The data of an MRC file (sections, rows, columns), or one image (rows, columns), as a
    (z, y, x) view: no copy, so a memory-mapped stack stays on disk. Maps and stacks both go
    through here: a stack's images lie along z."""
    if axes == (1, 2, 3):
        return data
    if data.ndim == 2:
        data = data[None]
    return data.transpose(_zyx_dims(axes))


def read_header(path: str | os.PathLike) -> MrcHeader:
    """Read the header of an MRC/MRCS file (1 kB; the data block is never read).

    Also checks that the mode is a real-valued one and that the file is long enough to hold the
    data the header announces (InputError otherwise).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "MRC file", "an existing .mrc/.mrcs file", "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # permissive mode warns about odd but usable headers
            with mrcfile.open(path, header_only=True, permissive=True) as m:
                h = m.header.copy()
    except Exception as exc:  # mrcfile raises ValueError/OSError for non-MRC content
        raise InputError(path, "MRC header", "a readable MRC header (1024 bytes)", exc) from exc
    mode = int(h.mode)
    if mode not in REAL_MODES:
        raise InputError(path, "MRC mode", f"one of {REAL_MODES} (real-valued data)", mode)
    shape = tuple(int(s) for s in data_shape_from_header(h))
    if min(shape) <= 0:
        raise InputError(path, "MRC dimensions", "positive nx, ny, nz", shape)
    expected = HEADER_DTYPE.itemsize + int(h.nsymbt) + int(np.prod(shape)) * dtype_from_mode(mode).itemsize
    size = path.stat().st_size
    if size < expected:
        raise InputError(path, "MRC data", f"{expected} bytes for a {shape} mode-{mode} array", f"{size} bytes (truncated file?)")
    section = int(np.prod(shape[-2:])) * dtype_from_mode(mode).itemsize
    if size - expected >= section:  # a whole image more: the header's mode or image count is wrong
        raise InputError(path, "MRC data", f"{expected} bytes for a {shape} mode-{mode} array",
                         f"{size} bytes ({size - expected} more: a wrong mode or nz in the header?)")
    axes = axis_order(h)
    counts = [int(h.nx), int(h.ny), int(h.nz)]  # columns, rows, sections
    if axes != (1, 2, 3):
        shape = tuple((1,) * (3 - len(shape)) + shape)
        shape = tuple(shape[d] for d in _zyx_dims(axes))
        counts = [counts[axes.index(a)] for a in (1, 2, 3)]  # along x, y, z
    cell = np.array([h.cella.x, h.cella.y, h.cella.z], dtype=np.float64)
    grid = np.array([h.mx, h.my, h.mz], dtype=np.float64)
    grid = np.where(grid > 0, grid, counts)  # some writers leave mx, my, mz at 0
    with np.errstate(over="ignore", invalid="ignore"):
        voxel = cell / np.maximum(grid, 1)
    voxel = tuple(float(v) if np.isfinite(v) else 0.0 for v in voxel)  # non-finite: as unset
    origin = np.array([h.origin.x, h.origin.y, h.origin.z], dtype=np.float64)
    if not np.any(origin):  # older files give the start as an index offset instead
        origin = np.array([h.nxstart, h.nystart, h.nzstart], dtype=np.float64) * np.array(voxel)
    return MrcHeader(path, shape, voxel[0], voxel, mode, origin, axes)


def read_map(path: str | os.PathLike, apix: float | None = None, require_cubic: bool = True) -> MapData:
    """Read a 3D map as float32 (z, y, x).

    apix: Å/voxel overriding the header (needed when the header's cell is unset).
    require_cubic: refuse grids that are not D x D x D (every map of a reconstruction is).
    Raises InputError for a missing/truncated file, a complex mode, a non-3D or non-cubic grid,
    an anisotropic or unset voxel size, and NaN/Inf values.
    """
    header = read_header(path)
    path = header.path
    if len(header.shape) != 3:
        raise InputError(path, "map dimensions", "a 3D volume (nz > 1)", header.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.mmap(path, mode="r", permissive=True) as m:
            data = np.ascontiguousarray(to_zyx(m.data, header.axis_order), dtype=np.float32)
    if require_cubic and len(set(data.shape)) != 1:
        raise InputError(path, "map dimensions", "a cubic grid D x D x D", data.shape)
    if apix is None:
        vs = np.array(header.voxel_size)
        if not np.all(vs > 0):
            raise InputError(path, "voxel size", "a positive cell size in the header (or pass apix)", tuple(vs))
        if not np.allclose(vs, vs[0], rtol=1e-3):
            raise InputError(path, "voxel size", "the same size on x, y and z", tuple(vs))
        apix = float(vs[0])
    check_pixel_size(path, "voxel size", np.array([apix], dtype=np.float64))
    if not np.all(np.isfinite(data)):
        raise InputError(path, "map values", "finite numbers", f"{int(np.count_nonzero(~np.isfinite(data)))} NaN/Inf voxels")
    return MapData(data, float(apix), header.origin)


def write_map(
    path: str | os.PathLike,
    data: np.ndarray,
    apix: float,
    origin: Sequence[float] | np.ndarray | None = None,
) -> None:
    """Atomically write a 3D map (z, y, x) as float32 with voxel size ``apix`` Å.

    origin: (x, y, z) Å stored in the header's origin field (the position of voxel index 0).
    None, for every map cryospire makes, writes :data:`~cryospire_core.imaging.lattice.MRC_ORIGIN`
    (0, as RELION and cryoSPARC); a value only stores back the origin a user's map was read with.
    A map with NaN or infinite voxels is refused (ResultError naming ``path``), never written.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"write_map needs a 3D (z, y, x) array, got shape {data.shape}")
    require_finite(data, path, "map values", NONFINITE_CAUSE)
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = float(apix)
        m.header.origin = tuple(float(o) for o in (MRC_ORIGIN if origin is None else origin))


class StackWriter:
    """Stream images (B, D, D) into an .mrcs stack without holding the stack in memory.

    Use as a context manager; the file appears under its name only when the block exits
    without error::

        with StackWriter("particles.mrcs", box=64, apix=2.0) as w:
            for batch in batches:
                w.append(batch)

    The header (image count and min/max/mean/rms) is completed on close.
    """

    def __init__(self, path: str | os.PathLike, box: int, apix: float) -> None:
        self.path = Path(path)
        self.box = int(box)
        self.apix = float(apix)
        self.count = 0
        self._stack: contextlib.ExitStack | None = None
        self._file = None
        self._tmp: Path | None = None
        self._stats = np.array([np.inf, -np.inf, 0.0, 0.0])  # min, max, sum, sum of squares

    def __enter__(self) -> StackWriter:
        stack = contextlib.ExitStack()
        self._tmp = stack.enter_context(atomic_path(self.path))
        with mrcfile.new(self._tmp, overwrite=True) as m:  # a valid header for 0 images
            m.set_data(np.zeros((0, self.box, self.box), dtype=np.float32))
            m.set_image_stack()
            m.voxel_size = self.apix
        self._file = stack.enter_context(open(self._tmp, "r+b"))
        self._file.seek(0, os.SEEK_END)
        self._stack = stack
        return self

    def append(self, images: np.ndarray) -> None:
        """Append images (B, D, D) (or one (D, D) image), written as little-endian float32;
        NaN or infinite pixels are refused (ResultError) and the stack is not written."""
        if self._file is None:
            raise RuntimeError("StackWriter.append outside its with-block")
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.shape[1:] != (self.box, self.box):
            raise ValueError(f"images must be (B, {self.box}, {self.box}), got {images.shape}")
        images = np.ascontiguousarray(images, dtype="<f4")
        if images.size == 0:
            return
        require_finite(images, self.path, "image values", NONFINITE_CAUSE)
        images.tofile(self._file)
        flat = images.reshape(-1).astype(np.float64)
        self._stats[0] = min(self._stats[0], flat.min())
        self._stats[1] = max(self._stats[1], flat.max())
        self._stats[2] += flat.sum()
        self._stats[3] += np.dot(flat, flat)
        self.count += len(images)

    def _finish_header(self) -> None:
        f = self._file
        f.flush()
        f.seek(0)
        header = np.frombuffer(bytearray(f.read(HEADER_DTYPE.itemsize)), dtype=HEADER_DTYPE).view(np.recarray)
        header.nz = self.count
        n = self.count * self.box * self.box
        if n:
            mean = self._stats[2] / n
            header.dmin, header.dmax, header.dmean = self._stats[0], self._stats[1], mean
            header.rms = np.sqrt(max(self._stats[3] / n - mean * mean, 0.0))
        f.seek(0)
        f.write(header.tobytes())
        f.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        failure = None
        if exc_type is None:
            try:
                self._finish_header()
            except BaseException as err:  # still remove the temporary file, then re-raise
                failure = err
        self._file = None
        if failure is not None:
            stack.__exit__(type(failure), failure, failure.__traceback__)
            raise failure
        # Closes the file, then renames the temp file over the target (or removes it on error).
        return stack.__exit__(exc_type, exc, tb)


def write_stack(path: str | os.PathLike, images: np.ndarray, apix: float) -> None:
    """Atomically write images (N, D, D) as an .mrcs stack with pixel size ``apix`` Å."""
    images = np.asarray(images)
    with StackWriter(path, images.shape[-1], apix) as w:
        w.append(images)


def find_file(
    name: str,
    meta_path: str | os.PathLike,
    field: str,
    dirs: Sequence[Path | None],
    bare_dirs: Sequence[Path | None],
) -> Path:
    """Locate a file that a metadata file refers to.

    Tries ``name`` as given if absolute, else ``dir / name`` for each of ``dirs``; then the bare
    file name in each of ``bare_dirs`` (None entries are skipped). Raises InputError naming the
    metadata file, its field and the missing file, with the places searched.
    """
    p = Path(name)
    tried = [p] if p.is_absolute() else [d / p for d in dirs if d is not None]
    tried += [d / p.name for d in bare_dirs if d is not None]
    for cand in tried:
        try:
            if cand.is_file():
                return cand
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not there
            continue
    where = ", ".join(_shorten(str(t)) for t in dict.fromkeys(tried))
    raise InputError(meta_path, field, f"an existing stack '{_shorten(name)}' (tried {where})", "no such file")


def _shorten(text: str, keep: int = 120) -> str:
    """``text`` cut in the middle to about ``keep`` characters, so a garbage name keeps an error
    message to one readable line."""
    return text if len(text) <= keep else f"{text[:keep // 2]}...{text[-keep // 2:]}"


def relative_paths(files: Sequence[Path], base: str | os.PathLike) -> list[str]:
    """Paths of ``files`` relative to the folder ``base`` (absolute where none exists, e.g. on
    another Windows drive), for metadata files written in ``base``."""
    base = os.path.abspath(base)
    out = []
    for f in files:
        try:
            out.append(os.path.relpath(os.path.abspath(f), base))
        except ValueError:
            out.append(os.path.abspath(f))
    return out


def open_stacks(
    files: Sequence[Path],
    file_index: np.ndarray,
    frames: np.ndarray,
    meta_path: str | os.PathLike,
    field: str,
) -> tuple[ImageSource, list[MrcHeader]]:
    """An ImageSource over ``files``, checked from the stack headers alone.

    file_index: (N,) index into ``files``; frames: (N,) 0-based image numbers. Checks every stack
    holds square images of one box size and at least as many images as referenced; errors name
    the stack (or the metadata file ``meta_path`` and its ``field`` for out-of-range references).
    Returns the source and each stack's header (same order as ``files``).
    """
    file_index = np.asarray(file_index, dtype=np.int64)
    frames = np.asarray(frames, dtype=np.int64)
    if len(frames) == 0:
        raise InputError(meta_path, field, "at least one particle", "none")
    headers = [read_header(f) for f in files]
    box = None
    for h in headers:
        ny, nx = h.shape[-2:]
        if len(h.shape) > 3 or ny != nx:
            raise InputError(h.path, "image shape", "square images (n, D, D)", h.shape)
        if box is None:
            box = nx
        elif nx != box:
            raise InputError(h.path, "box size", f"{box} px like {headers[0].path.name}", nx)
    if frames.min() < 0:
        raise InputError(meta_path, field, "image numbers >= 1", int(frames.min()) + 1)
    top = np.full(len(files), -1, dtype=np.int64)
    np.maximum.at(top, file_index, frames)
    for h, t in zip(headers, top):
        n = h.shape[0] if len(h.shape) == 3 else 1
        if t >= n:
            raise InputError(meta_path, field, f"image numbers 1..{n} for {h.path} (the stack holds {n} images)", int(t) + 1)
    return ImageSource(list(files), file_index, frames, int(box)), headers
