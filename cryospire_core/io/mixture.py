"""Gaussian-mixture files (``gaussians.npz``, a stage's ``seed.npz``): read and checked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.arrays import read_npz

MIXTURE = ("centres", "widths", "amplitudes", "box", "apix")
"""The arrays of a Gaussian-mixture file (``GaussianMixture.export()``)."""


def load_gaussians(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A Gaussian-mixture file (gaussians.npz, a stage's seed.npz) holding :data:`MIXTURE` and
    ``keys`` (other arrays kept), checked: centres (G, 3) Å, widths (G,) Å, amplitudes (G,), all
    finite numbers, G >= 1; box one whole number >= 2 px; apix one number > 0 Å. InputError
    naming the file and the array otherwise (a truncated or foreign file too)."""
    path = Path(path)
    g = read_npz(path, "Gaussian mixture", MIXTURE + tuple(keys))
    n = len(g["centres"]) if g["centres"].ndim == 2 else -1
    expected = {"centres": ((n, 3), "(G, 3) finite numbers (Å)"), "widths": ((n,), f"({n},) finite numbers (Å)"),
                "amplitudes": ((n,), f"({n},) finite numbers"), "box": ((), "one whole number of pixels"),
                "apix": ((), "one number of Å per pixel")}
    for key, (shape, what) in expected.items():
        a = g[key]
        if a.shape != shape or a.dtype.kind not in "iuf" or not np.all(np.isfinite(a)):
            raise InputError(path, key, what, f"{a.dtype} array of shape {a.shape}")
    if n < 1 or g["box"] < 2 or g["box"] != np.round(g["box"]) or not g["apix"] > 0:
        raise InputError(path, "centres, box, apix", "at least one Gaussian, a box >= 2 px and apix > 0 Å",
                         f"{n} Gaussians, box {g['box']}, apix {g['apix']}")
    return g


def mixture_lattice(gaussians: Mapping) -> Lattice:
    """The lattice a mixture was made on, from the ``box`` and ``apix`` arrays of its file (or of
    ``GaussianMixture.export()``)."""
    return Lattice(int(gaussians["box"]), float(gaussians["apix"]))
