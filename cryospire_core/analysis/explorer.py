"""The latent-space explorer's model (no Qt): a trained run, its latents, a 2D embedding with an
inverse back to latents, maps and part readouts at any latent, and traversals.

The napari dock (:mod:`cryospire_napari._explorer_widget`) is a thin view over this module and
the session state of :mod:`cryospire_core.analysis.session`: everything here is plain numpy /
torch and is tested without a display. Logic keys are enums (:class:`EmbeddingMethod`,
:class:`ColourMode`, :class:`TraversalKind`); the dock maps its labels to them.

- :class:`Embedding`: particles in 2D (PCA, with the exact inverse 2D -> latent: the other PC
  scores stay 0; or UMAP, whose inverse is the mean latent of the ``k`` particles nearest in 2D).
- :class:`Explorer`: ``map_at(z) -> (B, B, B)`` (decode + rasterise), :meth:`Explorer.frame`
  (map, optional part-label map and the part readout from one decode), each on the model's
  lattice or any other of the same field of view (the map box B: :meth:`Explorer.map_lattice`;
  the Gaussians are in Å, so a model trained at 64 px shows at 256^3), per-particle colour
  values, k-means states, traversals (PC line, straight line, shortest path through the
  particles' kNN graph) with the part readout along them, and which particle of the run's
  particle file each explored particle is. The explorer session and the services share these.

What a user does with them (export a traversal, write a selection, train stage 2 on it) is in
:mod:`cryospire_core.services`, which the dock and the command line both call.

Maps are rasterised with :data:`DISPLAY_WINDOW` widths (not the renderer's training default of 5):
each Gaussian is cut at 4 widths, at most 3.4e-4 of its peak, invisible on screen, and it
cuts the rasterisation time (8,192 Gaussians of ~1.5 px, one thread: 50 -> 25 ms at 64^3,
61 -> 47 ms at 128^3). A scatter (index_add) rasteriser was tried and measured 8-16x slower than
the existing windowed-GEMM one, so the explorer uses :func:`render.rasterize` as it is.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from cryospire_core.analysis import latentspace as analysis
from cryospire_core.errors import InputError
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.atomic import write_npz
from cryospire_core.models.stage import StageModel
from cryospire_core.ranges import BOX

#: Half-window (in widths) of the rasteriser for displayed maps (see the module docstring).
DISPLAY_WINDOW = 4.0

#: Map boxes the explorer offers besides the model's own (samples per side; same field of view).
MAP_BOXES = (64, 128, 256)

#: The smallest map box the explorer offers: below it a map shows too little to judge.
MIN_MAP_BOX = 32

#: Above this many particles, per-particle colour values (presence, displacement of a part) are
#: decoded for a random sample of this size; every other particle takes the value of its nearest
#: sampled particle in latent space (decoding 10^6 particles x G Gaussians would take hours).
COLOUR_SAMPLE = 20_000

#: Particles in the kNN graph of graph traversals (a random sample above this, plus the ends).
GRAPH_SAMPLE = 20_000


class EmbeddingMethod(StrEnum):
    """How the particles are laid out in 2D (see :class:`Embedding`)."""

    PCA = "pca"
    UMAP = "umap"


class ColourMode(StrEnum):
    """What each particle's point is coloured by (see :meth:`Explorer.colour_values`)."""

    STATE = "state"
    PRESENCE = "presence"
    DISPLACEMENT = "displacement"
    GROUND_TRUTH = "ground truth"

    @property
    def of_a_part(self) -> bool:
        """A value of one part (the run needs parts)."""
        return self in (ColourMode.PRESENCE, ColourMode.DISPLACEMENT)


class TraversalKind(StrEnum):
    """Where a traversal goes (see :meth:`Explorer.traversal`): along PC1 or PC2, or from one
    latent to another on a straight line or through the data (the kNN graph's shortest path)."""

    PC1 = "pc1"
    PC2 = "pc2"
    LINE = "line"
    GRAPH = "graph"

    @property
    def between_ends(self) -> bool:
        """Goes from one given latent to another (not along a PC)."""
        return self in (TraversalKind.LINE, TraversalKind.GRAPH)


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


