"""Particle selections from a trained run, and their export as a .star / .cs subset.

A selection starts as a mask (N,) bool over the run's explored particles (the rows of
RUN/latents.npy: every particle, or the ones stage 2 kept, listed in RUN/selection.npy): by
k-means states (:func:`state_mask`), by a polygon in a 2D embedding
(:func:`~cryospire_core.analysis.explorer.points_in_polygon`: the explorer's lasso, or
``cryospire select --polygon`` on PC1/PC2), or by a box in latent space (:func:`latent_box_mask`);
the functions here check the user's numbers, naming the option.
:meth:`~cryospire_core.analysis.explorer.Explorer.particle_indices` turns a mask into 0-based
indices of the run's particle file: what an index file lists (``cryospire train --select``
reads it) and what :func:`write_selection` writes. ``cryospire select`` and the explorer dock
call these functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryospire_core.analysis.explorer import Explorer
from cryospire_core.errors import InputError
from cryospire_core.io.atomic import write_text
from cryospire_core.io.outputs import check_new_outputs


def state_mask(explorer: Explorer, states: Sequence[int], k: int, seed: int = 0, field: str = "states") -> np.ndarray:
    """(N,) bool: the particles in any of the k-means ``states`` (0-based, of ``k`` states: the
    explorer's numbering, and ``cryospire analyze --ksample k``'s with the same seed).
    InputError naming ``field`` for a state outside 0..k-1 or ``k`` above the particle count."""
    if not 1 <= k <= explorer.n_particles:
        raise InputError(None, field, f"k-means with 1 to {explorer.n_particles} states (the run's particles)",
                         f"{k} states")
    bad = [int(s) for s in states if not 0 <= int(s) < k]
    if bad:
        raise InputError(None, field, f"states in 0..{k - 1} (of {k} k-means states)", ", ".join(map(str, bad)))
    return np.isin(explorer.states(k, seed), np.asarray(states, np.int64))


def latent_box_mask(latents: np.ndarray, lo: Sequence[float], hi: Sequence[float], field: str = "box") -> np.ndarray:
    """(N,) bool: the latents (N, zdim) with lo[d] <= z[d] <= hi[d] in every dimension d.
    InputError naming ``field`` unless lo and hi have zdim numbers each, lo <= hi."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    zdim = latents.shape[1]
    if lo.shape != (zdim,) or hi.shape != (zdim,):
        raise InputError(None, field, f"a lower and an upper bound for each of the {zdim} latent dimensions",
                         f"{len(lo)} lower and {len(hi)} upper bounds")
    if np.any(lo > hi):
        d = int(np.flatnonzero(lo > hi)[0])
        raise InputError(None, field, "each lower bound at most its upper bound",
                         f"{lo[d]:g} > {hi[d]:g} in dimension {d + 1}")
    z = np.asarray(latents, np.float64)
    return np.all((z >= lo) & (z <= hi), axis=1)


def check_selection_file(path: str | os.PathLike, overwrite: bool = False,
                         remedy: str = "another file name") -> tuple[Path, Path]:
    """(subset path, index path ``<stem>_indices.txt`` beside it) that :func:`write_selection`
    writes, after refusing (InputError) a suffix other than .star / .cs and, unless ``overwrite``,
    either file existing (``remedy``: what the message offers instead). Call it before computing
    a selection."""
    path = Path(path)
    if path.suffix.lower() not in (".star", ".cs"):
        raise InputError(path, "selection file", "a .star or .cs file name", path.suffix or "no suffix")
    index_path = path.with_name(path.stem + "_indices.txt")
    check_new_outputs([path, index_path], overwrite, "selection file", remedy=remedy)
    return path, index_path


def write_indices(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """Write 0-based particle indices (M,) as text, one per line (what ``cryospire train
    --select`` reads)."""
    write_text(path, "\n".join(str(int(i)) for i in np.asarray(rows).reshape(-1)) + "\n")
    return Path(path)


def write_selection(path: str | os.PathLike, rows: np.ndarray, particles: str | os.PathLike,
                    overwrite: bool = False, remedy: str = "another file name") -> tuple[Path, Path]:
    """Write the particles ``rows`` (0-based indices into the particle file ``particles``) as a
    subset in the format of ``path``'s suffix (.star or .cs): every original column kept, image
    paths pointing at the original stacks. Also writes ``<path stem>_indices.txt`` (one index per
    line, what ``cryospire train --select`` reads). Refuses (InputError, nothing written) to
    replace either file unless ``overwrite`` (see :func:`check_selection_file`). Returns (subset
    path, index path)."""
    from cryospire_core.io.cryosparc import write_cs
    from cryospire_core.io.load import load_particles
    from cryospire_core.io.star import write_star

    path, index_path = check_selection_file(path, overwrite, remedy)
    rows = np.unique(np.asarray(rows, np.int64))
    if len(rows) == 0:
        raise InputError(path, "selection", "at least one particle", "none selected")
    ps = load_particles(particles, invert=False)
    if rows.max() >= len(ps):
        raise InputError(particles, "particles", f"more than {rows.max()} particles", len(ps))
    sub = ps.subset(rows)
    (write_star if path.suffix.lower() == ".star" else write_cs)(path, sub)
    write_indices(index_path, rows)
    return path, index_path
