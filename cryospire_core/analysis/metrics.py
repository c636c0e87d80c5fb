"""Map quality: Fourier shell correlation and the CryoBench per-conformation protocol.

FSC (CryoBench / cryoDRGN definition): both maps are multiplied by the mask, transformed with a
centred 3D FFT, and correlated over shells of radius [i - 1, i) Fourier pixels for
i = 1 .. D/2 - 1, reported at frequency i / D cycles/pixel, after FSC = 1 at frequency 0: D/2
points in all. AUC is the trapezoid rule over that curve; its maximum is (D/2 - 1) / D.

Per-conformation protocol: for each ground-truth state, the image latent nearest to the mean
latent of the state's images is rendered and scored against that state's ground-truth map.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cryospire_core.errors import InputError
from cryospire_core.imaging import fourier
from cryospire_core.imaging.fsc import (
    auc,
    freq_to_angstrom,
    freq_to_pixels,
    fsc,
    resolution,
)
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.atomic import write_json
from cryospire_core.io.mrc import read_map


class MapSequence(Protocol):
    """Ground-truth maps, loaded on demand: ``len()`` states, ``[k]`` -> (D, D, D) array."""

    def __len__(self) -> int: ...

    def __getitem__(self, k: int) -> np.ndarray: ...


@dataclass
class StateScore:
    """One state's score: AUC and resolutions (cycles/pixel) of its FSC vs ground truth.

    image: index of the image whose latent was rendered (None when a map was given directly).
    """

    state: int
    auc: float
    res_05: float
    res_0143: float
    image: int | None = None
    curve: list[float] = field(default_factory=list)


@dataclass
class ScoreTable:
    """Scores over states, with a title saying what was scored; apix (Å) for Å columns."""

    title: str
    states: list[StateScore]
    apix: float | None = None
    freqs: list[float] = field(default_factory=list)

    def aucs(self) -> np.ndarray:
        return np.array([s.auc for s in self.states])

    def summary(self) -> dict[str, float | int]:
        a = self.aucs()
        return {"mean_auc": float(a.mean()), "std_auc": float(a.std()), "median_auc": float(np.median(a)),
                "n_states": len(a)}

    def to_dict(self) -> dict:
        return {"title": self.title, "apix": self.apix, "summary": self.summary(), "freqs": self.freqs,
                "states": [asdict(s) for s in self.states]}

    def save_json(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    def format(self, max_rows: int | None = None) -> str:
        """A plain-text table: one row per state (resolution in px, and Å when apix is known),
        then the summary."""
        head = ["state", "image", "AUC", "res@0.5 px", "res@0.143 px"]
        if self.apix:
            head += ["res@0.5 Å", "res@0.143 Å"]
        rows = []
        for s in self.states[: len(self.states) if max_rows is None else max_rows]:
            row = [str(s.state), "-" if s.image is None else str(s.image), f"{s.auc:.4f}",
                   f"{freq_to_pixels(s.res_05):.2f}", f"{freq_to_pixels(s.res_0143):.2f}"]
            if self.apix:
                row += [f"{freq_to_angstrom(r, self.apix):.2f}" for r in (s.res_05, s.res_0143)]
            rows.append(row)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = [self.title, "  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
        if max_rows is not None and len(self.states) > max_rows:
            lines.append(f"... ({len(self.states) - max_rows} more states)")
        s = self.summary()
        lines.append(f"AUC mean {s['mean_auc']:.4f}  std {s['std_auc']:.4f}  median {s['median_auc']:.4f}  "
                     f"({s['n_states']} states)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def score_states(
    pairs: Iterable[tuple[int, np.ndarray, np.ndarray, int | None]],
    mask: np.ndarray | None,
    title: str,
    apix: float | None = None,
) -> ScoreTable:
    """Score (state, map, ground truth, image index or None) tuples into a :class:`ScoreTable`."""
    states = []
    freqs = None
    for state, vol, gt, image in pairs:
        freqs, curve = fsc(vol, gt, mask)
        states.append(StateScore(int(state), auc(freqs, curve), resolution(freqs, curve, 0.5),
                                 resolution(freqs, curve, 0.143), image, [float(c) for c in curve]))
    return ScoreTable(title, states, apix, [] if freqs is None else [float(f) for f in freqs])


def representative_images(latents: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """For each state present in ``labels``: the index of the image whose latent is nearest
    (Euclidean) to the mean latent of that state's images. latents: (N, z); labels: (N,) int."""
    latents = np.asarray(latents, dtype=np.float64).reshape(len(labels), -1)
    labels = np.asarray(labels)
    out = {}
    for k in np.unique(labels):
        members = np.nonzero(labels == k)[0]
        z = latents[members]
        out[int(k)] = int(members[np.argmin(((z - z.mean(0)) ** 2).sum(1))])
    return out


