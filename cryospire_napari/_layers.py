"""Layer construction shared by the readers, the sample data and the dock widgets.

Every function returns napari layer-data tuples ``(data, kwargs, layer_type)`` so readers can
hand them to napari unchanged and widgets can add them with ``viewer._add_layer_from_data`` or
update an existing layer's ``data``.

World coordinates are Å about the box centre, in napari's (z, y, x) order: voxel i of a map of
box D sits at (i - D // 2) * apix Å, the convention of :mod:`cryospire_core.imaging.lattice`
(RELION's). Maps therefore get the ``scale`` and ``translate`` of their
:class:`~cryospire_core.imaging.lattice.Lattice`, and model coordinates (Gaussian centres, Å, (x, y, z)) become points at ``centres[:, ::-1]`` with no
transform. Call :func:`set_chimerax_view` on a viewer so a map looks as it does in ChimeraX.

A run folder is shown by one function per artefact (:func:`consensus_layers`, ...), each
returning no layers when its files are not there yet; :func:`run_layers` strings them together.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.mrc import read_map
from cryospire_core.pipeline.runfolder import RunFolder

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Images per dask chunk of a lazy particle stack: one screen update reads one chunk.
STACK_CHUNK = 16

#: The camera orientation, in napari's (depth = axis 0 = z, vertical = y, horizontal = x) terms,
#: that shows (z, y, x) maps as ChimeraX does: x to the right, y up, z toward the viewer.
CHIMERAX_ORIENTATION = ("towards", "up", "right")


#: Axis names napari shows beside the sliders: a map's, and a particle stack's.
MAP_AXES = ("z", "y", "x")
STACK_AXES = ("image", "y", "x")


# -- geometry ---------------------------------------------------------------------------------


def set_chimerax_view(viewer: Any, ndisplay: int | None = 3) -> None:
    """Orient ``viewer``'s camera like ChimeraX's default view and reset it.

    ChimeraX looks down -z with x to the right and y up (a right-handed frame). napari's
    default, ('towards', 'down', 'right'), draws y downward, which mirrors every map; this sets
    ``viewer.camera.orientation = ('towards', 'up', 'right')`` (2D slices then also show y up),
    the camera angles to (0, 0, 0) (looking straight down -z) and, unless ``ndisplay`` is None,
    the number of displayed dimensions. Readers cannot do this (napari does not give them the
    viewer): widgets call it after opening a map or a run.
    """
    if ndisplay is not None:
        viewer.dims.ndisplay = ndisplay
    camera = viewer_camera(viewer)
    camera.orientation = CHIMERAX_ORIENTATION
    viewer.reset_view()
    camera.angles = (0.0, 0.0, 0.0)


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


# -- maps -------------------------------------------------------------------------------------


def display_levels(data: np.ndarray) -> tuple[tuple[float, float], float]:
    """Contrast limits and an iso-surface level for a map (any shape, float).

    Limits run from 0 (or the minimum when the map has no negative values or no positive ones)
    to the maximum, so solvent noise below zero stays black in MIP. The iso level is the
    consensus stage's molecule/solvent threshold (Otsu on the positive voxels), or the middle of
    the limits when the map has too little positive density for it.
    """
    from cryospire_core.models.consensus import (
        density_threshold,  # imports torch: only when a map is shown
    )

    lo, hi = float(data.min()), float(data.max())
    if lo < 0 < hi:
        lo = 0.0
    if hi <= lo:
        hi = lo + 1.0
    try:
        level = density_threshold(data)
    except ValueError:
        level = 0.5 * (lo + hi)
    return (lo, hi), float(level)


def map_layer(
    data: np.ndarray,
    apix: float,
    name: str,
    metadata: dict[str, Any] | None = None,
    rendering: str = "iso",
    colormap: str = "gray",
    visible: bool = True,
) -> LayerDataTuple:
    """An Image layer for a map ``data`` (z, y, x) of voxel size ``apix`` Å.

    The data become float32 (napari copies other dtypes on every update); scale is ``apix`` and
    translate centres the box (see the module docstring). rendering: ``iso``, ``mip`` or
    ``attenuated_mip``. The voxel size is also kept in ``metadata["apix"]`` (Å) for widgets;
    the writer takes it from ``scale``.
    """
    data = np.asarray(data, dtype=np.float32)
    limits, level = display_levels(data)
    meta = {"apix": float(apix), **(metadata or {})}
    kwargs = {
        "name": name,
        "scale": (float(apix),) * data.ndim,
        # Each axis on its own lattice: a map read from a user's file need not be cubic.
        "translate": tuple(Lattice(n, apix).napari_translate(1)[0] for n in data.shape),
        "contrast_limits": limits,
        "iso_threshold": level,
        "rendering": rendering,
        "colormap": colormap,
        "blending": "translucent" if rendering == "iso" else "additive",
        "visible": visible,
        "axis_labels": MAP_AXES[-data.ndim:],
        "metadata": meta,
    }
    return data, kwargs, "image"


def read_map_layer(path: str | os.PathLike, name: str | None = None, **kw: Any) -> LayerDataTuple:
    """A map file (.mrc/.map) as an Image layer (see :func:`map_layer`); the header's origin
    (x, y, z) Å is kept in ``metadata["mrc_origin"]`` so the writer can store it back."""
    path = Path(path)
    m = read_map(path, require_cubic=False)
    meta = {"source": str(path), "mrc_origin": [float(o) for o in m.origin]}
    return map_layer(m.data, m.apix, name or path.stem, metadata=meta, **kw)


def is_image_stack(path: str | os.PathLike) -> bool:
    """True when an .mrc file's header declares an image stack (space group 0) whose image count
    differs from its width, as cryoSPARC's ``*_particles.mrc`` do. A cube with space group 0 stays
    a map: old software wrote volumes that way. Unreadable headers give False (reading the file
    as a map then reports the problem)."""
    import warnings

    import mrcfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as m:
                h = m.header
                return int(h.ispg) == 0 and int(h.nz) > 1 and int(h.nz) != int(h.nx)
    except (OSError, ValueError):
        return False


def read_mrc_layer(path: str | os.PathLike) -> LayerDataTuple:
    """An .mrc/.map file: a map layer, or a lazy stack layer when the header says it is a stack."""
    return read_stack_layer(path) if is_image_stack(path) else read_map_layer(path)


# -- particle stacks ----------------------------------------------------------------------------


class LazyStack:
    """A read-only array-like (N, D, D) float32 over ``read(idx) -> (B, D, D)``.

    napari slices it one image at a time through dask; nothing is read before that. A lock
    serialises reads because dask may call from several threads and the readers keep open
    memory maps in a shared cache.
    """

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], n: int, box: int) -> None:
        self._read = read
        self.shape = (int(n), int(box), int(box))
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = np.arange(self.shape[0])[key[0]]
        with self._lock:
            images = self._read(np.atleast_1d(rows))
        images = images[(slice(None), *key[1:])]
        return images[0] if np.ndim(rows) == 0 else images


def stack_layer(
    read: Callable[[np.ndarray], np.ndarray],
    n: int,
    box: int,
    apix: float,
    name: str,
    metadata: dict[str, Any] | None = None,
) -> LayerDataTuple:
    """An Image layer (N, D, D) of particle images read lazily through ``read(idx)``.

    scale is (1, apix, apix) and translate centres each image; contrast limits come from the
    first few images (1st and 99th percentiles) so napari never scans the stack.
    """
    import dask.array as da

    stack = LazyStack(read, n, box)
    data = da.from_array(stack, chunks=(STACK_CHUNK, box, box), asarray=False, fancy=False, name=f"cryospire-{name}-{id(stack)}")
    sample = np.asarray(stack[: min(n, 64)], dtype=np.float64)
    lo, hi = (float(v) for v in np.percentile(sample, [1, 99]))
    if hi <= lo:
        hi = lo + 1.0
    meta = {"apix": float(apix), "kind": "particle stack", **(metadata or {})}
    kwargs = {
        "name": name,
        "scale": (1.0, *Lattice(box, apix).napari_scale(2)),
        "translate": (0.0, *Lattice(box, apix).napari_translate(2)),
        "contrast_limits": (lo, hi),
        "colormap": "gray",
        # Named axes: napari's defaults (-3, -2, -1) showed "-3" beside the image slider, which
        # read as if the stack started at image -3.
        "axis_labels": STACK_AXES,
        "metadata": meta,
    }
    return data, kwargs, "image"


def read_stack_layer(path: str | os.PathLike) -> LayerDataTuple:
    """An .mrcs stack as a lazy Image layer; the header alone is read here."""
    from cryospire_core.io.mrc import open_stacks, read_header

    path = Path(path)
    header = read_header(path)
    n = header.shape[0] if len(header.shape) == 3 else 1
    source, _ = open_stacks([path], np.zeros(n, dtype=np.int64), np.arange(n), path, "image stack")
    apix = header.apix if header.apix > 0 else 1.0
    meta = {"source": str(path), "n": n, "box": source.box,
            "apix_note": "from the header" if header.apix > 0 else "unset in the header: 1 Å/px assumed"}
    return stack_layer(source.read, n, source.box, apix, path.stem, meta)


def read_particles_layer(path: str | os.PathLike) -> LayerDataTuple:
    """Particles of a .star / .cs file as a lazy Image layer, in the stored contrast.

    metadata: ``n``, ``box``, ``apix``, ``optics_groups`` (group -> count), ``format``, ``stacks``.
    """
    from cryospire_core.io.load import load_particles

    path = Path(path)
    ps = load_particles(path, invert=False)
    groups, counts = np.unique(ps.optics_group, return_counts=True)
    meta = {
        "source": str(path),
        "format": ps.provenance.format,
        "n": len(ps),
        "box": ps.box,
        "optics_groups": {int(g): int(c) for g, c in zip(groups, counts)},
        "stacks": len(ps.source.files),
    }
    return stack_layer(ps.images, len(ps), ps.box, ps.apix, path.stem, meta)


# -- run folders --------------------------------------------------------------------------------


def gaussians_layer(path: str | os.PathLike, name: str = "gaussians") -> LayerDataTuple:
    """A ``gaussians.npz`` (centres (G, 3) Å (x, y, z), widths (G,) Å, amplitudes (G,)) as a
    Points layer in world Å (z, y, x), diameter 2 x width, coloured by amplitude."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            centres, widths, amps = (np.asarray(z[k], dtype=np.float32) for k in ("centres", "widths", "amplitudes"))
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, "Gaussians", "an .npz with centres, widths and amplitudes", exc) from exc
    g = len(centres)
    if centres.shape != (g, 3) or widths.shape != (g,) or amps.shape != (g,):
        raise InputError(path, "Gaussians", "centres (G, 3), widths (G,), amplitudes (G,)",
                         f"{centres.shape}, {widths.shape}, {amps.shape}")
    kwargs = {
        "name": name,
        "size": 2.0 * widths,
        "features": {"amplitude": amps, "width": widths},
        "face_color": "amplitude",
        "face_colormap": "viridis",
        "border_width": 0,
        "opacity": 0.8,
        "metadata": {"source": str(path), "n_gaussians": g},
    }
    return centres[:, ::-1].copy(), kwargs, "points"


