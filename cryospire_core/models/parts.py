"""Part discovery: cluster the stage-1 Gaussians into parts, and turn parts into maps and masks.

Two levels (METHOD.md, "Stage 1") and an optional refinement:

1. Level 1 groups Gaussians that move or appear together. By default it clusters each Gaussian's
   *dynamics*: its displacement and presence gate over a sample of images, as stage 1 decodes
   them, averaged over its spatial neighbours and reduced by principal components (see
   :func:`dynamics_signature`). This goes beyond the paper, which clusters the learned features:
   at the CPU profile's sizes the features of one rigid domain did not form one cluster (adjusted
   Rand index 0.54 against the ground-truth domains of ``hinge``, 0.89 with the dynamics, same
   stage-1 model). Without dynamics, level 1 clusters the standardised features (the paper's
   rule). The number of clusters K1 is chosen by the best mean silhouette over K1 = 2..8; when
   even the best silhouette is below ``ONE_PART_SILHOUETTE`` there is no cluster structure and
   K1 = 1.
2. Level 2 cuts each level-1 cluster into spatially compact parts: k-means++ (2-way) on the 3D
   centres, applied recursively while a piece is too big or clearly made of separate blobs:
   split when its radius of gyration exceeds ``MAX_PART_RG`` x the molecule's, or when the
   2-way split's silhouette exceeds ``SPLIT_SILHOUETTE``; never into pieces of fewer than
   ``min_part_size`` Gaussians. With ``MAX_PART_RG = 1.0`` a piece is cut for its size only
   when it is more spread out than the whole molecule (a rod, or domains at opposite ends that
   level 1 put together); a compact domain, or a rigid core carrying most of the mass, is kept
   whole, and separate blobs are still cut by the silhouette. It was 0.7 until it was measured
   on the realistic tuning sets (``benchmarks/realistic``): 0.7 cut cftr-hinge2's rigid core
   (74% of the mass) in two (ARI 0.354, against 0.721 at 1.0) and the rigid porin barrel into 4
   parts (2 at 1.0), with the split-tolerant ARI equal on every set; the ``hinge``, ``assembly``
   and ``mixed`` presets score the same at both. (0.6 cut the ``assembly`` core in two: part ARI
   0.40 instead of 0.99.)

3. Rigid reassignment (``--parts-refine rigid``; off by default, :func:`rigid_reassign`): motion
   segmentation. Each part's rigid motion is fitted to its Gaussians' decoded displacements, image
   by image, and every Gaussian moves to the part whose motion and presence explain its own best;
   repeated until nothing moves. Level 1 clusters motion *profiles*, so a domain that turns is
   cut across its axis (its Gaussians near the axis barely move and look like the core); the
   fit of a rigid motion puts them back. The reassignment knows nothing of space, so it can join
   two pieces that level 2 cut as separate blobs (two static domains move alike); with the
   automatic level 2, the same rule then cuts every part again. Then a Gaussian that two parts
   explain about equally well goes to the one that holds most of its neighbourhood
   (:func:`settle_ties`), and last a part whose Gaussians come and go in two patterns is cut in
   two (:func:`split_by_presence`: a subunit that moves with the core but is absent from some
   images). Each part's fit is redone with Cauchy weights (:func:`robust_rigid_prediction`), so a
   few heavy Gaussians of a swinging domain that joined a static part do not pull its fit. It
   is only as good as the motion stage 1 decodes, so it is meant for a stage 1 with rigid
   handles (``discovery.handles``). Split-tolerant ARI (the density-majority ground truth of
   :mod:`cryospire_core.analysis.partscores`), 24 handles, stage-1 seeds 0 / 1 / 2, with / without
   it: cftr-hinge2 (a tuning set of ``benchmarks/realistic``) 0.923 / 0.911 / 0.939 against 0.530
   / 0.551 / 0.531; tcr-complex (tuning) 0.960 / 0.961 / 0.939 against 0.938 / 0.911 / 0.703;
   cyt-twist (held out) 0.736 / 0.720 / 0.741 against 0.318 / 0.477 / 0.486; the presets
   ``hinge`` 1.000 / 0.990 / 0.977 against 0.963 / 0.986 / 0.974 and ``mixed`` 0.976 / 0.978 /
   0.858 against 0.984 / 0.950 / 0.889. It is off by default because the default stage 1 (the
   paper's shift MLP, which decodes about a third of the motion) with it fails at some seeds
   (``hinge`` seed 1: 0.675 against 0.979 without), and no map of a full run with handles has
   been scored against the default's.

The clustering works on plain arrays (no model objects), so the GUI can re-cluster in well
under a second (:func:`recluster`; about 4 s more with the rigid reassignment) from the inputs
saved in ``RUN/parts/clustering.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, pairwise_distances, silhouette_score
from threadpoolctl import threadpool_limits

from cryospire_core.errors import InputError
from cryospire_core.io.arrays import read_npz
from cryospire_core.io.atomic import write_npz

if TYPE_CHECKING:  # the module imports torch only where it renders
    from cryospire_core.imaging.lattice import Lattice

#: Candidate level-1 cluster counts for the automatic choice.
LEVEL1_CANDIDATES = range(2, 9)
#: Below this best mean silhouette the features have no substantial cluster structure
#: (Kaufman & Rousseeuw's 0.25 bound) and level 1 keeps a single cluster.
ONE_PART_SILHOUETTE = 0.25
#: Level 2 splits a piece whose radius of gyration exceeds this fraction of the molecule's.
MAX_PART_RG = 1.0
#: ...or whose 2-way spatial split has at least this silhouette (separate blobs).
SPLIT_SILHOUETTE = 0.6
#: k-means restarts (k-means++ seeding each time).
N_INIT = 4
#: Silhouettes are computed on at most this many Gaussians (a seeded subsample) to stay fast.
SILHOUETTE_SAMPLE = 2048
#: Neighbours (the Gaussian itself included) whose dynamics are averaged, mass-weighted, into a
#: Gaussian's signature: rigid domains are spatially contiguous, and averaging lets a light
#: Gaussian whose decoded motion is mostly noise follow its neighbourhood.
DYNAMICS_NEIGHBOURS = 16
#: Principal components of the dynamics signature that level 1 clusters.
DYNAMICS_COMPONENTS = 8
#: A gate change of 1 (present to absent) weighs like a displacement of this many pixels. Chosen
#: on the stage-1 models of the hinge, assembly and mixed presets: the part ARI is flat for
#: 5-30 px and drops on mixed at 3 px (0.75), where a half-present cap's on/off signal is
#: outweighed by its neighbours' motion.
GATE_PX = 10.0
#: Neighbours (the Gaussian included) whose reassignment costs a Gaussian averages, so a light
#: Gaussian follows its neighbourhood (chosen on cftr-hinge2, a tuning set: 4 and 8 tie).
REASSIGN_NEIGHBOURS = 8
#: A Gaussian changes part only when another part's motion and presence explain its own better
#: by more than this many px^2 per image (0.14 px rms), so two parts that move alike keep their
#: Gaussians instead of one slowly taking the other's (two static domains of the ``hinge`` preset,
#: shift-MLP stage 1: split ARI 0.290 without a margin, 0.979 with; cftr-hinge2, 24 handles,
#: seeds 0-2: 0.823 / 0.814 / 0.831 against 0.810 / 0.821 / 0.838).
REASSIGN_MARGIN_PX2 = 0.02
#: Each part's rigid motion is fitted twice: the second time each member's mass weight is
#: divided by 1 + r / (``ROBUST_SCALE`` x the members' median r), r its squared residual under the
#: first fit (a Cauchy weight), so a few heavy Gaussians of a swinging domain that joined a static
#: part do not pull its fit (which would send the part's own Gaussians to a neighbouring static
#: part). Chosen on the presets and the tuning sets with 24 handles: ``mixed`` seed 2 0.238 ->
#: 0.858 split-tolerant ARI for any value from 1 to 4 (0.258 at 8), nothing else changing by
#: more than 0.01; 2 is the middle of that range. With the shift MLP the outcome jumps with the
#: value (``mixed`` seed 0: 0.955 at 2, 0.587 at 3, 0.962 at 4, 0.413 at 8).
ROBUST_SCALE = 2.0
#: At most this many reassignment rounds (each refits every part's motion); they end sooner
#: when nothing moves.
REASSIGN_ROUNDS = 10
#: After the reassignment a Gaussian is a tie when another part explains its motion and presence
#: within this many px^2 per image of its own part (a Gaussian near a turning domain's axis hardly
#: moves, so the static core and the domain explain it alike): then space decides, ...
TIE_PX2 = 0.1
#: ... the mass-weighted majority of its this many nearest Gaussians (itself included) among the
#: parts that explain it within ``TIE_PX2`` of the best. Both chosen on the tuning sets of
#: ``benchmarks/realistic`` with 24 handles (cftr-hinge2 and tcr-complex, stage-1 seeds 0-2, over
#: 0.05-0.5 and 12-64): split-tolerant ARI cftr-hinge2 0.837 / 0.837 / 0.842 against 0.823 /
#: 0.814 / 0.831 without, tcr-complex unchanged.
TIE_NEIGHBOURS = 16
#: Last, a part whose Gaussians come and go in two patterns is cut in two (a subunit that moves
#: with its neighbour but is absent from some images, which level 1 can miss): when the 2-means
#: of its Gaussians' presence profiles (gates over the sample images, averaged like the dynamics
#: over ``DYNAMICS_NEIGHBOURS``) have mean profiles this far apart (rms, gate units) ...
PRESENCE_SPLIT_RMS = 0.2
#: ... and the smaller half holds at least this fraction of the part's mass. Both chosen on the
#: tuning sets with 24 handles: tcr-complex, stage-1 seed 2, whose b2m subunit (absent in 22% of
#: the images) level 1 had left in the core, 0.707 -> 0.938 split-tolerant ARI at any gap from
#: 0.15 to 0.25; no other tuning set or preset changes.
PRESENCE_SPLIT_MIN_MASS = 0.1


@dataclass
class ClusteringInputs:
    """What the clustering reads, kept so the GUI can re-cluster without the model.

    features: (G, F) float32 learned features (raw, as the model holds them).
    centres: (G, 3) float32, Å (x, y, z). masses: (G,) float32 weight of each Gaussian (its
    integrated density, amplitude x width^3; any positive weights work).
    dynamics: (G, C) float32 or None: the dynamics signature (:func:`dynamics_signature`); when
    present level 1 clusters it, otherwise the standardised features. presence: (G,) float32
    or None, each Gaussian's mean gate over the sampled images. seed: k-means seed.
    motion: (S, G, 3) float32 pixels and gates: (S, G) float32, or both None: the decoded
    displacements and gates in S sampled images; when present the parts end with the rigid
    reassignment (:func:`rigid_reassign`).
    """

    features: np.ndarray
    centres: np.ndarray
    masses: np.ndarray
    dynamics: np.ndarray | None
    presence: np.ndarray | None
    seed: int
    motion: np.ndarray | None = None
    gates: np.ndarray | None = None

    def level1_matrix(self) -> np.ndarray:
        """(G, C or F) the vectors level 1 clusters."""
        if self.dynamics is not None:
            return self.dynamics.astype(np.float64)
        f = self.features.astype(np.float64)
        sd = f.std(axis=0)
        return (f - f.mean(axis=0)) / np.where(sd > 0, sd, 1.0)

    @property
    def weights(self) -> np.ndarray:
        """(G,) float64 strictly positive clustering weights."""
        w = np.abs(self.masses.astype(np.float64))
        return w + 1e-9 * (w.max() if w.max() > 0 else 1.0) + 1e-300


@dataclass
class PartClustering:
    """Result of part discovery.

    part_index: (G,) int64 part of each Gaussian, 0..K-1. level1: (K,) int64 level-1 cluster of
    each part. anchor_index: (K,) Gaussian nearest to each part's (mass-weighted) centroid,
    chosen among the part's own Gaussians; anchor_centres: (K, 3) Å; anchor_features: (K, F).
    n_level1: level-1 clusters used. level1_k: (M,) candidate K1 tried (empty when K1 was given)
    and level1_silhouette: (M,) their mean silhouettes. part_rg: (K,) radius of gyration of each
    part, Å; molecule_rg: the whole set's, Å. part_presence: (K,) mean gate of each part over the
    sampled images (NaN without presence). rule: how K1 and the level-2 splits were decided.
    """

    part_index: np.ndarray
    level1: np.ndarray
    anchor_index: np.ndarray
    anchor_centres: np.ndarray
    anchor_features: np.ndarray
    n_level1: int
    level1_k: np.ndarray
    level1_silhouette: np.ndarray
    part_rg: np.ndarray
    molecule_rg: float
    part_presence: np.ndarray
    rule: str
    inputs: ClusteringInputs = field(repr=False)

    @property
    def n_parts(self) -> int:
        return int(self.level1.shape[0])

    def to_npz(self, path: str | os.PathLike) -> None:
        """Write everything (inputs included, for :func:`recluster`) atomically to ``path``."""
        arrays = {
            "part_index": self.part_index, "level1": self.level1, "anchor_index": self.anchor_index,
            "anchor_centres": self.anchor_centres, "anchor_features": self.anchor_features,
            "n_level1": np.int64(self.n_level1), "level1_k": self.level1_k,
            "level1_silhouette": self.level1_silhouette, "part_rg": self.part_rg,
            "molecule_rg": np.float64(self.molecule_rg), "part_presence": self.part_presence,
            "rule": np.asarray(self.rule), "features": self.inputs.features, "centres": self.inputs.centres,
            "masses": self.inputs.masses, "seed": np.int64(self.inputs.seed),
        }
        for key in ("dynamics", "presence", "motion", "gates"):
            if getattr(self.inputs, key) is not None:
                arrays[key] = getattr(self.inputs, key)
        write_npz(path, **arrays)

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> PartClustering:
        """Read a file written by :meth:`to_npz` (InputError naming the file when it is missing,
        damaged, or lacks a key or a scalar)."""
        path = Path(path)
        needed = ("part_index", "level1", "anchor_index", "anchor_centres", "anchor_features", "n_level1",
                  "level1_k", "level1_silhouette", "part_rg", "molecule_rg", "part_presence", "rule",
                  "features", "centres", "masses", "seed")
        data = read_npz(path, "part clustering", needed)
        try:
            inputs = clustering_inputs(data["features"], data["centres"], data["masses"], data.get("dynamics"),
                                       data.get("presence"), int(data["seed"]), data.get("motion"), data.get("gates"))
            return cls(data["part_index"], data["level1"], data["anchor_index"], data["anchor_centres"],
                       data["anchor_features"], int(data["n_level1"]), data["level1_k"], data["level1_silhouette"],
                       data["part_rg"], float(data["molecule_rg"]), data["part_presence"], str(data["rule"]), inputs)
        except (TypeError, ValueError, IndexError) as exc:  # a scalar saved as an array, a shape, ...
            raise InputError(path, "part clustering", "the arrays PartClustering.to_npz writes", exc) from exc


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def dynamics_signature(
    shifts: np.ndarray,
    gates: np.ndarray,
    centres: np.ndarray,
    masses: np.ndarray,
    apix: float,
    neighbours: int = DYNAMICS_NEIGHBOURS,
    components: int = DYNAMICS_COMPONENTS,
) -> np.ndarray:
    """(G, C) float32: how each Gaussian moves and appears over a sample of images.

    shifts: (N, G, 3) Å, each Gaussian's displacement in N sampled images; gates: (N, G) in
    [0, 1]; centres: (G, 3) Å; masses: (G,) weights; apix: Å/px (displacements count in pixels,
    a gate change of 1 as ``GATE_PX`` pixels). Each Gaussian's profile (3N displacements, N
    gates) is averaged, mass-weighted, over its ``neighbours`` nearest Gaussians, centred, and
    projected on the first ``components`` principal axes of the mass-weighted profiles, so
    Euclidean distances between rows are distances between motions in pixels.
    """
    shifts = np.asarray(shifts, dtype=np.float64)
    gates = np.asarray(gates, dtype=np.float64)
    N, G = gates.shape
    if shifts.shape != (N, G, 3):
        raise ValueError(f"shifts must be ({N}, {G}, 3) to match gates {gates.shape}, got {shifts.shape}")
    profile = np.concatenate([shifts.transpose(1, 0, 2).reshape(G, 3 * N) / apix, gates.T * GATE_PX], axis=1)
    return reduce_profile(profile, centres, masses, neighbours, components)


def nearest(centres: np.ndarray, neighbours: int) -> np.ndarray:
    """(G, k) int: each Gaussian's ``neighbours`` nearest (itself first; k = min(neighbours, G))
    among centres (G, 3) Å."""
    c = np.asarray(centres, np.float64)
    _, near = cKDTree(c).query(c, k=min(neighbours, len(c)))
    return near.reshape(len(c), -1)


def reduce_profile(
    profile: np.ndarray,
    centres: np.ndarray,
    masses: np.ndarray,
    neighbours: int = DYNAMICS_NEIGHBOURS,
    components: int = DYNAMICS_COMPONENTS,
) -> np.ndarray:
    """(G, C) float32: per-Gaussian profiles (G, P) averaged, mass-weighted, over each Gaussian's
    ``neighbours`` nearest (centres (G, 3) Å, masses (G,)), centred, and projected on their first
    ``components`` principal axes (Euclidean distances between rows keep the profiles' units)."""
    w = np.abs(np.asarray(masses, dtype=np.float64)) + 1e-12
    profile = neighbour_mean(profile, centres, w, neighbours)
    profile -= np.average(profile, axis=0, weights=w)
    _, _, vt = np.linalg.svd(profile * np.sqrt(w / w.mean())[:, None], full_matrices=False)
    return (profile @ vt[:components].T).astype(np.float32)


def neighbour_mean(profile: np.ndarray, centres: np.ndarray, masses: np.ndarray, neighbours: int) -> np.ndarray:
    """(G, P) float64: per-Gaussian rows ``profile`` (G, P) averaged, weighted by masses (G,)
    positive, over each Gaussian's ``neighbours`` nearest (centres (G, 3) Å)."""
    profile = np.asarray(profile, dtype=np.float64)
    w = np.asarray(masses, dtype=np.float64)
    near = nearest(centres, neighbours)
    return np.einsum("gk,gkp->gp", w[near], profile[near]) / w[near].sum(1, keepdims=True)


def clustering_inputs(
    features: np.ndarray,
    centres: np.ndarray,
    masses: np.ndarray,
    dynamics: np.ndarray | None = None,
    presence: np.ndarray | None = None,
    seed: int = 0,
    motion: np.ndarray | None = None,
    gates: np.ndarray | None = None,
) -> ClusteringInputs:
    """Check shapes: features (G, F); centres (G, 3) Å; masses (G,); dynamics (G, C) or None;
    presence (G,) or None; motion (S, G, 3) pixels and gates (S, G), both or neither."""
    features = np.asarray(features, dtype=np.float32)
    centres = np.asarray(centres, dtype=np.float32)
    masses = np.asarray(masses, dtype=np.float32)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be (G, F) with G >= 2, got {features.shape}")
    G = len(features)
    if centres.shape != (G, 3) or masses.shape != (G,):
        raise ValueError(f"centres must be ({G}, 3) and masses ({G},), got {centres.shape}, {masses.shape}")
    if dynamics is not None:
        dynamics = np.asarray(dynamics, dtype=np.float32)
        if dynamics.ndim != 2 or len(dynamics) != G:
            raise ValueError(f"dynamics must be ({G}, C), got {dynamics.shape}")
    if presence is not None:
        presence = np.asarray(presence, dtype=np.float32)
        if presence.shape != (G,):
            raise ValueError(f"presence must be ({G},), got {presence.shape}")
    if (motion is None) != (gates is None):
        raise ValueError("motion and gates go together: give both or neither")
    if motion is not None:
        motion, gates = np.asarray(motion, dtype=np.float32), np.asarray(gates, dtype=np.float32)
        if gates.ndim != 2 or gates.shape[1] != G or motion.shape != (*gates.shape, 3):
            raise ValueError(f"motion must be (S, {G}, 3) and gates (S, {G}), got {motion.shape}, {gates.shape}")
    return ClusteringInputs(features, centres, masses, dynamics, presence, int(seed), motion, gates)


def discover_parts(
    features: np.ndarray,
    centres: np.ndarray,
    masses: np.ndarray,
    dynamics: np.ndarray | None = None,
    presence: np.ndarray | None = None,
    n_level1: str | int = "auto",
    n_level2: str | int | None = "auto",
    seed: int = 0,
    min_part_size: int | None = None,
    motion: np.ndarray | None = None,
    gates: np.ndarray | None = None,
) -> PartClustering:
    """Cluster G Gaussians into parts (see the module docstring for the rules).

    features: (G, F); centres: (G, 3) Å; masses: (G,); dynamics: (G, C) from
    :func:`dynamics_signature` or None (cluster the features); presence: (G,) mean gates or None.
    n_level1: "auto" or a count; n_level2: "auto" (size/silhouette rule), a count of spatial
    parts per level-1 cluster, or None (no level 2). min_part_size: smallest part the automatic
    level 2 may create (default max(8, G // 100)). motion: (S, G, 3) pixels and gates (S, G),
    the decoded displacements and gates in S images, or None (no rigid reassignment).
    Deterministic for a seed.
    """
    inputs = clustering_inputs(features, centres, masses, dynamics, presence, seed, motion, gates)
    return recluster(inputs, n_level1, n_level2, min_part_size)


def recluster(
    inputs: ClusteringInputs,
    n_level1: str | int = "auto",
    n_level2: str | int | None = "auto",
    min_part_size: int | None = None,
) -> PartClustering:
    """Re-run both levels, and the rigid refinement when the inputs hold the motion (the module
    docstring's step 3), on saved inputs (no model needed; ~0.2-0.5 s at G = 2,048, plus about
    4 s for the refinement).

    Arguments as in :func:`discover_parts`.
    Runs single-threaded: these problems are small, and OpenMP/BLAS worker threads competing
    with a busy machine (training in the background) made it 10-50x slower in our timings.
    """
    with threadpool_limits(limits=1):
        return _recluster(inputs, n_level1, n_level2, min_part_size)


def _recluster(inputs, n_level1, n_level2, min_part_size) -> PartClustering:
    G = len(inputs.features)
    min_size = int(min_part_size) if min_part_size is not None else max(8, G // 100)
    X = inputs.level1_matrix()
    if n_level1 == "auto":
        k_tried, sil, found = _silhouette_scan(X, inputs.centres, min_size, inputs.seed)
        best = int(np.argmax(sil)) if len(sil) else -1
        if best < 0 or sil[best] < ONE_PART_SILHOUETTE:
            k1, level1 = 1, np.zeros(G, dtype=np.int64)
            rule1 = f"K1=1: best silhouette {sil[best] if best >= 0 else float('nan'):.2f} < {ONE_PART_SILHOUETTE}"
        else:
            level1 = found[best]
            k1 = len(np.unique(level1))
            rule1 = (f"K1={k1}: best mean silhouette {sil[best]:.2f} over k-means K=2..{k_tried[-1]} (K={k_tried[best]}; "
                     f"clusters under {min_size} Gaussians join their spatial neighbours)")
    else:
        k1 = _count(n_level1, "n_level1", G)
        k_tried, sil = np.zeros(0, np.int64), np.zeros(0)
        rule1 = f"K1={k1}: given"
        level1 = _kmeans(X, k1, inputs.seed)
    level1 = _first_seen_order(level1)

    weights = inputs.weights
    mol_rg = _rg(inputs.centres, weights)

    def level2(members: np.ndarray) -> list[np.ndarray]:
        if n_level2 is None:
            return [members]
        if n_level2 == "auto":
            return _split_auto(members, inputs.centres, weights, MAX_PART_RG * mol_rg, min_size, inputs.seed)
        k2 = min(_count(n_level2, "n_level2", G), len(members))
        sub = _kmeans(inputs.centres[members].astype(np.float64), k2, inputs.seed)
        return [members[sub == j] for j in range(k2) if np.any(sub == j)]

    part, part_level1 = _cut(level1, np.arange(k1), level2)
    if n_level2 == "auto":
        rule2 = (f"level 2: split while Rg > {MAX_PART_RG} x molecule Rg ({MAX_PART_RG * mol_rg:.1f} Å) "
                 f"or 2-way silhouette > {SPLIT_SILHOUETTE}, parts >= {min_size} Gaussians")
    else:
        rule2 = "level 2: none" if n_level2 is None else f"level 2: {n_level2} per level-1 cluster (given)"
    rule = f"{rule1}; {rule2}"
    if inputs.motion is not None and len(part_level1) > 1:
        moved = rigid_reassign(part, inputs.motion, inputs.gates, inputs.centres, weights)
        rule += f"; rigid reassignment: {np.count_nonzero(moved != part)} Gaussians moved"
        part, part_level1 = _compact(moved, part_level1[part])
        if n_level2 == "auto":
            # Two pieces that level 2 cut apart as separate blobs can end up one part when their
            # decoded motions are alike (two static domains): the same rule cuts them again.
            part, part_level1 = _cut(part, part_level1, level2)
            rule += f", then level 2 again ({len(part_level1)} parts)"
        tied = settle_ties(part, inputs.motion, inputs.gates, inputs.centres, weights)
        rule += f"; ties settled by space: {np.count_nonzero(tied != part)} Gaussians"
        part, part_level1 = _compact(tied, part_level1[part])
    if inputs.motion is not None:
        split = split_by_presence(part, inputs.gates, inputs.centres, weights, min_size, inputs.seed)
        rule += f"; parts cut by presence: {len(np.unique(split)) - len(part_level1)}"
        part, part_level1 = _compact(split, part_level1[part])
    return _finish(inputs, part, part_level1, k1, k_tried, sil, mol_rg, rule)


def _cut(groups: np.ndarray, group_level1: np.ndarray,
         pieces: Callable[[np.ndarray], list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Parts from cutting each group of Gaussians (groups (G,) labels 0..K-1) with ``pieces``
    (member indices -> list of index arrays): (part (G,), each part's level-1 cluster), numbered
    group by group, a group's pieces in the order of their lowest index (deterministic)."""
    part = np.empty(len(groups), dtype=np.int64)
    part_level1: list[int] = []
    for g, c in enumerate(group_level1):
        for p in sorted(pieces(np.flatnonzero(groups == g)), key=lambda m: int(m.min())):
            part[p] = len(part_level1)
            part_level1.append(int(c))
    return part, np.asarray(part_level1, np.int64)


def _finish(inputs, part, level1, k1, k_tried, sil, mol_rg, rule) -> PartClustering:
    """Anchors and per-part statistics for a part assignment."""
    K = len(level1)
    weights = inputs.weights
    anchor = np.empty(K, dtype=np.int64)
    rg = np.empty(K)
    presence = np.full(K, np.nan)
    for k in range(K):
        members = np.flatnonzero(part == k)
        c = inputs.centres[members].astype(np.float64)
        centroid = np.average(c, axis=0, weights=weights[members])
        anchor[k] = members[np.argmin(((c - centroid) ** 2).sum(axis=1))]
        rg[k] = _rg(c, weights[members])
        if inputs.presence is not None:
            presence[k] = np.average(inputs.presence[members], weights=weights[members])
    return PartClustering(part, level1, anchor, inputs.centres[anchor].copy(), inputs.features[anchor].copy(), k1,
                          np.asarray(k_tried, np.int64), np.asarray(sil, np.float64), rg, float(mol_rg),
                          presence, rule, inputs)


def fit_rigid(
    displacements: np.ndarray, offsets: np.ndarray, weights: np.ndarray, relative_ridge: float, ridge: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the small rigid motion v + ω × r that best fits (weighted least squares) the
    displacements of points at offsets r from their weighted centroid.

    displacements: (S, ..., k, 3) in any length unit (the same for v); offsets: (..., k, 3) Å;
    weights: (..., k) positive, summing to 1 over k. The inertia tensor gets a ridge of
    ``relative_ridge`` x its mean diagonal + ``ridge`` Å^2, for points nearly on a line (the
    rotation about it is not seen) and for a single point (which only translates). Returns v
    (S, ..., 3) and ω (S, ..., 3) (unit per Å, a rotation vector when the unit is Å).
    """
    r = np.asarray(offsets, np.float64)
    w = np.asarray(weights, np.float64)
    inertia = (np.einsum("...k,...k->...", w, (r**2).sum(-1))[..., None, None] * np.eye(3)
               - np.einsum("...k,...ki,...kj->...ij", w, r, r))
    inertia += (relative_ridge * np.trace(inertia, axis1=-2, axis2=-1)[..., None, None] / 3 + ridge) * np.eye(3)
    d = np.asarray(displacements, np.float64)
    v = np.einsum("...k,s...kc->s...c", w, d)
    torque = np.einsum("...k,s...kc->s...c", w, np.cross(r, d))
    return v, np.einsum("...ij,s...j->s...i", np.linalg.inv(inertia), torque)


def rigid_prediction(motion: np.ndarray, centres: np.ndarray, weights: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(S, G, 3): every Gaussian's displacement under the rigid motion of ``members`` (indices),
    fitted per image (:func:`fit_rigid`, a 1 Å^2 ridge) to their displacements (motion (S, G, 3),
    weights (G,), centres (G, 3) Å) and extrapolated linearly (v + ω × (x - centroid))."""
    wi = weights[members] / weights[members].sum()
    centroid = wi @ centres[members]
    v, omega = fit_rigid(motion[:, members], centres[members] - centroid, wi, 1e-3, 1.0)
    return v[:, None, :] + np.cross(omega[:, None, :], (centres - centroid)[None])


def robust_rigid_prediction(motion: np.ndarray, centres: np.ndarray, weights: np.ndarray,
                            members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rigid_prediction` of ``members`` refitted once with Cauchy weights (``ROBUST_SCALE``):
    (the prediction (S, G, 3), the members' weights in the second fit (len(members),))."""
    own = np.arange(len(members))  # the first fit is needed at the members only
    first = rigid_prediction(motion[:, members], centres[members], weights[members], own)
    r = ((first - motion[:, members]) ** 2).sum((0, 2))
    robust = weights.copy()
    robust[members] = weights[members] / (1.0 + r / (ROBUST_SCALE * np.median(r) + 1e-300))
    return rigid_prediction(motion, centres, robust, members), robust[members]


def rigid_reassign(
    part_index: np.ndarray,
    motion: np.ndarray,
    gates: np.ndarray,
    centres: np.ndarray,
    masses: np.ndarray,
    neighbours: int = REASSIGN_NEIGHBOURS,
    rounds: int = REASSIGN_ROUNDS,
) -> np.ndarray:
    """(G,) part labels refined by motion segmentation, in the numbering of ``part_index`` (a part
    may end empty).

    part_index: (G,) the starting parts; motion: (S, G, 3) decoded displacements, pixels (each
    image's mean displacement is removed first: a common shift is no part); gates: (S, G);
    centres: (G, 3) Å; masses: (G,) positive. Each round fits each part's rigid motion per image
    (:func:`robust_rigid_prediction`) and its mean gate per image (the same weights), and gives
    each Gaussian the part with the least cost: the squared residual of its displacements (px^2) plus its
    gates' squared difference from the part's × ``GATE_PX``^2, summed over images and averaged,
    mass-weighted, over its ``neighbours`` nearest Gaussians (a light Gaussian, whose decoded
    motion is mostly noise, follows its neighbourhood and does not sway it), when that part's
    cost is lower than its current part's by more than ``REASSIGN_MARGIN_PX2`` per image.
    """
    costs = _motion_costs(motion, gates, centres, masses, neighbours)
    margin = REASSIGN_MARGIN_PX2 * len(motion)

    def step(labels, ks, cost, current):
        return np.where(current - cost.min(1) > margin, ks[np.argmin(cost, axis=1)], labels)

    return _fixed_point(part_index, step, costs, rounds)


def settle_ties(
    part_index: np.ndarray,
    motion: np.ndarray,
    gates: np.ndarray,
    centres: np.ndarray,
    masses: np.ndarray,
    rounds: int = REASSIGN_ROUNDS,
) -> np.ndarray:
    """(G,) part labels where the motion cannot tell, decided by space (a part may end empty).

    Arguments and costs as in :func:`rigid_reassign`. A Gaussian is a tie when another part's
    cost is within ``TIE_PX2`` per image of its own part's; it then takes the part that holds
    the most mass among its ``TIE_NEIGHBOURS`` nearest Gaussians, of the parts whose cost is
    within ``TIE_PX2`` per image of its best. Round by round until nothing changes.
    """
    costs = _motion_costs(motion, gates, centres, masses, REASSIGN_NEIGHBOURS)
    w = np.asarray(masses, np.float64)
    vote = nearest(centres, TIE_NEIGHBOURS)
    tie = TIE_PX2 * len(motion)

    def step(labels, ks, cost, current):
        others = np.where(ks[None] == labels[:, None], np.inf, cost)
        tally = np.einsum("gk,gkj->gj", w[vote], labels[vote][..., None] == ks)  # (G, K) mass nearby
        tally[cost - cost.min(1, keepdims=True) >= tie] = -1.0  # only parts that explain it
        return np.where(others.min(1) - current < tie, ks[np.argmax(tally, axis=1)], labels)

    return _fixed_point(part_index, step, costs, rounds)


def split_by_presence(part_index: np.ndarray, gates: np.ndarray, centres: np.ndarray, masses: np.ndarray,
                      min_size: int, seed: int = 0) -> np.ndarray:
    """(G,) part labels with every part whose Gaussians come and go in two patterns cut in two
    (the second half gets a new label after the last): part_index (G,); gates (S, G) in S
    images; centres (G, 3) Å; masses (G,) positive; halves of fewer than ``min_size`` Gaussians
    are not made. See ``PRESENCE_SPLIT_RMS`` and ``PRESENCE_SPLIT_MIN_MASS``."""
    w = np.asarray(masses, np.float64)
    profiles = neighbour_mean(np.asarray(gates, np.float64).T, centres, w, DYNAMICS_NEIGHBOURS)  # (G, S)
    labels = np.asarray(part_index, np.int64).copy()
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        if len(members) < 2 * min_size:
            continue
        halves = _kmeans(profiles[members], 2, seed)
        a, b = members[halves == 0], members[halves == 1]
        if min(len(a), len(b)) < min_size:
            continue
        gap = np.sqrt(np.mean((np.average(profiles[a], 0, w[a]) - np.average(profiles[b], 0, w[b])) ** 2))
        if gap > PRESENCE_SPLIT_RMS and min(w[a].sum(), w[b].sum()) >= PRESENCE_SPLIT_MIN_MASS * w[members].sum():
            labels[b] = labels.max() + 1
    return labels


def _motion_costs(motion, gates, centres, masses, neighbours):
    """The cost function of :func:`rigid_reassign`: labels (G,) -> (the parts in use (K,), every
    Gaussian's neighbour-averaged cost for each (G, K), and for its own part (G,))."""
    c = np.asarray(centres, np.float64)
    w = np.asarray(masses, np.float64)
    gates = np.asarray(gates, np.float64)
    motion = np.asarray(motion, np.float64)
    motion = motion - np.average(motion, axis=1, weights=w)[:, None]
    near = nearest(c, neighbours)
    near_weights = w[near] / w[near].sum(1, keepdims=True)  # (G, k)
    rows = np.arange(len(c))

    def costs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ks = np.unique(labels)
        cost = np.empty((len(c), len(ks)))
        for j, k in enumerate(ks):
            members = np.flatnonzero(labels == k)
            prediction, wm = robust_rigid_prediction(motion, c, w, members)
            presence = gates[:, members] @ (wm / wm.sum())  # (S,)
            cost[:, j] = (((prediction - motion) ** 2).sum((0, 2))
                          + GATE_PX**2 * ((gates - presence[:, None]) ** 2).sum(0))
        cost = np.einsum("gk,gkj->gj", near_weights, cost[near])
        return ks, cost, cost[rows, np.searchsorted(ks, labels)]

    return costs


def _fixed_point(labels, step, costs, rounds: int) -> np.ndarray:
    """Apply ``step(labels, *costs(labels))`` until the labels stop changing, at most ``rounds`` times."""
    labels = np.asarray(labels, np.int64)
    for _ in range(rounds):
        new = step(labels, *costs(labels))
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _compact(part_index: np.ndarray, level1_of_gaussian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Part labels renumbered 0..K-1 over the parts still used (order kept), and each part's
    level-1 cluster: the most common one among its Gaussians (level1_of_gaussian (G,))."""
    used, part_index = np.unique(part_index, return_inverse=True)
    level1 = np.array([np.bincount(level1_of_gaussian[part_index == k]).argmax() for k in range(len(used))],
                      dtype=np.int64)
    return part_index.astype(np.int64), level1


def _count(n: object, name: str, G: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= G:
        raise ValueError(f"{name} must be 'auto' or an integer in 1..{G}, got {n!r}")
    return int(n)


def _kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ labels (len(X),); k = 1 gives all zeros."""
    if k <= 1:
        return np.zeros(len(X), dtype=np.int64)
    km = KMeans(n_clusters=k, init="k-means++", n_init=N_INIT, random_state=seed)
    return km.fit_predict(X).astype(np.int64)


def _silhouette(X: np.ndarray, labels: np.ndarray, seed: int) -> float:
    if len(np.unique(labels)) < 2:
        return -1.0
    n = min(len(X), SILHOUETTE_SAMPLE)
    return float(silhouette_score(X, labels, sample_size=n if n < len(X) else None, random_state=seed))


def _silhouette_scan(X: np.ndarray, centres: np.ndarray, min_size: int, seed: int):
    """Candidate K1, the mean silhouette of each k-means clustering after its clusters smaller
    than ``min_size`` joined their spatial neighbours (:func:`_dissolve_small`), and the labels of
    each: (ks (M,), silhouettes (M,), [labels (G,)] * M).

    The distances between the (subsampled) points are computed once for all candidates.
    """
    ks = np.array([k for k in LEVEL1_CANDIDATES if k < len(X)], dtype=np.int64)
    rows = np.random.default_rng(seed).permutation(len(X))[:SILHOUETTE_SAMPLE]
    dist = pairwise_distances(X[rows])
    sil, found = [], []
    for k in ks:
        labels = _dissolve_small(_kmeans(X, int(k), seed), centres, min_size)[0]
        found.append(labels)
        sub = labels[rows]
        sil.append(silhouette_score(dist, sub, metric="precomputed") if len(np.unique(sub)) > 1 else -1.0)
    return ks, np.asarray(sil, dtype=np.float64), found


def _rg(c: np.ndarray, w: np.ndarray) -> float:
    """Weighted radius of gyration (Å) of points c (n, 3)."""
    c = np.asarray(c, dtype=np.float64)
    mean = np.average(c, axis=0, weights=w)
    return float(np.sqrt(np.average(((c - mean) ** 2).sum(axis=1), weights=w)))


def _split_auto(members, centres, weights, max_rg, min_size, seed) -> list[np.ndarray]:
    """Recursive 2-way spatial splits of ``members`` (indices) following the level-2 rule."""
    done, todo = [], [members]
    while todo:
        m = todo.pop()
        if len(m) < 2 * min_size:
            done.append(m)
            continue
        c = centres[m].astype(np.float64)
        sub = _kmeans(c, 2, seed)
        sizes = np.bincount(sub, minlength=2)
        big = _rg(c, weights[m]) > max_rg
        if sizes.min() >= min_size and (big or _silhouette(c, sub, seed) > SPLIT_SILHOUETTE):
            todo += [m[sub == 0], m[sub == 1]]
        else:
            done.append(m)
    return done


def _dissolve_small(labels: np.ndarray, centres: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Give the members of clusters smaller than ``min_size`` the cluster of their nearest
    Gaussian in a big cluster (a handful of odd Gaussians is noise, not a part). Returns the
    new labels and how many clusters were dissolved; never dissolves every cluster."""
    sizes = np.bincount(labels)
    small = np.flatnonzero((sizes > 0) & (sizes < min_size))
    if len(small) == 0 or len(small) == np.count_nonzero(sizes):
        return labels, 0
    lone = np.isin(labels, small)
    _, nearest = cKDTree(centres[~lone]).query(centres[lone])
    labels = labels.copy()
    labels[lone] = labels[~lone][nearest]
    return labels, len(small)


def _first_seen_order(labels: np.ndarray) -> np.ndarray:
    """Relabel so cluster numbers follow the first Gaussian index of each cluster."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[np.searchsorted(np.unique(labels), labels)]


# --------------------------------------------------------------------------------------------
# Editing (GUI) and hand-off
# --------------------------------------------------------------------------------------------


def merge_parts(part_index: np.ndarray, a: int, b: int) -> np.ndarray:
    """(G,) part labels with part ``b`` merged into part ``a``; labels above ``b`` move down by one."""
    part_index = np.asarray(part_index, dtype=np.int64)
    K = int(part_index.max()) + 1
    if not (0 <= a < K and 0 <= b < K) or a == b:
        raise ValueError(f"merge_parts: need two different parts in 0..{K - 1}, got {a}, {b}")
    out = np.where(part_index == b, a, part_index)
    return np.where(out > b, out - 1, out)


def split_part(part_index: np.ndarray, centres: np.ndarray, k: int, n: int, seed: int = 0) -> np.ndarray:
    """(G,) part labels with part ``k`` cut into ``n`` spatial pieces (k-means++ on centres Å).

    The piece holding the part's lowest Gaussian index keeps label ``k``; the others get new
    labels K, K+1, ... so the other parts keep theirs.
    """
    part_index = np.asarray(part_index, dtype=np.int64)
    K = int(part_index.max()) + 1
    members = np.flatnonzero(part_index == k)
    if not 0 <= k < K or not 2 <= n <= len(members):
        raise ValueError(f"split_part: part {k} of {K} with {len(members)} Gaussians cannot be cut into {n}")
    with threadpool_limits(limits=1):
        sub = _first_seen_order(_kmeans(np.asarray(centres, np.float64)[members], n, seed))
    out = part_index.copy()
    out[members] = np.where(sub == 0, k, K + sub - 1)
    return out


def with_part_index(clustering: PartClustering, part_index: np.ndarray) -> PartClustering:
    """The clustering with edited part labels (from :func:`merge_parts` / :func:`split_part`):
    anchors and part statistics recomputed; each part's level-1 cluster is the most common one
    among its Gaussians. part_index: (G,) labels 0..K-1, every label used."""
    part_index = np.asarray(part_index, dtype=np.int64)
    K = int(part_index.max()) + 1
    if part_index.shape != clustering.part_index.shape or len(np.unique(part_index)) != K:
        raise ValueError(f"part_index must be ({len(clustering.part_index)},) labels using every value 0..K-1")
    _, level1 = _compact(part_index, clustering.level1[clustering.part_index])
    return _finish(clustering.inputs, part_index, level1, clustering.n_level1, clustering.level1_k,
                   clustering.level1_silhouette, clustering.molecule_rg, clustering.rule + "; edited by hand")


def assign_to_parts(new_centres: np.ndarray, coarse_centres: np.ndarray, part_index: np.ndarray) -> np.ndarray:
    """(G2,) part of each new Gaussian: the part of its nearest coarse Gaussian (stage-2 hand-off).

    new_centres: (G2, 3) Å; coarse_centres: (G, 3) Å; part_index: (G,).
    """
    _, nearest = cKDTree(np.asarray(coarse_centres, np.float64)).query(np.asarray(new_centres, np.float64))
    return np.asarray(part_index, dtype=np.int64)[nearest]


# --------------------------------------------------------------------------------------------
# Maps and masks
# --------------------------------------------------------------------------------------------


def part_label_volume(
    centres: np.ndarray,
    widths: np.ndarray,
    amplitudes: np.ndarray,
    part_index: np.ndarray,
    lattice: Lattice,
    threshold: float | None = None,
    window: float | None = None,
) -> np.ndarray:
    """(D, D, D) int32 map on ``lattice``: 1 + the part with the most density at each voxel, 0
    below ``threshold``.

    centres: (G, 3) Å; widths: (G,) Å; amplitudes: (G,); part_index: (G,) 0..K-1.
    threshold: level of the total density below which a voxel is solvent; default Otsu's split
    of the positive voxels (consensus.density_threshold). window: where each Gaussian is cut, in
    widths (default: the renderer's).
    """
    import torch

    from cryospire_core.imaging.render import WINDOW_SIGMAS, rasterize
    from cryospire_core.models.consensus import density_threshold

    window = WINDOW_SIGMAS if window is None else float(window)

    part_index = np.asarray(part_index, dtype=np.int64)
    c = torch.as_tensor(np.asarray(centres, np.float32))
    s = torch.as_tensor(np.asarray(widths, np.float32))
    m = torch.as_tensor(np.asarray(amplitudes, np.float32))
    best = total = labels = None
    for k in range(int(part_index.max()) + 1):
        sel = torch.as_tensor(part_index == k)
        vol = rasterize(c[sel], s[sel], m[sel], lattice, window=window).numpy()
        if best is None:
            best, total, labels = vol, vol.copy(), np.zeros(vol.shape, np.int32)
        else:
            labels[vol > best] = k
            best, total = np.maximum(best, vol), total + vol
    level = density_threshold(total) if threshold is None else float(threshold)
    return np.where(total > level, labels + 1, 0).astype(np.int32)


def part_masks(
    label_volume: np.ndarray,
    apix: float,
    soft_edge_px: float | None = None,
    dilate_px: float | None = None,
    n_parts: int | None = None,
) -> np.ndarray:
    """(K, D, D, D) float32 soft masks, one per part label 1..K of ``label_volume``.

    n_parts: K (default the largest label; give it so a part with no voxel above the threshold
    still gets its (empty) mask).

    Each mask is 1 within ``dilate_px`` of the part's voxels, falls off as a raised cosine over
    ``soft_edge_px`` more, and is 0 beyond. Defaults follow common focused-refinement practice:
    dilate by max(2 px, 6 Å), soft edge max(3 px, 12 Å).
    """
    dilate = max(2.0, 6.0 / apix) if dilate_px is None else float(dilate_px)
    edge = max(3.0, 12.0 / apix) if soft_edge_px is None else float(soft_edge_px)
    K = int(label_volume.max()) if n_parts is None else int(n_parts)
    masks = np.zeros((K,) + label_volume.shape, dtype=np.float32)
    for k in range(K):
        inside = label_volume == k + 1
        if not inside.any():
            continue
        d = distance_transform_edt(~inside)  # px to the nearest voxel of the part
        t = np.clip((d - dilate) / edge, 0.0, 1.0) if edge > 0 else (d > dilate).astype(np.float64)
        masks[k] = 0.5 * (1.0 + np.cos(np.pi * t))
    return masks


# --------------------------------------------------------------------------------------------
# Scoring against the simulator's ground truth
# --------------------------------------------------------------------------------------------


def adjusted_rand(part_index: np.ndarray, gt_domain: np.ndarray) -> float:
    """Adjusted Rand index of the parts against ground-truth domain labels (both (G,))."""
    return float(adjusted_rand_score(np.asarray(gt_domain), np.asarray(part_index)))

