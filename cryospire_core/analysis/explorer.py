"""The latent-space explorer's model (no Qt): a trained run, its latents, a 2D embedding with an
inverse back to latents, maps and part readouts at any latent, traversals, and exports.

The napari dock (:mod:`cryospire_napari._explorer_widget`) is a thin view over this module:
everything here is plain numpy / torch and is tested without a display.

- :class:`Embedding`: particles in 2D (PCA, with the exact inverse 2D -> latent: the other PC
  scores stay 0; or UMAP, whose inverse is the mean latent of the ``k`` particles nearest in 2D).
- :class:`Explorer`: ``map_at(z) -> (D, D, D)`` (decode + rasterise), :meth:`Explorer.frame`
  (map, optional part-label map and the part readout from one decode), per-particle colour
  values, traversals (PC line, straight line, shortest path through the particles' kNN graph).
- Exports: :func:`write_map_series` (``vol_000.mrc ...`` for ChimeraX ``vseries``),
  :func:`write_selection` (.star / .cs subset keeping every original column + index file),
  :func:`branch_run` (a new run that reuses a finished run's stage-1 outputs and trains stage 2
  on a subset). None replaces an existing file unless asked to (``overwrite``), and a branch
  goes only into a new or empty folder (:mod:`cryospire_core.io.outputs`).

Maps are rasterised with :data:`DISPLAY_WINDOW` widths (not the renderer's training default of 5):
each Gaussian is cut at 4 widths, at most 3.4e-4 of its peak, invisible on screen, and it
cuts the rasterisation time (8,192 Gaussians of ~1.5 px, one thread: 50 -> 25 ms at 64^3,
61 -> 47 ms at 128^3). A scatter (index_add) rasteriser was tried and measured 8-16x slower than
the existing windowed-GEMM one, so the explorer uses :func:`render.rasterize` as it is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from cryospire_core.analysis import latentspace as analysis
from cryospire_core.errors import InputError
from cryospire_core.io.atomic import TEMP_GLOB, write_json, write_npy, write_text
from cryospire_core.io.outputs import (
    GUI_REMEDY,
    check_new_outputs,
    check_writable_folder,
    describe,
)

#: Half-window (in widths) of the rasteriser for displayed maps (see the module docstring).
DISPLAY_WINDOW = 4.0

#: Above this many particles, per-particle colour values (presence, displacement of a part) are
#: decoded for a random sample of this size; every other particle takes the value of its nearest
#: sampled particle in latent space (decoding 10^6 particles x G Gaussians would take hours).
COLOUR_SAMPLE = 20_000

#: Particles in the kNN graph of graph traversals (a random sample above this, plus the ends).
GRAPH_SAMPLE = 20_000

COLOUR_KINDS = ("state", "presence", "displacement", "ground truth")


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


@dataclass
class Embedding:
    """Particles in 2D with a way back to latents.

    method: ``pca`` or ``umap``; points: (N, 2) float32; latents: (N, zdim) float32 (the rows
    the points come from); fit: the PCA (for ``pca``); k: neighbours averaged by the UMAP inverse.
    """

    method: str
    points: np.ndarray
    latents: np.ndarray
    fit: analysis.LatentPCA | None = None
    k: int = 16

    def __post_init__(self) -> None:
        self._tree: cKDTree | None = None  # of the 2D points (UMAP inverse), built on first use
        self._latent_tree: cKDTree | None = None  # of the latents (UMAP forward), built on first use

    def to_latent(self, xy: np.ndarray) -> np.ndarray:
        """(M, 2) (or (2,)) embedding coordinates -> (M, zdim) float32 latents.

        PCA: exact inverse with PC3.. at 0 (the mean latent's). UMAP: mean latent of the ``k``
        particles nearest in 2D (UMAP has no inverse; this stays on the data).
        """
        xy = np.atleast_2d(np.asarray(xy, np.float64))
        if self.method == "pca":
            scores = np.zeros((len(xy), self.latents.shape[1]))
            scores[:, : min(2, scores.shape[1])] = xy[:, : scores.shape[1]]
            return self.fit.inverse_transform(scores).astype(np.float32)
        if self._tree is None:
            self._tree = cKDTree(self.points)
        k = min(self.k, len(self.points))
        _, idx = self._tree.query(xy, k=k)
        return self.latents[np.asarray(idx).reshape(len(xy), k)].mean(1).astype(np.float32)

    def from_latent(self, z: np.ndarray) -> np.ndarray:
        """(M, zdim) latents -> (M, 2) embedding coordinates (PCA: exact; UMAP: the mean 2D
        position of the ``k`` particles nearest in latent space)."""
        z = np.atleast_2d(np.asarray(z, np.float64))
        if self.method == "pca":
            s = self.fit.transform(z)
            return np.pad(s, ((0, 0), (0, max(0, 2 - s.shape[1]))))[:, :2].astype(np.float32)
        if self._latent_tree is None:
            self._latent_tree = cKDTree(self.latents)
        _, idx = self._latent_tree.query(z, k=min(self.k, len(self.latents)))
        return self.points[np.asarray(idx).reshape(len(z), -1)].mean(1).astype(np.float32)


def pca_embedding(latents: np.ndarray, fit: analysis.LatentPCA | None = None) -> Embedding:
    """PC1 / PC2 scores of latents (N, zdim) (zdim 1: PC2 is 0)."""
    fit = fit if fit is not None else analysis.pca(latents)
    s = fit.transform(latents)
    points = np.pad(s, ((0, 0), (0, max(0, 2 - s.shape[1]))))[:, :2]
    return Embedding("pca", points.astype(np.float32), np.asarray(latents, np.float32), fit)


def umap_embedding(latents: np.ndarray, seed: int = 0, k: int = 16) -> Embedding:
    """UMAP of latents (N, zdim); the PCA embedding when umap-learn is not installed."""
    points, method = analysis.umap_embedding(latents, seed)
    if method != "umap":
        return pca_embedding(latents)
    return Embedding("umap", np.asarray(points, np.float32), np.asarray(latents, np.float32), None, k)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which of points (N, 2) lie inside the closed polygon (M, 2) (lasso)."""
    from matplotlib.path import Path as MplPath

    polygon = np.asarray(polygon, np.float64)
    if len(polygon) < 3:
        return np.zeros(len(points), bool)
    return MplPath(polygon).contains_points(np.asarray(points, np.float64))


# --------------------------------------------------------------------------------------------
# Part readout
# --------------------------------------------------------------------------------------------


@dataclass
class PartReadout:
    """Each part's motion relative to the consensus (rest) pose at one latent.

    angle_deg: (K,) rotation angle, degrees; translation: (K, 3) Å (x, y, z) of the part's
    centre; presence: (K,) mean amplitude gate of its Gaussians in [0, 1].
    """

    angle_deg: np.ndarray
    translation: np.ndarray
    presence: np.ndarray

    @property
    def shift(self) -> np.ndarray:
        """(K,) |translation|, Å."""
        return np.linalg.norm(self.translation, axis=1)

    def rows(self) -> list[tuple[int, float, float, float]]:
        """(part number from 1, angle deg, shift Å, presence) per part, for tables."""
        return [(k + 1, float(a), float(s), float(p))
                for k, (a, s, p) in enumerate(zip(self.angle_deg, self.shift, self.presence))]


def rigid_fit(rest: np.ndarray, moved: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted least-squares rigid motion rest -> moved (Kabsch): (angle in degrees, translation
    of the weighted centre (3,) Å). rest, moved: (G, 3) Å; weights: (G,) >= 0."""
    w = np.clip(np.asarray(weights, np.float64), 0, None)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
    a0, b0 = w @ rest, w @ moved
    h = ((rest - a0) * w[:, None]).T @ (moved - b0)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    angle = math.degrees(math.acos(float(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))
    return angle, b0 - a0


@dataclass
class Frame:
    """What the viewer shows for one latent z (zdim,): volume (D, D, D) float32; labels
    (D, D, D) int32 (0 solvent, k + 1 part k) or None; readout or None (no parts)."""

    z: np.ndarray
    volume: np.ndarray
    labels: np.ndarray | None
    readout: PartReadout | None


# --------------------------------------------------------------------------------------------
# The explorer
# --------------------------------------------------------------------------------------------


class Explorer:
    """A trained model and its particles' latents.

    model: a PartAwareModel (stage 2) or PartDiscoveryModel (stage 1), eval mode; latents:
    (N, zdim) float32, one row per explored particle; part_index: (G,) part of each Gaussian or
    None; root: the run folder (None for a model built in memory); particles: the input particle
    file the run was trained on (None when unknown); selection: (N,) indices of the explored
    particles into that file (None: all of it, in order); gt_labels: (N,) ground-truth state
    of each explored particle (simulations) or None; gt_dir: the ground-truth folder.
    """

    def __init__(self, model: torch.nn.Module, latents: np.ndarray, part_index: np.ndarray | None = None,
                 root: Path | None = None, particles: Path | None = None, selection: np.ndarray | None = None,
                 gt_labels: np.ndarray | None = None, gt_dir: Path | None = None) -> None:
        self.model = model.eval()
        self.latents = np.asarray(latents, np.float32)
        self.part_index = None if part_index is None else np.asarray(part_index, np.int64)
        self.root, self.particles, self.selection = root, particles, selection
        self.gt_labels, self.gt_dir = gt_labels, gt_dir
        self.stage = "hierarchical" if hasattr(model, "part_motions") else "discovery"
        self.box, self.apix = int(model.box), float(model.apix)
        with torch.no_grad():
            self._widths = model.widths.detach().clone()
            self._rest = (model.centres if self.stage == "hierarchical" else model.base.centres).detach().numpy().copy()
        self._pca: analysis.LatentPCA | None = None
        self._states: dict[int, np.ndarray] = {}
        self._bf16_faster: bool | None = None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike) -> Explorer:
        """The most advanced model of a run folder, its latents (RUN/latents.npy), its parts, and
        where its particles and (for simulations) ground truth are."""
        from cryospire_core.io.arrays import read_npy
        from cryospire_core.models.parts import PartClustering
        from cryospire_core.pipeline.runfolder import RunFolder
        from cryospire_core.pipeline.train import check_run_latents, load_trained_model

        root = Path(run_dir)
        model = load_trained_model(root)
        latents = analysis.load_latents(root)
        check_run_latents(model, latents, root / "latents.npy")
        part_index = None
        if hasattr(model, "part_motions"):
            part_index = model.part_index.numpy()
        elif (root / "parts" / "clustering.npz").is_file():
            part_index = PartClustering.from_npz(root / "parts" / "clustering.npz").part_index
        selection = None
        if hasattr(model, "part_motions") and (root / "selection.npy").is_file():
            selection = read_npy(root / "selection.npy", "selection")
            if selection.shape != (len(latents),) or selection.dtype.kind not in "iu" or selection.min() < 0:
                raise InputError(root / "selection.npy", "selection", f"({len(latents)},) particle indices (one per "
                                 "latent of stage 2)", f"{selection.dtype} array of shape {selection.shape}")
        particles = _particles_path(root, RunFolder(root).read_config())
        gt_labels, gt_dir = _ground_truth_labels(particles, selection, len(latents))
        return cls(model, latents, part_index, root, particles, selection, gt_labels, gt_dir)

    # -- sizes --------------------------------------------------------------------------------

    @property
    def n_particles(self) -> int:
        return len(self.latents)

    @property
    def zdim(self) -> int:
        return self.latents.shape[1]

    @property
    def n_parts(self) -> int:
        return 0 if self.part_index is None else int(self.part_index.max()) + 1

    # -- embeddings and states ---------------------------------------------------------------------

    @property
    def pca(self) -> analysis.LatentPCA:
        if self._pca is None:
            self._pca = analysis.pca(self.latents)
        return self._pca

    def embedding(self, method: str = "pca", seed: int = 0) -> Embedding:
        """The particles in 2D: ``pca`` (instant) or ``umap`` (slow: call it in a worker)."""
        if method == "pca":
            return pca_embedding(self.latents, self.pca)
        if method == "umap":
            return umap_embedding(self.latents, seed)
        raise ValueError(f"embedding: method must be 'pca' or 'umap', got {method!r}")

    def states(self, k: int, seed: int = 0) -> np.ndarray:
        """(N,) k-means state of each particle (cached per k)."""
        if k not in self._states:
            self._states[k] = analysis.kmeans_states(self.latents, k, seed)[0]
        return self._states[k]

    # -- decoding -------------------------------------------------------------------------------

    def _decode(self, z: torch.Tensor):
        """z (B, zdim) -> centres (B, G, 3) Å, amplitudes (B, G), gates (B, G), stage-2 part
        motions (rotvec, translation) or None."""
        m = self.model
        if self.stage == "hierarchical":
            centres, amps, motions = m.decode(z)
            return centres, amps, amps / m.offsets.amplitudes, motions
        gates = m.gates(z)
        return m.base.centres[None] + m.shifts(z), gates * m.base.amplitudes, gates, None

    def map_at(self, z: np.ndarray) -> np.ndarray:
        """The map (D, D, D) float32 at latent z (zdim,)."""
        return self.frame(z, labels=False, readout=False).volume

    def frame(self, z: np.ndarray, labels: bool = False, readout: bool = True, live: bool = False) -> Frame:
        """Map, part-label map (when ``labels`` and the run has parts) and part readout (when
        ``readout`` and the run has parts) at latent z (zdim,), from one decode.

        live: for display while the cursor moves: the networks run in bfloat16 when that decodes
        faster on this CPU (measured once; about 3x on CPUs with AVX512-BF16 or AMX), which
        changes a map by well under 1% of its peak. Exports leave it off."""
        from cryospire_core.imaging.render import rasterize

        z = np.asarray(z, np.float32).reshape(-1)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=live and self.live_precision() == "bf16"):
            centres, amps, gates, motions = self._decode(torch.as_tensor(z)[None])
            c, m = centres[0], amps[0]
            vol = rasterize(c, self._widths, m, self.box, self.apix, window=DISPLAY_WINDOW).numpy()
            has_parts = self.part_index is not None
            lab = self._labels(c, m, vol) if labels and has_parts else None
            out = self._readout(c.numpy(), m.numpy(), gates[0].numpy(), motions) if readout and has_parts else None
        return Frame(z, vol, lab, out)

    def live_precision(self) -> str:
        """``bf16`` when the networks decode faster in bfloat16 than in float32 on this CPU (timed
        once), else ``fp32``: the precision of :meth:`frame` with ``live``."""
        if self._bf16_faster is None:
            z = torch.as_tensor(self.latents[:1])

            def best_ms(bf16: bool) -> float:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    self._decode(z)  # warm-up: kernel selection, weight casts
                    times = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        self._decode(z)
                        times.append(time.perf_counter() - t0)
                return min(times)

            self._bf16_faster = best_ms(True) < 0.8 * best_ms(False)
        return "bf16" if self._bf16_faster else "fp32"

    def _labels(self, centres: torch.Tensor, amps: torch.Tensor, total: np.ndarray) -> np.ndarray:
        """(D, D, D) int32: :func:`parts.part_label_volume` of the decoded mixture, solvent below
        the molecule/solvent threshold of ``total`` (the frame's map)."""
        from cryospire_core.models.consensus import density_threshold
        from cryospire_core.models.parts import part_label_volume

        try:
            level = density_threshold(total)
        except ValueError:  # no molecule/solvent split to find (e.g. an empty map)
            level = 0.5 * float(total.max())
        return part_label_volume(centres.numpy(), self._widths.numpy(), amps.numpy(), self.part_index, self.box,
                                 self.apix, threshold=level, window=DISPLAY_WINDOW)

    def _readout(self, centres: np.ndarray, amps: np.ndarray, gates: np.ndarray, motions) -> PartReadout:
        K, pi = self.n_parts, self.part_index
        count = np.bincount(pi, minlength=K).clip(min=1)
        presence = np.bincount(pi, weights=gates, minlength=K) / count
        if motions is not None:  # stage 2: the anchor MLP's rigid motion of each part
            rotvec, trans = (x[0].numpy().astype(np.float64) for x in motions)
            return PartReadout(np.degrees(np.linalg.norm(rotvec, axis=1)), trans, presence)
        # Stage 1 has no rigid parts: the best rigid fit of each part's Gaussians.
        angle, trans = np.zeros(K), np.zeros((K, 3))
        weights = np.abs(amps) * self._widths.numpy() ** 3
        for k in range(K):
            sel = pi == k
            if sel.sum() >= 3:
                angle[k], trans[k] = rigid_fit(self._rest[sel], centres[sel], weights[sel])
        return PartReadout(angle, trans, presence)

    def readouts(self, zs: np.ndarray) -> list[PartReadout]:
        """The part readout at each of the latents zs (T, zdim) (no rasterisation)."""
        if self.part_index is None:
            return []
        out = []
        with torch.no_grad():
            for z in np.asarray(zs, np.float32):
                centres, amps, gates, motions = self._decode(torch.as_tensor(z)[None])
                out.append(self._readout(centres[0].numpy(), amps[0].numpy(), gates[0].numpy(), motions))
        return out

    # -- per-particle colours ------------------------------------------------------------------

    def colour_values(self, kind: str, part: int = 0, k: int = 8, seed: int = 0) -> np.ndarray:
        """(N,) float32 value of each particle to colour the scatter by.

        kind: ``state`` (k-means state of k), ``presence`` / ``displacement`` of part ``part``
        (0-based; displacement = rotation-aware RMS shift of its Gaussians, Å), or
        ``ground truth`` (the simulated state). See :data:`COLOUR_SAMPLE` for large N.
        """
        if kind == "state":
            return self.states(k, seed).astype(np.float32)
        if kind == "ground truth":
            if self.gt_labels is None:
                raise ValueError("this run has no ground-truth labels")
            return self.gt_labels.astype(np.float32)
        if kind not in ("presence", "displacement"):
            raise ValueError(f"colour_values: kind must be one of {COLOUR_KINDS}, got {kind!r}")
        if self.part_index is None or not 0 <= part < self.n_parts:
            raise ValueError(f"colour_values: part must be in 0..{self.n_parts - 1}")
        rng = np.random.default_rng(seed)
        n = self.n_particles
        sample = np.arange(n) if n <= COLOUR_SAMPLE else np.sort(rng.choice(n, COLOUR_SAMPLE, replace=False))
        sel = torch.as_tensor(self.part_index == part)
        rest = torch.as_tensor(self._rest)[sel]
        values = np.empty(len(sample), np.float32)
        with torch.no_grad():
            for start in range(0, len(sample), 64):
                z = torch.as_tensor(self.latents[sample[start:start + 64]])
                centres, _, gates, _ = self._decode(z)
                if kind == "presence":
                    v = gates[:, sel].mean(1)
                else:
                    v = (centres[:, sel] - rest).pow(2).sum(-1).mean(1).sqrt()
                values[start:start + len(z)] = v.numpy()
        if len(sample) == n:
            return values
        _, nearest = cKDTree(self.latents[sample]).query(self.latents, k=1)
        return values[nearest]

    # -- traversals -------------------------------------------------------------------------------

    def pc_traversal(self, pc: int = 1, n_steps: int = 20) -> np.ndarray:
        """(n_steps, zdim) latents along PC ``pc`` (5th to 95th percentile of the particles)."""
        return analysis.traversal(self.latents, pc, n_steps, fit=self.pca).astype(np.float32)

    def graph_traversal(self, z0: np.ndarray, z1: np.ndarray, n_steps: int = 20, k: int = 10, seed: int = 0) -> np.ndarray:
        """See :func:`graph_traversal` (over this explorer's latents)."""
        return graph_traversal(self.latents, z0, z1, n_steps, k, seed)


def line_traversal(z0: np.ndarray, z1: np.ndarray, n_steps: int = 20) -> np.ndarray:
    """(n_steps, zdim) latents evenly spaced on the straight line from z0 to z1 (ends included)."""
    t = np.linspace(0.0, 1.0, int(n_steps))[:, None]
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    return ((1 - t) * z0 + t * z1).astype(np.float32)


def knn_graph(latents: np.ndarray, k: int = 10) -> csr_matrix:
    """Symmetric kNN graph (N, N) of latents, edge weights = Euclidean distances."""
    x = np.asarray(latents, np.float64)
    k = min(int(k), len(x) - 1)
    dist, idx = cKDTree(x).query(x, k=k + 1)
    rows = np.repeat(np.arange(len(x)), k)
    g = csr_matrix((dist[:, 1:].reshape(-1) + 1e-12, (rows, idx[:, 1:].reshape(-1))), shape=(len(x), len(x)))
    return g.maximum(g.T).tocsr()


def graph_path(latents: np.ndarray, i0: int, i1: int, k: int = 10) -> np.ndarray:
    """Particle indices (P,) of the shortest path from particle i0 to i1 through the kNN graph
    (ValueError when they lie in different connected components)."""
    graph = knn_graph(latents, k)
    dist, pred = dijkstra(graph, directed=False, indices=int(i0), return_predecessors=True)
    if not np.isfinite(dist[int(i1)]):
        raise ValueError(f"no path through the {k}-nearest-neighbour graph between particles {i0} and {i1}: "
                         "they lie in separate clusters (use a straight traversal or a larger k)")
    path = [int(i1)]
    while path[-1] != int(i0):
        path.append(int(pred[path[-1]]))
    return np.array(path[::-1], np.int64)


def graph_traversal(latents: np.ndarray, z0: np.ndarray, z1: np.ndarray, n_steps: int = 20, k: int = 10,
                    seed: int = 0) -> np.ndarray:
    """(n_steps, zdim) latents from z0 to z1 following the data: the shortest path through the
    kNN graph of the particles (a random sample of :data:`GRAPH_SAMPLE` above that) from the
    particle nearest z0 to the one nearest z1, resampled evenly by arc length; the ends are z0
    and z1 themselves."""
    x = np.asarray(latents, np.float32)
    i0 = int(analysis.nearest_particles(x, z0, 1)[0])
    i1 = int(analysis.nearest_particles(x, z1, 1)[0])
    if len(x) > GRAPH_SAMPLE:
        rng = np.random.default_rng(seed)
        keep = np.unique(np.concatenate([rng.choice(len(x), GRAPH_SAMPLE, replace=False), [i0, i1]]))
        x, i0, i1 = x[keep], int(np.searchsorted(keep, i0)), int(np.searchsorted(keep, i1))
    pts = np.concatenate([np.asarray(z0, np.float64)[None], x[graph_path(x, i0, i1, k)], np.asarray(z1, np.float64)[None]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    if arc[-1] == 0:
        return np.repeat(pts[:1], n_steps, axis=0).astype(np.float32)
    t = np.linspace(0.0, arc[-1], int(n_steps))
    return np.stack([np.interp(t, arc, pts[:, d]) for d in range(pts.shape[1])], axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------------


def box_origin(box: int, apix: float) -> tuple[float, float, float]:
    """MRC header origin (x, y, z) Å putting voxel i at (i - D // 2) * apix (our lattice), so
    maps written by us open in ChimeraX at the same place as the run's other maps."""
    o = -(int(box) // 2) * float(apix)
    return (o, o, o)


def check_map_series(folder: str | os.PathLike, n: int, latents: bool = False, readouts: bool = False,
                     overwrite: bool = False) -> list[Path]:
    """Every file :func:`write_map_series` writes for ``n`` maps (the ``n`` maps first, then
    latents.npy and parts.csv when asked for, then README.txt), after refusing (InputError) to
    replace any existing one unless ``overwrite``: a GUI calls it before computing the maps."""
    folder = Path(folder)
    extra = [name for name, wanted in (("latents.npy", latents), ("parts.csv", readouts)) if wanted]
    paths = [folder / f"vol_{i:03d}.mrc" for i in range(n)] + [folder / name for name in (*extra, "README.txt")]
    check_new_outputs(paths, overwrite, "map series", remedy=GUI_REMEDY)
    return paths


def write_map_series(folder: str | os.PathLike, volumes: Sequence[np.ndarray], apix: float,
                     latents: np.ndarray | None = None, readouts: Sequence[PartReadout] | None = None,
                     overwrite: bool = False) -> list[Path]:
    """Write maps as ``folder/vol_000.mrc, vol_001.mrc, ...`` (voxel size ``apix``, origin of
    :func:`box_origin`), plus ``latents.npy`` and ``parts.csv`` (step, part, angle, shift,
    presence) when given, and ``README.txt`` with the ChimeraX command
    ``open folder/vol_*.mrc vseries true``. Refuses (InputError, nothing written) to replace any
    existing file unless ``overwrite``. Returns the map paths."""
    from cryospire_core.io.mrc import write_map

    folder = Path(folder)
    paths = check_map_series(folder, len(volumes), latents is not None, bool(readouts), overwrite)[:len(volumes)]
    folder.mkdir(parents=True, exist_ok=True)
    for path, vol in zip(paths, volumes):
        write_map(path, vol, apix, origin=box_origin(np.shape(vol)[0], apix))
    if latents is not None:
        write_npy(folder / "latents.npy", np.asarray(latents, np.float32))
    if readouts:
        lines = ["step,part,angle_deg,tx_A,ty_A,tz_A,shift_A,presence"]
        for s, r in enumerate(readouts):
            for k in range(len(r.angle_deg)):
                t = r.translation[k]
                lines.append(f"{s},{k + 1},{r.angle_deg[k]:.4f},{t[0]:.4f},{t[1]:.4f},{t[2]:.4f},"
                             f"{r.shift[k]:.4f},{r.presence[k]:.4f}")
        write_text(folder / "parts.csv", "\n".join(lines) + "\n")
    write_text(folder / "README.txt", f"{len(paths)} maps of a cryospire traversal. In ChimeraX:\n"
               f"  open {folder}/vol_*.mrc vseries true\n")
    return paths


def write_movie(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 10.0) -> Path:
    """Write RGB(A) frames (H, W, 3|4) uint8 as an animated GIF (imageio; looping). An mp4 would
    need ffmpeg, which is not a dependency."""
    import imageio.v3 as iio

    from cryospire_core.io.atomic import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise InputError(path, "movie", "a .gif file name", path.suffix or "no suffix")
    rgb = [np.asarray(f)[..., :3].astype(np.uint8) for f in frames]
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.stack(rgb), extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def write_selection(path: str | os.PathLike, rows: np.ndarray, particles: str | os.PathLike,
                    overwrite: bool = False) -> tuple[Path, Path]:
    """Write the particles ``rows`` (0-based indices into the particle file ``particles``) as a
    subset in the format of ``path``'s suffix (.star or .cs): every original column kept, image
    paths pointing at the original stacks. Also writes ``<path stem>_indices.txt`` (one index per
    line, what ``cryospire train --select`` reads). Refuses (InputError, nothing written) to
    replace either file unless ``overwrite``. Returns (subset path, index path)."""
    from cryospire_core.io.cryosparc import write_cs
    from cryospire_core.io.load import load_particles
    from cryospire_core.io.star import write_star

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".star", ".cs"):
        raise InputError(path, "selection file", "a .star or .cs file name", path.suffix or "no suffix")
    rows = np.unique(np.asarray(rows, np.int64))
    if len(rows) == 0:
        raise InputError(path, "selection", "at least one particle", "none selected")
    index_path = path.with_name(path.stem + "_indices.txt")
    check_new_outputs([path, index_path], overwrite, "selection file", remedy="another file name")
    ps = load_particles(particles, invert=False)
    if rows.max() >= len(ps):
        raise InputError(particles, "particles", f"more than {rows.max()} particles", len(ps))
    sub = ps.subset(rows)
    (write_star if suffix == ".star" else write_cs)(path, sub)
    write_text(index_path, "\n".join(str(int(i)) for i in rows) + "\n")
    return path, index_path


def check_new_run_folder(dest: str | os.PathLike) -> None:
    """InputError unless ``dest`` is a new or empty real folder we can write into (a branch's)."""
    dst = Path(dest)
    if dst.is_symlink() or (os.path.lexists(dst) and not dst.is_dir()):
        raise InputError(dst, "new run folder", "an empty or new folder", describe(dst))
    if dst.exists() and any(dst.iterdir()):
        raise InputError(dst, "new run folder", "an empty or new folder", "a folder with files")
    check_writable_folder(dst, "new run folder")


def branch_run(source: str | os.PathLike, dest: str | os.PathLike, select: str | os.PathLike) -> Path:
    """A new run folder ``dest`` that reuses ``source``'s consensus, stage-1 and parts outputs and
    will train stage 2 on the particles listed in ``select`` (``cryospire train --resume`` or the
    explorer's "continue training" then runs only stage 2). For a run whose stage 2 has started,
    where ``--select`` is refused. Returns dest."""
    from cryospire_core.pipeline.runfolder import RunFolder

    src, dst = Path(source), Path(dest)
    check_new_run_folder(dst)
    for stage in ("consensus", "discovery", "parts"):
        if not (src / stage).is_dir():
            raise InputError(src / stage, "stage folder", "a run whose part discovery is finished", "missing")
    dst.mkdir(parents=True, exist_ok=True)
    for stage in ("consensus", "discovery", "parts"):
        shutil.copytree(src / stage, dst / stage, ignore=shutil.ignore_patterns("checkpoint.pt", TEMP_GLOB))
    saved = json.loads((src / "config.json").read_text())
    saved["train"]["select"] = str(Path(select).resolve())
    saved["branched_from"] = str(src.resolve())
    write_json(dst / "config.json", saved)
    RunFolder(dst).read_config()  # the copy is a valid run
    return dst


# --------------------------------------------------------------------------------------------
# Where a run's particles and ground truth are
# --------------------------------------------------------------------------------------------


def _particles_path(root: Path, cfg: dict) -> Path | None:
    """The particle file the run was trained on (from RUN/config.json), if it still exists."""
    command = cfg.get("train_command") or {}
    name = command.get("particles")
    if not name:
        return None
    for candidate in (Path(name), root / name, root.parent / name):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _ground_truth_labels(particles: Path | None, selection: np.ndarray | None, n: int) -> tuple[np.ndarray | None, Path | None]:
    """A simulation's per-image states (``<particles folder>/gt/labels.npy``, as written by
    ``cryospire simulate``) for the explored particles, or (None, None)."""
    if particles is None:
        return None, None
    gt = particles.parent / "gt"
    if not (gt / "labels.npy").is_file():
        return None, None
    try:  # optional colouring: a damaged or foreign labels.npy is ignored, not an error
        labels = np.load(gt / "labels.npy", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None, None
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
        return None, None
    if selection is not None:
        labels = labels[selection] if selection.max() < len(labels) else labels[:0]
    return (labels.astype(np.int64), gt) if len(labels) == n else (None, None)