def per_conformation(
    latents: np.ndarray,
    labels: np.ndarray,
    gt_maps: MapSequence | np.ndarray,
    render: Callable[[np.ndarray], np.ndarray],
    mask: np.ndarray | None = None,
    apix: float | None = None,
    title: str = "per-conformation FSC",
) -> ScoreTable:
    """CryoBench per-conformation scores.

    latents: (N, z) per image; labels: (N,) ground-truth state per image (indexes ``gt_maps``);
    gt_maps: (K, D, D, D) or a lazy sequence; render(z: (z,)) -> (D, D, D) map on the
    ground-truth lattice; mask: (D, D, D) evaluation mask.
    """
    reps = representative_images(latents, labels)
    latents = np.asarray(latents).reshape(len(labels), -1)
    pairs = ((k, render(latents[i]), gt_maps[k], i) for k, i in reps.items())
    return score_states(pairs, mask, title, apix)


def homogeneous_floor(vol: np.ndarray, gt_maps: MapSequence | np.ndarray, mask: np.ndarray | None = None,
                      apix: float | None = None, title: str = "homogeneous floor") -> ScoreTable:
    """One map (e.g. a consensus) scored against every ground-truth state."""
    return score_states(((k, vol, gt_maps[k], None) for k in range(len(gt_maps))), mask, title, apix)


