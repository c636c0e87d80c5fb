"""npe2 writers: an Image or a Labels layer as an .mrc map.

The voxel size comes from the layer's ``scale`` (Å, the same on the three axes); the header's
origin is the one the map was read with (``metadata["mrc_origin"]``, so a user's map keeps its
place), else 0, the origin of every map cryospire writes (:mod:`cryospire_core.imaging.lattice`):
a layer made here overlays the run's maps in ChimeraX. Labels
are stored as float32 values (MRC mode 2, exact for labels below 2**24), so every map reader,
ChimeraX included, opens them; reading one back gives an Image layer with the same values.
Files are written atomically by :func:`cryospire_core.io.mrc.write_map` (a symbolic link at the
name is replaced, its target never written). napari's save dialog has asked the user before a
file of the given name is replaced; a name without .mrc/.map gets ``.mrc`` added, and that file
is never replaced (:class:`NameInUseError`), since nobody was asked about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.io.mrc import write_map
from cryospire_core.io.outputs import check_new_outputs

MAP_SUFFIXES = (".mrc", ".map")
#: Largest integer float32 holds exactly.
FLOAT32_EXACT_INT = 2**24


class NotAMapError(RuntimeError):
    """The layer cannot be stored as an .mrc map (not 3D, anisotropic scale, a particle stack...).

    Not a ValueError on purpose: napari's save path catches ValueError from npe2 and replaces
    it with "not a valid writer", which would hide the reason from the user.
    """


class NameInUseError(RuntimeError):
    """The file the writer would write (``.mrc`` added to the name napari gave) exists: napari
    asked the user only about the name it gave, so this one is not replaced. A RuntimeError for
    the reason :class:`NotAMapError` gives."""


def _map_path(path: str) -> Path:
    p = Path(path)
    return p if p.suffix.lower() in MAP_SUFFIXES else p.with_name(p.name + ".mrc")


def _voxel_size(attributes: dict[str, Any], ndim: int) -> float:
    scale = np.asarray(attributes.get("scale", np.ones(ndim)), dtype=np.float64)[-3:]
    if not np.allclose(scale, scale[0], rtol=1e-4) or scale[0] <= 0:
        raise NotAMapError(f"an .mrc map needs one positive voxel size on z, y and x; the layer's scale is {tuple(scale)}")
    return float(scale[0])


def _write(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    meta = attributes.get("metadata") or {}
    if meta.get("kind") == "particle stack":
        raise NotAMapError(f"layer '{attributes.get('name')}' is a particle stack, not a map: it is not written as a 3D .mrc")
    data = np.asarray(data)
    if data.ndim != 3:
        raise NotAMapError(f"an .mrc map needs a 3D (z, y, x) layer; '{attributes.get('name')}' has shape {data.shape}")
    out = _map_path(path)
    if out != Path(path):
        # napari asked the user about replacing ``path``, not the name with ".mrc" added.
        try:
            check_new_outputs([out], False, "map file", remedy="saving under the full name, .mrc included")
        except InputError as exc:
            raise NameInUseError(str(exc)) from exc
    write_map(out, data, _voxel_size(attributes, data.ndim), origin=meta.get("mrc_origin"))
    return [str(out)]


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """An Image layer (z, y, x) as a float32 .mrc with voxel size = the layer's scale (Å)."""
    return _write(path, data, attributes)


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A Labels layer (z, y, x) as an .mrc of float32 label values (mode 2)."""
    data = np.asarray(data)
    if data.size and int(np.abs(data).max()) >= FLOAT32_EXACT_INT:
        raise NotAMapError(f"labels up to {FLOAT32_EXACT_INT - 1} can be stored exactly as float32; the layer has {int(np.abs(data).max())}")
    return _write(path, data, attributes)