@dataclass
class Embedding:
    """Particles in 2D with a way back to latents.

    method: PCA or UMAP; points: (N, 2) float32; latents: (N, zdim) float32 (the rows
    the points come from); fit: the PCA (for ``pca``); k: neighbours averaged by the UMAP inverse.
    """

    method: EmbeddingMethod
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
        if self.method == EmbeddingMethod.PCA:
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
        if self.method == EmbeddingMethod.PCA:
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
    return Embedding(EmbeddingMethod.PCA, points.astype(np.float32), np.asarray(latents, np.float32), fit)


def umap_embedding(latents: np.ndarray, seed: int = 0, k: int = 16) -> Embedding:
    """UMAP of latents (N, zdim); the PCA embedding when umap-learn is not installed."""
    points, method = analysis.umap_embedding(latents, seed)
    if method != "umap":
        return pca_embedding(latents)
    return Embedding(EmbeddingMethod.UMAP, np.asarray(points, np.float32), np.asarray(latents, np.float32), None, k)


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
    """What the viewer shows for one latent z (zdim,): volume (B, B, B) float32; labels
    (B, B, B) int32 (0 solvent, k + 1 part k) or None; readout or None (no parts); lattice: the
    lattice of volume and labels (B = ``lattice.box``)."""

    z: np.ndarray
    volume: np.ndarray
    labels: np.ndarray | None
    readout: PartReadout | None
    lattice: Lattice


