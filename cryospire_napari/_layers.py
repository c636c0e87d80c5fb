"""Layer construction shared by the readers, the sample data and the dock widgets.

Every function returns napari layer-data tuples ``(data, kwargs, layer_type)`` so readers can
hand them to napari unchanged and widgets can add them with ``viewer._add_layer_from_data`` or
update an existing layer's ``data``.

World coordinates are Å about the box centre, in napari's (z, y, x) order: voxel i of a map of
box D sits at (i - D // 2) * apix Å, the convention of :mod:`cryospire_core.imaging.lattice`
(RELION's). Maps therefore get the ``scale`` and ``translate`` of their
:class:`~cryospire_core.imaging.lattice.Lattice`, and model coordinates (Gaussian centres, Å, (x, y, z)) become points at ``centres[:, ::-1]`` with no
transform. Call :func:`set_chimerax_view` on a viewer so a map looks as it does in ChimeraX.

A run folder opens as at most three layers (:func:`run_layers`): its best map on top, the part
labels, the Gaussians hidden; :mod:`._run_tracking` then shows them (3D, camera on the molecule)
and lets the docks follow the run.
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


#: Metadata of the layers a run folder opens as (:func:`run_layers`): ``RUN_KEY``: the run
#: folder (absolute path, str), which the docks follow (:mod:`._run_tracking`); ``ROLE_KEY``:
#: what the layer shows, :data:`MAIN_MAP` for the map the view is fitted to.
RUN_KEY = "cryospire_run"
ROLE_KEY = "cryospire_role"
MAIN_MAP = "main map"

#: Opacity of the part label map over the map (enough to tell the parts apart, not to hide the map).
PARTS_OPACITY = 0.45

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


#: Fraction of the canvas the molecule's bounding box fills after :func:`show_molecule`.
MOLECULE_FILL = 0.85


def molecule_bounds(layer: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """World (z, y, x) Å corners (low, high) of the box around the voxels of a map layer above
    its iso threshold (voxel edges included), or None when no voxel is above it."""
    inside = np.argwhere(np.asarray(layer.data) > layer.iso_threshold)
    if not len(inside):
        return None
    scale, translate = np.asarray(layer.scale, float), np.asarray(layer.translate, float)
    return (inside.min(0) - 0.5) * scale + translate, (inside.max(0) + 0.5) * scale + translate


def show_molecule(viewer: Any, layer: Any, ndisplay: int = 3) -> None:
    """Show the map ``layer`` as a user expects on opening it: ChimeraX's view
    (:func:`set_chimerax_view`, ``ndisplay`` dimensions), the camera centred on the molecule (the
    voxels above the layer's iso threshold, :func:`molecule_bounds`) and zoomed so its bounding
    box fills :data:`MOLECULE_FILL` of the canvas (not the whole box: a particle usually fills
    half of it); in 2D the slice through the molecule's centre. The layer becomes the selected one."""
    set_chimerax_view(viewer, ndisplay)
    viewer.layers.selection.active = layer
    bounds = molecule_bounds(layer)
    if bounds is None:
        return
    lo, hi = bounds
    centre, size = (lo + hi) / 2, np.maximum(hi - lo, 1e-6)
    camera = viewer_camera(viewer)
    if ndisplay == 3:
        camera.center = tuple(float(c) for c in centre)
    else:
        viewer.dims.set_point(viewer.dims.not_displayed[-1], float(centre[0]))
        camera.center = (0.0, float(centre[1]), float(centre[2]))
    # Looking down z (angles 0) the canvas shows y (rows) and x (columns) in pixels per Å.
    canvas = np.asarray(viewer.canvas.viewbox_size(viewer.layers), float)
    camera.zoom = MOLECULE_FILL * float(np.min(canvas / size[-2:]))


def software_renderer() -> str | None:
    """The name of the OpenGL renderer napari draws with when it is a software one (Mesa's
    llvmpipe or softpipe, Microsoft's GDI generic: remote desktops, X forwarding, virtual
    machines, Xvfb), else None (a GPU, or no OpenGL context to ask)."""
    try:
        from vispy.gloo import gl
        from vispy.gloo.context import get_current_canvas

        canvas = get_current_canvas()
        if canvas is None:
            return None
        canvas.set_current()
        name = str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception:  # no context, no driver answer: assume a GPU, as napari does
        return None
    return name if any(s in name.lower() for s in ("llvmpipe", "softpipe", "swrast", "software", "gdi generic")) else None


def opening_ndisplay() -> int:
    """How many dimensions a run opens in: 3, except 2 where OpenGL is software
    (:func:`software_renderer`): there one 3D frame of a 64^3 map takes seconds on 2 cores and
    opening a run froze the viewer for over a minute (benchmarks/gui_gap.py); the 2D/3D button
    still switches."""
    return 2 if software_renderer() else 3


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
    the limits when the map has too little positive density for it. Otsu needs neither the
    molecule's mass nor a noise model and encloses about the molecule's volume: on the demo's
    hinge (5,000 images, 64 px) the consensus map's level encloses 1,172 voxels, the ground
    truth's own level 1,283, where a level at 5% of the maximum would enclose 3,460 and one
    enclosing 90% of the positive density 4,556.
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
        # Additive, iso too: over black it looks the same as translucent, and a part label map
        # below it shows as a tint of the surface (3D) or of the slice (2D) instead of being hidden.
        "blending": "additive",
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


def gaussian_points(centres: np.ndarray, widths: np.ndarray, lattice: Lattice) -> tuple[np.ndarray, np.ndarray]:
    """Points data (G, 3) and sizes (G,) of Gaussians with ``centres`` (G, 3) Å (x, y, z) and
    ``widths`` (G,) Å (the standard deviation s of ``exp(-r^2 / 2 s^2)``), in the voxel frame of
    ``lattice``: with the lattice's napari scale and translate the points sit at ``centres`` in
    world Å and each disc's diameter is 2 s Å. Points get the map's scale (not 1) so that the
    dims sliders step one voxel, not one Å."""
    return lattice.index(np.asarray(centres, np.float64)[:, ::-1]), 2.0 * np.asarray(widths, np.float64) / lattice.apix


def points_layer(centres: np.ndarray, widths: np.ndarray, lattice: Lattice, name: str,
                 metadata: dict[str, Any], **style: Any) -> LayerDataTuple:
    """A hidden Points layer of Gaussians (:func:`gaussian_points`) on ``lattice``; ``style``:
    colours, features."""
    data, size = gaussian_points(centres, widths, lattice)
    kwargs = {
        "name": name,
        "size": size,
        "scale": lattice.napari_scale(),
        "translate": lattice.napari_translate(),
        "border_width": 0,
        "opacity": 0.8,
        # Hidden: in 3D the discs hide the surface they sit in; the layer list's eye shows them.
        "visible": False,
        "axis_labels": MAP_AXES,
        "metadata": metadata,
        **style,
    }
    return data, kwargs, "points"


def gaussians_layer(run: RunFolder, name: str = "consensus gaussians") -> LayerDataTuple:
    """The consensus Gaussians (RUN/consensus/gaussians.npz: centres (G, 3) Å (x, y, z), widths
    (G,) Å, amplitudes (G,), box, apix) as a hidden Points layer coloured by amplitude."""
    from cryospire_core.io.mixture import mixture_lattice

    g = run.gaussians("consensus")
    amps = np.asarray(g["amplitudes"], np.float32)
    meta = {"source": str(run.gaussians_path), "n_gaussians": len(amps), RUN_KEY: str(run.root), ROLE_KEY: "gaussians"}
    return points_layer(g["centres"], g["widths"], mixture_lattice(g), name, meta,
                        features={"amplitude": amps, "width": np.asarray(g["widths"], np.float32)},
                        face_color="amplitude", face_colormap="viridis")


def parts_colormap(colours: np.ndarray) -> Any:
    """napari's colormap for a part label map: label k + 1 in ``colours[k]`` (K, 4) RGBA,
    solvent (0) and unknown labels transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: np.zeros(4), 0: np.zeros(4),
                                           **{k + 1: c for k, c in enumerate(colours)}})


def label_texture(labels: np.ndarray) -> np.ndarray:
    """A part label map (int, 0 solvent, k part k) as napari's Labels layer takes it fastest: in
    the smallest unsigned type that holds it (uint8 up to 255 parts). For wider types napari
    maps every label through a numba function on each update, which it compiles on first use:
    2.5 s on the GUI thread when a run opened (benchmarks/gui_gap.py), and part of every part
    edit after."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    dtype = np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16 if top <= np.iinfo(np.uint16).max else labels.dtype
    return labels.astype(dtype, copy=False)


def part_layers(run: RunFolder) -> list[LayerDataTuple]:
    """The parts (RUN/parts/clustering.npz over the stage-1 Gaussians,
    :func:`cryospire_core.services.parts.load_parts`): the stage-1 Gaussians coloured by part
    (hidden) and the part label map, under the names the Parts dock uses, so a docked Parts
    dock updates these layers instead of adding its own. The labels are drawn translucent over
    the map: in 2D the slice shows through the part colours, in 3D they tint the surface."""
    from cryospire_core.services.parts import load_parts

    from ._parts_widget import LABELS_NAME, POINTS_NAME, part_colours

    state = load_parts(run.root)
    colours = part_colours(state.n_parts)
    lattice = state.lattice
    meta = {RUN_KEY: str(run.root), "apix": lattice.apix}
    points = points_layer(state.clustering.inputs.centres, state.widths, lattice, POINTS_NAME,
                          {**meta, ROLE_KEY: "gaussians"}, face_color=colours[state.clustering.part_index],
                          features={"part": state.clustering.part_index + 1})
    labels = (label_texture(state.labels), {
        "name": LABELS_NAME,
        "scale": lattice.napari_scale(),
        "translate": lattice.napari_translate(),
        "colormap": parts_colormap(colours),
        "opacity": PARTS_OPACITY,
        "blending": "translucent_no_depth",
        "axis_labels": MAP_AXES,
        "metadata": {**meta, ROLE_KEY: "parts"},
    }, "labels")
    return [points, labels]


def main_map_layer(run: RunFolder) -> LayerDataTuple | None:
    """The run's most refined map on disk: stage 1's (RUN/discovery/map.mrc, the map stage 2
    starts from) else the consensus map; None before the consensus has finished. Stage 2 has no
    map file (its maps depend on the latent: the Latent explorer renders them)."""
    for stage, name in (("discovery", "stage-1 map"), ("consensus", "consensus map")):
        if run.map_path(stage).is_file():
            data, kwargs, kind = read_map_layer(run.map_path(stage), name=name)
            kwargs["metadata"].update({RUN_KEY: str(run.root), ROLE_KEY: MAIN_MAP})
            return data, kwargs, kind
    return None


def run_layers(path: str | os.PathLike) -> list[LayerDataTuple]:
    """What a run folder opens as, bottom to top: its Gaussians (hidden: the stage-1 Gaussians
    coloured by part once the parts exist, else the consensus's), the part label map (once the
    parts exist) and its best map (:func:`main_map_layer`), which napari then selects. Every
    layer's metadata holds the run folder (:data:`RUN_KEY`) and its role (:data:`ROLE_KEY`).
    Other maps of the run (the backprojection, the consensus map beside stage 1's) are not
    added: they are one File > Open away. InputError when the run has no map yet."""
    run = RunFolder(Path(path).absolute())
    cfg = run.config()
    if "format_version" not in cfg:
        raise InputError(run.config_path, "format_version", "a cryospire run config", "no format_version")
    main = main_map_layer(run)
    if main is None:
        raise InputError(run.root, "run folder", "at least one finished stage (e.g. consensus/map.mrc)", "none yet")
    if run.stage_done("parts"):
        return [*part_layers(run), main]
    return [gaussians_layer(run), main] if run.gaussians_path.is_file() else [main]
