"""Typed values with their ranges: every numeric option of every command and every number a run
folder's ``config.json`` holds is checked by one of these.

A range names what it accepts in the words an error prints: ``--batch-size: expected a whole
number >= 1, found 0``. Each is an argparse type (``type=COUNT``), so a value out of range is
refused while the command line is read, before any file is opened; :meth:`Range.accepts`
checks a value already parsed (:data:`FIELD_RANGES`, read by :mod:`cryospire_core.pipeline.runfolder`).

This module imports neither torch nor numpy: it is read by every command, ``--help`` included.
"""

from __future__ import annotations

import argparse
import math
import re


def shown(text: object) -> str:
    """A value as an error message quotes it: plain when it reads unambiguously, else repr."""
    s = str(text)
    return s if s and s.strip() == s and len(s) <= 60 else repr(s[:60])


class Range:
    """An argparse type: ``__call__(text)`` parses and checks one value (ArgumentTypeError
    ``expected <what>, found <text>`` otherwise); :meth:`accepts` checks a value already parsed
    (e.g. read from a config file). Subclasses define ``what``, ``_parse`` and ``accepts``."""

    what = "a value"

    def _parse(self, text: str):
        raise NotImplementedError

    def accepts(self, value: object) -> bool:
        raise NotImplementedError

    def __call__(self, text: str):
        try:
            value = self._parse(text.strip())
        except (ValueError, OverflowError):
            value = None
        if value is None or not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.what}, found {shown(text)}")
        return value

    def __repr__(self) -> str:  # argparse names the type in some messages
        return self.what


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    lo_s, hi_s = (f"{b:g}" if isinstance(b, float) else f"{b}" for b in (lo, hi))
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo_s}, {hi_s}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo_s}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi_s}"
    return ""


class Whole(Range):
    """A whole number (digits with an optional sign; ``1e3`` and ``2.0`` are refused) in [lo, hi],
    even where asked (box sizes)."""

    def __init__(self, lo: int | None = None, hi: int | None = None, even: bool = False) -> None:
        self.lo, self.hi, self.even = lo, hi, even
        self.what = f"{'an even' if even else 'a'} whole number {_bounds(lo, hi)}".rstrip()

    def _parse(self, text: str) -> int | None:
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else None

    def accepts(self, value: object) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and not (self.even and value % 2)
                and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi))


class Real(Range):
    """A finite number in the interval [lo, hi] (ends open where asked); ``inf_ok`` also takes
    ``inf`` (e.g. an SNR without noise)."""

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False, inf_ok: bool = False) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open, self.inf_ok = lo, hi, lo_open, hi_open, inf_ok
        self.what = f"a finite number {_bounds(lo, hi, lo_open, hi_open)}".rstrip() + (" (or inf)" if inf_ok else "")

    def _parse(self, text: str) -> float:
        return float(text)

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        v = float(value)
        if math.isnan(v) or (math.isinf(v) and not (self.inf_ok and v > 0)):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or math.isinf(v) or (v < self.hi if self.hi_open else v <= self.hi)


class OrAuto(Range):
    """``auto`` or a value of ``inner`` (e.g. ``--parts auto|K``)."""

    def __init__(self, inner: Range) -> None:
        self.inner = inner
        self.what = f"auto or {inner.what}"

    def _parse(self, text: str):
        return "auto" if text == "auto" else self.inner._parse(text)

    def accepts(self, value: object) -> bool:
        return value == "auto" or self.inner.accepts(value)


class Numbers(Range):
    """Comma-separated values of ``inner`` (``--states 0,2``) as a tuple: at least ``least`` of
    them, in groups of ``group`` (x,y pairs: 2); ``what`` says it in words."""

    def __init__(self, inner: Range, what: str, least: int = 1, group: int = 1) -> None:
        self.inner, self.least, self.group, self.what = inner, least, group, what

    def _parse(self, text: str) -> tuple | None:
        values = tuple(self.inner._parse(t.strip()) for t in text.split(","))
        return None if None in values else values

    def accepts(self, value: object) -> bool:
        return (isinstance(value, tuple) and len(value) >= self.least and len(value) % self.group == 0
                and all(self.inner.accepts(v) for v in value))


COUNT = Whole(1)
"""Epochs, batch sizes, Gaussian counts, candidates, maps: at least one."""
HANDLES = Whole(0)
"""Stage 1's rigid handles (0: none, the paper's per-Gaussian shift MLP)."""
SEED = Whole(0, 2**32 - 1)
"""Random seeds: what numpy, torch and scikit-learn all accept."""
MINUTES = Real(0)
"""Minutes between checkpoints (0: after every step)."""
LEARNING_RATE = Real(0, 1, lo_open=True)
"""Adam learning rates (in pixels per step for Gaussian centres: above 1 the fit diverges)."""
IMAGES = Whole(1, 10**8)
"""Numbers of simulated images."""
BOX = Whole(8, 1024, even=True)
"""Image sizes in pixels (Fourier crops and the centre voxel need an even box)."""
SNR = Real(0, lo_open=True, inf_ok=True)
"""Signal-to-noise ratios (inf: no noise)."""
APIX = Real(0, 100, lo_open=True)
"""Pixel sizes in Å."""
WINDOW_RADIUS = Real(0, 1, lo_open=True)
"""Radii of the soft window and the particle, as fractions of the half box."""

FIELD_RANGES: dict[str, Range] = {
    "epochs": COUNT, "batch_size": COUNT, "seed": SEED, "checkpoint_minutes": MINUTES,
    "lr": LEARNING_RATE, "lr_mlp": LEARNING_RATE, "lr_features": LEARNING_RATE, "lr_latent": LEARNING_RATE,
    "lr_gaussians": LEARNING_RATE, "n_gaussians": COUNT, "consensus.n_gaussians": Whole(0),
    "voxels_per_gaussian": Real(0, lo_open=True),
    "map_fit_steps": Whole(0), "init_width_px": Real(0, lo_open=True), "min_width_px": Real(0, lo_open=True),
    "zdim": COUNT, "feature_dim": COUNT, "hidden": COUNT, "depth": COUNT, "rank": COUNT,
    "prior_weight": Real(0), "offset_weight": Real(0), "image_var": Real(0, lo_open=True), "gate_bias": Real(),
    "latent_init_std": Real(0), "feature_init_std": Real(0), "feature_tv": Real(0), "handles": HANDLES,
    "gate_sample": COUNT, "n_particles": COUNT,
    "parts_level1": OrAuto(COUNT), "parts_level2": OrAuto(COUNT), "box": BOX, "window_radius": WINDOW_RADIUS,
}
"""The range of each numeric field of a run's config: by ``section.field`` where one section
differs (the consensus's 0 Gaussians means "from the map"), else by field name."""