def consensus_layers(run: RunFolder) -> list[LayerDataTuple]:
    """The consensus stage: its map, its Gaussians and (hidden) the backprojection it started from."""
    layers = []
    if run.map_path("consensus").is_file():
        layers.append(read_map_layer(run.map_path("consensus"), name="consensus map"))
    if run.backprojection_path.is_file():
        layers.append(read_map_layer(run.backprojection_path, name="backprojection", rendering="mip", visible=False))
    if run.gaussians_path.is_file():
        layers.append(gaussians_layer(run.gaussians_path, name="consensus gaussians"))
    return layers


#: One function per artefact of a run, in display order; later stages add theirs here.
RUN_ARTEFACTS: tuple[Callable[[RunFolder], list[LayerDataTuple]], ...] = (consensus_layers,)


def run_layers(path: str | os.PathLike) -> list[LayerDataTuple]:
    """Every finished artefact of the run folder ``path``; InputError when there is none yet."""
    run = RunFolder(path)
    cfg = run.config()
    if "format_version" not in cfg:
        raise InputError(run.config_path, "format_version", "a cryospire run config", "no format_version")
    layers = [layer for artefact in RUN_ARTEFACTS for layer in artefact(run)]
    if not layers:
        raise InputError(run.root, "run folder", "at least one finished stage (e.g. consensus/map.mrc)", "none yet")
    return layers
