"""The sampling lattice of a map or an image: D samples per axis, ``apix`` Å apart.

One rule, RELION's: index ``i`` of every axis sits at ``(i - D // 2) * apix`` Å, so the centre
index ``D // 2`` is the model origin (0 Å), and the zero frequency of a centred transform sits at
index ``D // 2`` too (:mod:`cryospire_core.imaging.fourier`). Maps are (z, y, x) arrays, images
(y, x); coordinates are given (x, y, z) like the model's.

Outside the program a map is placed by its MRC header. Every map cryospire writes has header
origin 0, as RELION and cryoSPARC write theirs: ChimeraX then draws voxel 0 at 0 Å and the box
centre at ``(D // 2) * apix`` Å, so maps from every cryospire command, the explorer and the GUI,
and maps of a RELION or cryoSPARC job on the same particles, overlay without moving. napari is
given the model frame instead (:meth:`Lattice.napari_translate`): the box centre shows at 0.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: The MRC header origin (x, y, z) Å of every map cryospire writes: 0, as RELION and cryoSPARC
#: write (see the module docstring).
MRC_ORIGIN: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Lattice:
    """A cubic lattice of ``box`` samples per axis spaced ``apix`` Å (whole ``box`` >= 2,
    finite ``apix`` > 0; ValueError otherwise). The same object describes a (D, D, D) map and
    a (D, D) image of the data set."""

    box: int
    apix: float

    def __post_init__(self) -> None:
        try:
            box = operator.index(self.box)  # int or numpy integer; a float is refused
        except TypeError:
            box = None
        if box is None or isinstance(self.box, bool) or box < 2:
            raise ValueError(f"Lattice box must be a whole number >= 2, got {self.box!r}")
        try:
            apix = float(self.apix)
        except (TypeError, ValueError):
            apix = math.nan
        if not (math.isfinite(apix) and apix > 0):
            raise ValueError(f"Lattice apix must be a finite number > 0 (Å), got {self.apix!r}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "apix", apix)

    @classmethod
    def pixels(cls, box: int) -> Lattice:
        """The lattice of ``box`` samples in pixel units (apix 1): for grids whose physical size
        does not matter (Fourier shells, radii and masks measured in pixels)."""
        return cls(box, 1.0)

    # -- real space ---------------------------------------------------------------------------

    @property
    def centre(self) -> int:
        """Index of the sample at 0 Å on every axis: ``box // 2``."""
        return self.box // 2

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (D, D, D) of a map on this lattice."""
        return (self.box,) * 3

    def axis(self) -> np.ndarray:
        """Coordinates (D,) float64 in Å of the samples along one axis."""
        return (np.arange(self.box) - self.centre) * self.apix

    def axis_torch(self, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """:meth:`axis` as a (D,) tensor of ``dtype`` on ``device``, computed in ``dtype``."""
        return (torch.arange(self.box, device=device, dtype=dtype) - self.centre) * self.apix

    def index(self, coords: ArrayT) -> ArrayT:
        """Fractional array indices of positions ``coords`` in Å (any shape, numpy or torch,
        each component an axis): ``coords / apix + D // 2``. The inverse of :meth:`position`."""
        return coords / self.apix + self.centre

    def position(self, index: ArrayT) -> ArrayT:
        """Positions in Å of (fractional) array indices ``index`` (any shape, numpy or torch):
        ``(index - D // 2) * apix``."""
        return (index - self.centre) * self.apix

    # -- resampling -------------------------------------------------------------------------

    def cropped(self, box: int) -> Lattice:
        """The lattice of this one's data Fourier-cropped (``box`` < D) or zero-padded in Fourier
        space (``box`` > D) to ``box`` samples: the same field of view, ``apix * D / box`` Å
        apart. The zero frequency stays at the centre index (see :meth:`centred_slice`)."""
        box = Lattice.pixels(box).box  # validated
        return Lattice(box, self.apix / (box / self.box))

    def centred_slice(self, box: int) -> slice:
        """The indices of this lattice's axis that hold a ``box``-sample lattice with the same
        centre sample (``box`` <= D): a real-space crop at the same apix, or the Fourier crop of a
        centred transform (the frequencies of :meth:`cropped`)."""
        if not 1 <= box <= self.box:
            raise ValueError(f"a centred slice of a {self.box}-sample axis needs 1 <= box <= {self.box}, got {box}")
        start = self.centre - box // 2
        return slice(start, start + box)

    # -- files and viewers --------------------------------------------------------------------

    @property
    def mrc_voxel_size(self) -> float:
        """The MRC header's voxel size (Å) of a map on this lattice."""
        return self.apix

    @property
    def mrc_origin(self) -> tuple[float, float, float]:
        """The MRC header origin (x, y, z) Å of a map on this lattice: :data:`MRC_ORIGIN`."""
        return MRC_ORIGIN

    def napari_scale(self, ndim: int = 3) -> tuple[float, ...]:
        """napari layer ``scale`` (Å per axis) of an ``ndim``-axis map or image on this lattice."""
        return (self.apix,) * ndim

    def napari_translate(self, ndim: int = 3) -> tuple[float, ...]:
        """napari layer ``translate`` (Å per axis) placing index i at ``(i - D // 2) * apix``, the
        model frame: the box centre shows at 0 and model coordinates need no transform."""
        return (-self.centre * self.apix,) * ndim