def population_mean(gt_maps: MapSequence | np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(D, D, D) float64: the noise-free population-mean map, each state's ground-truth map
    weighted by its share of the images (``labels``: (N,) state per image). The best a single
    homogeneous map can do on average: the "ideal homogeneous" line."""
    counts = np.bincount(np.asarray(labels), minlength=len(gt_maps))
    total = None
    for k in np.flatnonzero(counts):
        part = np.asarray(gt_maps[k], dtype=np.float64) * (counts[k] / counts.sum())
        total = part if total is None else total + part
    return total


def ceiling(gt_maps: MapSequence | np.ndarray, mask: np.ndarray | None = None, apix: float | None = None) -> ScoreTable:
    """Every ground-truth state scored against itself: the best any method can reach."""
    return score_states(((k, gt_maps[k], gt_maps[k], None) for k in range(len(gt_maps))), mask, "ceiling", apix)


def natural_key(path: Path) -> list:
    """Sort key putting ``state_2`` before ``state_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


@dataclass
class GroundTruth:
    """A simulation's ``gt/`` folder, maps read on demand (``len()``, ``[k]`` -> (D, D, D)).

    map_paths: ``vol_###.mrc`` in state order; mask: (D, D, D) float32 or None; labels: (N,)
    int state per image or None; lattice: the first map's.
    """

    folder: Path
    map_paths: list[Path]
    mask: np.ndarray | None
    labels: np.ndarray | None
    lattice: Lattice

    def __len__(self) -> int:
        return len(self.map_paths)

    def __getitem__(self, k: int) -> np.ndarray:
        return read_grid_map(self.map_paths[k], self.lattice).data


def read_grid_map(path: str | os.PathLike, lattice: Lattice, resample: bool = False):
    """Read a map and check it is on ``lattice`` (the ground truth's; InputError if not). With
    ``resample``, a cubic map of another box over the same field of view (a stage trained at a
    smaller box) is first resampled onto ``lattice`` in Fourier space (zero above its own
    Nyquist frequency, so it scores what it holds)."""
    m = read_map(path)
    fov = m.data.shape[0] * m.apix
    if resample and m.data.shape != lattice.shape and m.data.ndim == 3 and len(set(m.data.shape)) == 1 \
            and np.isclose(fov, lattice.box * lattice.apix, rtol=1e-3) and m.data.shape[0] % 2 == 0:
        data = fourier.resample(torch.tensor(m.data, dtype=torch.float32), lattice.box, ndim=3).numpy()
        m = replace(m, data=data, apix=lattice.apix)
    if m.data.shape != lattice.shape:
        raise InputError(path, "map dimensions", f"{lattice.box}^3 like the ground truth", m.data.shape)
    if not np.isclose(m.apix, lattice.apix, rtol=1e-3):
        raise InputError(path, "voxel size", f"{lattice.apix:.4g} Å like the ground truth", f"{m.apix:.4g} Å")
    if Path(path).name != "mask.mrc" and np.ptp(m.data) == 0:  # an FSC of it is 0/0 at every shell
        raise InputError(path, "map values", "a map whose voxels vary", f"every voxel {float(m.data.flat[0]):g}")
    return m


def _read_labels(path: Path, n_states: int) -> np.ndarray:
    """gt/labels.npy: (N,) whole numbers in 0..n_states-1 (InputError naming it otherwise)."""
    expected = f"(N,) integers in 0..{n_states - 1}"
    try:
        labels = np.load(path, allow_pickle=False)
    except ValueError as exc:
        with open(path, "rb") as f:
            head = f.read(6)
        found = (f"a file starting with {head!r}" if head != b"\x93NUMPY"
                 else "pickled Python objects" if "pickle" in str(exc) else f"a damaged file ({exc})")
        raise InputError(path, "labels", f"an .npy array of {expected}", found) from exc
    except (OSError, EOFError) as exc:
        raise InputError(path, "labels", f"an .npy array of {expected}",
                         f"a damaged or truncated file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(labels, np.ndarray):
        raise InputError(path, "labels", f"an .npy array of {expected}", "an .npz archive")
    in_range = labels.ndim == 1 and (len(labels) == 0 or 0 <= labels.min() <= labels.max() < n_states)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or not in_range:
        raise InputError(path, "labels", expected, f"{labels.dtype} {labels.shape}")
    return labels


def load_ground_truth(folder: str | os.PathLike) -> GroundTruth:
    """Open a ground-truth folder: ``vol_###.mrc`` (one per state, required), ``mask.mrc`` and
    ``labels.npy`` (each optional)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "--gt", "a ground-truth folder (a simulation's gt/)", "no such folder")
    paths = sorted(folder.glob("vol_*.mrc"), key=natural_key)
    if not paths:
        raise InputError(folder, "ground-truth maps", "vol_000.mrc, vol_001.mrc, ... (one per state)", "none")
    numbers = [re.fullmatch(r"vol_(\d+)", p.stem) for p in paths]
    for k, (p, match) in enumerate(zip(paths, numbers)):
        if match is None or int(match.group(1)) != k:  # labels.npy counts states in this order
            raise InputError(p, "ground-truth maps", f"vol_000.mrc, vol_001.mrc, ... numbered from 0 without gaps "
                             f"(state {k} here)", p.name)
    lattice = read_map(paths[0]).lattice
    mask = None
    if (folder / "mask.mrc").exists():
        mask = read_grid_map(folder / "mask.mrc", lattice).data
        if not np.any(mask > 0):
            raise InputError(folder / "mask.mrc", "mask values", "some voxels > 0 (the region scored)",
                             f"none (max {float(mask.max()):g})")
    labels = _read_labels(folder / "labels.npy", len(paths)) if (folder / "labels.npy").exists() else None
    return GroundTruth(folder, paths, mask, labels, lattice)
