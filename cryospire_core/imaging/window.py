"""Circular regions of a box of images: the soft window the data term sees the images through
(as cryoDRGN's ``--window``), and the background outside the particle, where the noise is measured.

Radii are fractions of the half box (1: the edge of the inscribed circle), measured from the
lattice centre (pixel ``D // 2`` on each axis, the centre the renderer and the FFTs use), so
one setting means the same field of view at every box a stage reads its images at.
"""

from __future__ import annotations

import numpy as np

from cryospire_core.imaging.lattice import Lattice

#: cryoDRGN's default: the window is flat out to 85% of the half box.
DEFAULT_WINDOW_RADIUS = 0.85
#: Width (fraction of the half box) over which :func:`background_taper` rises from 0 to 1.
TAPER_WIDTH = 0.1


def radii(box: int) -> np.ndarray:
    """(D, D) float64 distance of each pixel from the lattice centre, in half boxes."""
    f = Lattice.pixels(box).axis()
    return np.hypot(f[None, :], f[:, None]) / (box / 2)


def soft_window(box: int, radius: float = DEFAULT_WINDOW_RADIUS) -> np.ndarray:
    """(D, D) float32 window: 1 within ``radius`` (a fraction of the half box, in (0, 1]), a
    raised-cosine fall to 0 at the half box (the edge of the inscribed circle), 0 beyond (the
    corners). ``radius`` 1 gives the hard-edged inscribed disc."""
    if not 0 < radius <= 1:
        raise ValueError(f"window radius must be in (0, 1] of the half box, got {radius}")
    r = radii(box)
    if radius == 1:
        return (r <= 1).astype(np.float32)
    ramp = np.clip((r - radius) / (1 - radius), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * ramp))).astype(np.float32)


def background_mask(box: int, radius: float) -> np.ndarray:
    """(D, D) bool: the pixels farther than ``radius`` half boxes from the centre (the
    background of a particle within that radius). ValueError when none are."""
    mask = radii(box) > radius
    if not mask.any():
        raise ValueError(f"no background beyond {radius} of the half box in a {box} px box")
    return mask


def background_taper(box: int, radius: float, width: float = TAPER_WIDTH) -> np.ndarray:
    """(D, D) float32 weights of the background for spectra: 0 within ``radius`` half boxes, a
    raised-cosine rise to 1 over ``width`` half boxes, 1 beyond. The soft edge keeps the strong
    low-frequency power of the noise from leaking into the high frequencies of the estimate,
    as a hard-edged mask's sinc-like sidelobes would."""
    ramp = np.clip((radii(box) - radius) / width, 0.0, 1.0)
    taper = (0.5 * (1.0 - np.cos(np.pi * ramp))).astype(np.float32)
    if not taper.any():
        raise ValueError(f"no background beyond {radius} of the half box in a {box} px box")
    return taper
