"""Particle selections: which of a data set's particles to keep (e.g. junk dropped between the
stages, or a subset picked in the explorer).

A selection is given as an index file (0-based indices into the particles, as ``.npy`` or text
with one index per line) or as a particle file (``.star`` / ``.cs``) listing a subset of the same
particles; the subset's images are matched to the full set's by (stack file, frame).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.io.load import load_particles
from cryospire_core.io.particles import ParticleSet

PARTICLE_SUFFIXES = (".star", ".cs")


def _image_keys(ps: ParticleSet) -> list[tuple[str, int]]:
    files = [str(Path(f).resolve()) for f in ps.source.files]
    return [(files[k], int(f)) for k, f in zip(ps.source.file_index, ps.source.frames)]


def read_selection(path: str | os.PathLike, particles: ParticleSet, datadir: str | os.PathLike | None = None) -> np.ndarray:
    """(M,) int64 sorted unique indices into ``particles`` named by ``path`` (see the module docstring).

    InputError names the file when it is unreadable, empty, out of range, or lists images that
    are not among ``particles``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "selection", "an index file (.npy/.txt) or a .star/.cs subset", "no such file")
    n = len(particles)
    if path.suffix.lower() in PARTICLE_SUFFIXES:
        sub = load_particles(path, datadir=datadir, invert=False)
        where = {key: i for i, key in enumerate(_image_keys(particles))}
        keys = _image_keys(sub)
        missing = [k for k in keys if k not in where]
        if missing:
            raise InputError(path, "particles", "a subset of the training particles (same stacks and frames)",
                             f"{len(missing)} images not among them, e.g. frame {missing[0][1] + 1} of {missing[0][0]}")
        idx = np.array([where[k] for k in keys], dtype=np.int64)
    elif path.suffix.lower() != ".npy" and not path.read_text(errors="replace").strip():
        raise InputError(path, "selection", "at least one particle", "an empty file")
    else:
        try:
            raw = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else np.loadtxt(path, ndmin=1)
        except (ValueError, OSError) as exc:
            raise InputError(path, "selection", "0-based particle indices (.npy, or text one per line)", exc) from exc
        raw = np.asarray(raw).reshape(-1)
        if raw.dtype.kind == "b" and len(raw) == n:  # a boolean mask is an index file too
            raw = np.flatnonzero(raw)
        if raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not np.all(raw == np.round(raw))):
            raise InputError(path, "selection", "whole-number particle indices", raw.dtype)
        idx = raw.astype(np.int64)
    if len(idx) == 0:
        raise InputError(path, "selection", "at least one particle", "none")
    if idx.min() < 0 or idx.max() >= n:
        raise InputError(path, "selection", f"indices in 0..{n - 1}", f"{idx.min()}..{idx.max()}")
    return np.unique(idx)