@dataclass(frozen=True, eq=False)  # holds arrays: equal only to itself
class Traversal:
    """latents (T, zdim) float32 of a traversal, and the part readout at each of them (T, or
    empty when the run has no parts)."""

    latents: np.ndarray
    readouts: list[PartReadout]

    def __len__(self) -> int:
        return len(self.latents)


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
    of each explored particle (simulations) or None; gt_dir: the ground-truth folder;
    particles_missing: why ``particles`` is None for a run's explorer (the error naming
    config.json and every place tried), else None.
    ``lattice`` is the model's (the box it was trained at); maps may be drawn on any other of the
    same field of view (:meth:`map_lattice`).
    """

    def __init__(self, model: StageModel, latents: np.ndarray, part_index: np.ndarray | None = None,
                 root: Path | None = None, particles: Path | None = None, selection: np.ndarray | None = None,
                 gt_labels: np.ndarray | None = None, gt_dir: Path | None = None) -> None:
        self.model = model.eval()
        self.latents = np.asarray(latents, np.float32)
        self.part_index = None if part_index is None else np.asarray(part_index, np.int64)
        self.root, self.particles, self.selection = root, particles, selection
        self.gt_labels, self.gt_dir = gt_labels, gt_dir
        self.particles_missing: InputError | None = None
        self.stage = model.stage
        self.lattice = model.lattice
        with torch.no_grad():
            self._widths = model.widths.detach().clone()
            self._rest = model.centres.detach().numpy().copy()
        self._pca: analysis.LatentPCA | None = None
        self._kmeans: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (k, seed) -> labels, centres
        self._motions: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # seed -> part_motions(seed)
        self._bf16_faster: bool | None = None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, particles: str | os.PathLike | None = None) -> Explorer:
        """The most advanced model of a run folder, its latents (RUN/latents.npy), its parts, and
        where its particles (``particles``: the user's particle file instead of the run's) and
        (for simulations) ground truth are."""
        from cryospire_core.pipeline.runfolder import RunFolder
        from cryospire_core.pipeline.train import check_run_latents

        run = RunFolder(run_dir)
        model = run.model()
        latents = run.latents()
        check_run_latents(model, latents, run.latents_path)
        selection = None
        if model.stage == "hierarchical":
            part_index = model.part_index.numpy()
            selection = run.selection()
            if selection is not None and selection.shape != (len(latents),):
                raise InputError(run.selection_path, "selection", f"({len(latents)},) particle indices (one per "
                                 "latent of stage 2)", f"{selection.dtype} array of shape {selection.shape}")
        else:
            clustering = run.clustering()
            part_index = None if clustering is None else clustering.part_index
        particles = Path(particles).resolve() if particles is not None else run.particles_path()
        gt_labels, gt_dir = _ground_truth_labels(particles, selection, len(latents))
        explorer = cls(model, latents, part_index, run.root, particles, selection, gt_labels, gt_dir)
        if particles is None:
            explorer.particles_missing = run.missing_input("particles")
        return explorer

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

    # -- explored rows and the particle file --------------------------------------------------------

    def particle_indices(self, mask: np.ndarray) -> np.ndarray:
        """(M,) int64 indices into the run's particle file of the explored particles where
        ``mask`` (N,) is True (through ``selection`` for a stage-2 run trained on a selection)."""
        rows = np.flatnonzero(np.asarray(mask, bool))
        return rows if self.selection is None else np.asarray(self.selection, np.int64)[rows]

    def row_of(self, index: int) -> int | None:
        """The explored particle (row of ``latents``) that is particle ``index`` (0-based) of the
        run's particle file; None when it is not explored (out of range, or not among those a
        stage-2 run trained on a selection kept)."""
        index = int(index)
        if self.selection is None:
            return index if 0 <= index < self.n_particles else None
        rows = np.flatnonzero(np.asarray(self.selection) == index)
        return int(rows[0]) if len(rows) else None

    # -- embeddings and states ---------------------------------------------------------------------

    @property
    def pca(self) -> analysis.LatentPCA:
        if self._pca is None:
            self._pca = analysis.pca(self.latents)
        return self._pca

    def embedding(self, method: EmbeddingMethod = EmbeddingMethod.PCA, seed: int = 0) -> Embedding:
        """The particles in 2D: PCA (instant) or UMAP (slow: call it in a worker)."""
        if method == EmbeddingMethod.PCA:
            return pca_embedding(self.latents, self.pca)
        if method == EmbeddingMethod.UMAP:
            return umap_embedding(self.latents, seed)
        raise ValueError(f"embedding: method must be one of {[m.value for m in EmbeddingMethod]}, got {method!r}")

    def states(self, k: int, seed: int = 0) -> np.ndarray:
        """(N,) k-means state of each particle, of ``k`` states (``cryospire analyze --ksample k``'s
        numbering with the same seed; cached per k and seed). ValueError unless 1 <= k <= N."""
        return self._states(k, seed)[0]

    def state_centres(self, k: int, seed: int = 0) -> np.ndarray:
        """(k, zdim) float32 centres of the k-means states of :meth:`states` (same k, seed)."""
        return self._states(k, seed)[1].astype(np.float32)

    def _states(self, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        key = (int(k), int(seed))
        if key not in self._kmeans:
            self._kmeans[key] = analysis.kmeans_states(self.latents, *key)
        return self._kmeans[key]

    # -- decoding -------------------------------------------------------------------------------

    def map_lattice(self, box: int | None = None) -> Lattice:
        """The lattice of maps ``box`` samples per side with the model's field of view
        (``self.lattice.cropped(box)``: finer above the trained box, coarser below); None: the
        model's. ValueError unless ``box`` is an even whole number in 8..1024 (as ``--box``)."""
        if box is None:
            return self.lattice
        if not BOX.accepts(box):
            raise ValueError(f"map box: expected {BOX.what}, got {box!r}")
        return self.lattice.cropped(box)

    def map_boxes(self) -> list[int]:
        """The map boxes to offer a user, ascending: the model's and :data:`MAP_BOXES`, none
        below :data:`MIN_MAP_BOX`."""
        return sorted(b for b in {self.lattice.box, *MAP_BOXES} if b >= MIN_MAP_BOX)

    def map_at(self, z: np.ndarray, box: int | None = None) -> np.ndarray:
        """The map (B, B, B) float32 at latent z (zdim,) on :meth:`map_lattice` (``box``)."""
        return self.frame(z, labels=False, readout=False, box=box).volume

    def frame(self, z: np.ndarray, labels: bool = False, readout: bool = True, live: bool = False,
              box: int | None = None) -> Frame:
        """Map, part-label map (when ``labels`` and the run has parts) and part readout (when
        ``readout`` and the run has parts) at latent z (zdim,), from one decode; the maps on
        :meth:`map_lattice` (``box``; None: the model's lattice).

        live: for display while the cursor moves: the networks run in bfloat16 when that decodes
        faster on this CPU (measured once; about 3x on CPUs with AVX512-BF16 or AMX), which
        changes a map by well under 1% of its peak. Exports leave it off."""
        from cryospire_core.imaging.render import rasterize

        z = np.asarray(z, np.float32).reshape(-1)
        lattice = self.map_lattice(box)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=live and self.live_precision() == "bf16"):
            d = self.model.decode(torch.as_tensor(z)[None])
            c, m = d.centres[0], d.amplitudes[0]
            vol = rasterize(c, self._widths, m, lattice, window=DISPLAY_WINDOW).numpy()
            has_parts = self.part_index is not None
            lab = self._labels(c, m, vol, lattice) if labels and has_parts else None
            out = self._readout(c.numpy(), m.numpy(), d.gates[0].numpy(), d.motions) if readout and has_parts else None
        return Frame(z, vol, lab, out, lattice)

    def live_precision(self) -> str:
        """``bf16`` when the networks decode faster in bfloat16 than in float32 on this CPU (timed
        once), else ``fp32``: the precision of :meth:`frame` with ``live``."""
        if self._bf16_faster is None:
            z = torch.as_tensor(self.latents[:1])

            def best_ms(bf16: bool) -> float:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    self.model.decode(z)  # warm-up: kernel selection, weight casts
                    times = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        self.model.decode(z)
                        times.append(time.perf_counter() - t0)
                return min(times)

            self._bf16_faster = best_ms(True) < 0.8 * best_ms(False)
        return "bf16" if self._bf16_faster else "fp32"

    def _labels(self, centres: torch.Tensor, amps: torch.Tensor, total: np.ndarray, lattice: Lattice) -> np.ndarray:
        """(B, B, B) int32 on ``lattice``: :func:`parts.part_label_volume` of the decoded mixture,
        solvent below the molecule/solvent threshold of ``total`` (the frame's map)."""
        from cryospire_core.models.consensus import density_threshold
        from cryospire_core.models.parts import part_label_volume

        try:
            level = density_threshold(total)
        except ValueError:  # no molecule/solvent split to find (e.g. an empty map)
            level = 0.5 * float(total.max())
        return part_label_volume(centres.numpy(), self._widths.numpy(), amps.numpy(), self.part_index, lattice,
                                 threshold=level, window=DISPLAY_WINDOW)

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
                d = self.model.decode(torch.as_tensor(z)[None])
                out.append(self._readout(d.centres[0].numpy(), d.amplitudes[0].numpy(), d.gates[0].numpy(), d.motions))
        return out

    # -- per-particle colours ------------------------------------------------------------------

    def colour_values(self, kind: ColourMode, part: int = 0, k: int = 8, seed: int = 0) -> np.ndarray:
        """(N,) float32 value of each particle to colour the scatter by.

        kind: STATE (k-means state of k), PRESENCE / DISPLACEMENT of part ``part``
        (0-based; displacement = rotation-aware RMS shift of its Gaussians, Å), or
        GROUND_TRUTH (the simulated state). See :data:`COLOUR_SAMPLE` for large N.
        """
        if kind == ColourMode.STATE:
            return self.states(k, seed).astype(np.float32)
        if kind == ColourMode.GROUND_TRUTH:
            if self.gt_labels is None:
                raise ValueError("this run has no ground-truth labels")
            return self.gt_labels.astype(np.float32)
        if kind not in (ColourMode.PRESENCE, ColourMode.DISPLACEMENT):
            raise ValueError(f"colour_values: kind must be one of {[m.value for m in ColourMode]}, got {kind!r}")
        if self.part_index is None or not 0 <= part < self.n_parts:
            raise ValueError(f"colour_values: part must be in 0..{self.n_parts - 1}")
        presence, displacement = self.part_motions(seed)
        return (presence if kind == ColourMode.PRESENCE else displacement)[:, part]

    def part_motions(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Each particle's presence (mean gate, 0-1) and RMS displacement from the rest pose (Å)
        of every part: two (N, K) float32 arrays, decoded in one pass over the latents (a sample
        of :data:`COLOUR_SAMPLE` above that many particles, the others taking their nearest
        sampled neighbour's values).

        Decoding every particle takes tens of seconds on a laptop, so the result is kept in
        memory and in the run folder (``RUN/part_motions.npz``, written atomically; a folder that
        cannot be written is only not cached), under a digest of the model's weights, the parts,
        the latents and the sample: a retrained model or edited parts are decoded afresh."""
        if seed in self._motions:
            return self._motions[seed]
        key = self._motions_key(seed)
        from cryospire_core.pipeline.runfolder import RunFolder

        path = None if self.root is None else RunFolder(self.root).part_motions_path
        if path is not None and path.is_file():
            try:
                with np.load(path) as f:
                    if str(f["key"]) == key:
                        self._motions[seed] = (f["presence"], f["displacement"])
                        return self._motions[seed]
            except (OSError, ValueError, KeyError):  # unreadable or foreign: decoded afresh below
                pass
        n, K = self.n_particles, self.n_parts
        sample = np.arange(n) if n <= COLOUR_SAMPLE else np.sort(
            np.random.default_rng(seed).choice(n, COLOUR_SAMPLE, replace=False))
        parts = torch.nn.functional.one_hot(torch.as_tensor(self.part_index), K).float()  # (G, K)
        counts = parts.sum(0).clamp(min=1)
        rest = torch.as_tensor(self._rest)
        presence = np.empty((len(sample), K), np.float32)
        displacement = np.empty((len(sample), K), np.float32)
        with torch.no_grad():
            for start in range(0, len(sample), 64):
                z = torch.as_tensor(self.latents[sample[start:start + 64]])
                d = self.model.decode(z)
                stop = start + len(z)
                presence[start:stop] = (d.gates @ parts / counts).numpy()
                displacement[start:stop] = ((d.centres - rest).pow(2).sum(-1) @ parts / counts).sqrt().numpy()
        if len(sample) < n:
            _, nearest = cKDTree(self.latents[sample]).query(self.latents, k=1)
            presence, displacement = presence[nearest], displacement[nearest]
        self._motions[seed] = (presence, displacement)
        if path is not None:
            try:
                write_npz(path, key=np.array(key), presence=presence, displacement=displacement)
            except OSError:  # a read-only run folder: kept in memory only
                pass
        return presence, displacement

    def _motions_key(self, seed: int) -> str:
        """Digest of what :meth:`part_motions` depends on."""
        h = hashlib.sha1()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        for array in (self.part_index, self.latents, np.array([seed, COLOUR_SAMPLE])):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    # -- traversals -------------------------------------------------------------------------------

    def pc_traversal(self, pc: int = 1, n_steps: int = 20) -> np.ndarray:
        """(n_steps, zdim) latents along PC ``pc`` (5th to 95th percentile of the particles)."""
        return analysis.traversal(self.latents, pc, n_steps, fit=self.pca).astype(np.float32)

    def graph_traversal(self, z0: np.ndarray, z1: np.ndarray, n_steps: int = 20, k: int = 10, seed: int = 0) -> np.ndarray:
        """See :func:`graph_traversal` (over this explorer's latents)."""
        return graph_traversal(self.latents, z0, z1, n_steps, k, seed)

    def traversal(self, kind: TraversalKind, n_steps: int = 20, z0: np.ndarray | None = None,
                  z1: np.ndarray | None = None) -> Traversal:
        """A traversal of ``kind`` with ``n_steps`` steps: along PC1 or PC2 (PC1 when zdim is 1;
        5th to 95th percentile of the particles), or from z0 to z1 (zdim,), ends included,
        straight or through the data (those two need both ends): its latents (n_steps, zdim) and
        the part readout at each. ValueError when the ends of a traversal through the data lie in
        separate clusters of the particles' kNN graph (:func:`graph_path`)."""
        if kind == TraversalKind.PC1:
            zs = self.pc_traversal(1, n_steps)
        elif kind == TraversalKind.PC2:
            zs = self.pc_traversal(min(2, self.zdim), n_steps)
        elif z0 is None or z1 is None:
            raise ValueError(f"traversal: {kind.value} needs both ends z0 and z1")
        elif kind == TraversalKind.LINE:
            zs = line_traversal(z0, z1, n_steps)
        else:
            zs = self.graph_traversal(z0, z1, n_steps)
        return Traversal(zs, self.readouts(zs))


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
# Where a run's particles and ground truth are
# --------------------------------------------------------------------------------------------


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
