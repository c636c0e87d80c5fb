"""What the explorer scatter's colours mean: the key (a legend of categories, or the value range
of a colour bar) of each colouring, made from the per-particle values the colouring gives
(:meth:`cryospire_core.analysis.explorer.Explorer.colour_values`). No Qt: the dock draws the key
and colours the points with it, so the points and their key cannot disagree.

- k-means states and a simulation's ground-truth states (at most :data:`MAX_CATEGORIES`) are
  categories: value v is category v (colour v of the part palette), with its name and particle
  count.
- Presence (0-1) and displacement (Å) of a part, and ground truth with more states (usually a
  motion's steps, so ordered), are continuous: the colormap spans the 1st to the 99th
  percentile of the values (an outlier does not flatten the rest); values beyond are clipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryospire_core.analysis.explorer import ColourMode

#: Ground truth with up to this many states is drawn as categories, with more as a sequence.
MAX_CATEGORIES = 10

#: Percentiles of the values at the two ends of a continuous colormap.
CLIP_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class Category:
    """One category of a categorical colouring: the particles whose value is ``value`` (0-based;
    drawn in colour ``value`` of the part palette), its ``name`` and how many particles have it."""

    value: int
    name: str
    count: int


@dataclass(frozen=True)
class ColourKey:
    """The key of a colouring.

    title: the quantity (with its unit); categories: one per value 0..K-1 of a categorical
    colouring, empty for a continuous one; lo, hi: the values at the colormap's two ends
    (continuous); lo_text, hi_text: those ends as the colour bar writes them.
    """

    title: str
    categories: tuple[Category, ...] = ()
    lo: float = 0.0
    hi: float = 1.0
    lo_text: str = ""
    hi_text: str = ""

    @property
    def categorical(self) -> bool:
        return bool(self.categories)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """(N,) values -> (N,) positions along the colormap in [0, 1] (clipped at lo and hi)."""
        span = self.hi - self.lo if self.hi > self.lo else 1.0
        return np.clip((np.asarray(values) - self.lo) / span, 0, 1)


def colour_key(mode: ColourMode, values: np.ndarray, part: int = 0, state_names: list[str] | None = None) -> ColourKey:
    """The key of colouring ``mode`` for per-particle ``values`` (N,) as
    :meth:`~cryospire_core.analysis.explorer.Explorer.colour_values` returns them; ``part``:
    the part (0-based) of a presence or displacement colouring; ``state_names``: the ground
    truth's state names, in state order (None: unknown, states are numbered)."""
    values = np.asarray(values)
    if mode == ColourMode.STATE:
        # Numbered from 1, as the dock's "Select state" box numbers them.
        return _categories("k-means state", values, lambda v: f"{v + 1}")
    if mode == ColourMode.GROUND_TRUTH:
        n = int(values.max()) + 1 if len(values) else 0

        def name(v: int) -> str:
            return state_names[v] if state_names is not None and v < len(state_names) else f"state {v}"

        if n <= MAX_CATEGORIES:
            return _categories("ground-truth state", values, name)
        lo, hi = _clip_range(values)
        return ColourKey("ground-truth state", lo=lo, hi=hi, lo_text=name(round(lo)), hi_text=name(round(hi)))
    lo, hi = _clip_range(values)
    if mode == ColourMode.PRESENCE:
        return ColourKey(f"presence of part {part + 1} (0-1)", lo=lo, hi=hi, lo_text=f"{lo:.2f}", hi_text=f"{hi:.2f}")
    if mode == ColourMode.DISPLACEMENT:
        return ColourKey(f"RMS displacement of part {part + 1} (Å)", lo=lo, hi=hi, lo_text=f"{lo:.1f}",
                         hi_text=f"{hi:.1f}")
    raise ValueError(f"colour_key: mode must be one of {[m.value for m in ColourMode]}, got {mode!r}")


def density_key(max_count: int) -> ColourKey:
    """The key of the density view: particles per bin, on the log scale the image is drawn in
    (``log(1 + count)`` from 0 to that of ``max_count``)."""
    return ColourKey("particles per bin (log scale)", lo=0.0, hi=float(np.log1p(max_count)), lo_text="0",
                     hi_text=str(int(max_count)))


def ground_truth_state_names(gt_dir: str | os.PathLike | None) -> list[str] | None:
    """A simulation's state names (``gt_dir/beads.npz`` ``state_names``, as ``cryospire
    simulate`` writes them), or None when the folder or the names are missing or unreadable
    (the names only label a colouring: numbers do instead)."""
    if gt_dir is None or not (Path(gt_dir) / "beads.npz").is_file():
        return None
    try:
        with np.load(Path(gt_dir) / "beads.npz", allow_pickle=False) as z:
            names = z["state_names"] if "state_names" in z.files else None
    except (ValueError, OSError, EOFError):
        return None
    if names is None or names.ndim != 1 or names.dtype.kind != "U":
        return None
    return [str(s) for s in names]


def _categories(title: str, values: np.ndarray, name) -> ColourKey:
    v = values.astype(np.int64)
    counts = np.bincount(v, minlength=int(v.max()) + 1 if len(v) else 0)
    return ColourKey(title, tuple(Category(k, name(k), int(c)) for k, c in enumerate(counts)))


def _clip_range(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, CLIP_PERCENTILES) if len(values) else (0.0, 1.0)
    return float(lo), float(hi)
