"""How well a trained run recovered the ground truth's parts (simulations only).

Two kinds of score, both against a simulation's ``gt/beads.npz`` (bead domains, positions and
presence per state) and ``gt/labels.npy`` (state of each image):

- part scores (:func:`part_scores`): the discovered parts of the stage-1 Gaussians
  (``RUN/parts/clustering.npz``) against the ground-truth group of each Gaussian (the domain
  holding most of the density where it sits, :func:`gt_domains_for_gaussians`): the adjusted
  Rand index (ARI), a
  split-tolerant ARI (each part first relabelled by its majority group, so cutting one rigid group
  into spatial pieces costs nothing but a part that mixes groups does), and per group the
  mass-weighted purity and recall of the parts it holds the majority of;
- presence: for every optional domain (present in some states, absent in others), the mean gate
  of the Gaussians lying on it, per image; its median over images of states that lack the domain
  and over images of states that have it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryospire_core.errors import InputError
from cryospire_core.models.parts import PartClustering, adjusted_rand
from cryospire_core.models.stage import StageModel


@dataclass
class DomainPresence:
    """Gates of one optional domain. name: its ground-truth name; n_gaussians: model Gaussians on
    it; median_absent/median_present: median over images of the mean gate of those Gaussians, in
    images of states without / with the domain; n_absent/n_present: images counted."""

    name: str
    n_gaussians: int
    median_absent: float
    median_present: float
    n_absent: int
    n_present: int


@dataclass
class GroupScore:
    """One ground-truth group against the discovered parts. P_g: the Gaussians of the parts whose
    majority (by mass) is this group. name: the group's (domain's) name; n_gaussians: Gaussians
    truly in it; mass_fraction: its share of the total mass, [0, 1]; n_parts: parts whose majority
    it is; purity: mass of P_g truly in the group / mass of P_g (NaN when n_parts is 0: the group
    was not found as a part of its own); recall: mass of the group inside P_g / the group's mass
    (0 when not found; NaN when no Gaussian is in the group)."""

    name: str
    n_gaussians: int
    mass_fraction: float
    n_parts: int
    purity: float
    recall: float


@dataclass
class PartScores:
    """Discovered parts against ground-truth groups. n_parts: parts found; ari: adjusted Rand index
    of the parts against the groups; split_ari: the same after relabelling every part by its
    majority group (parts cut from one group merge back; a part mixing groups still puts its
    minority Gaussians in the wrong group); groups: one :class:`GroupScore` per group.

    With a single ground-truth group, split_ari is 1.0 (every part's majority is that group, and
    the ARI of two one-class labellings is 1), while ari is 0.0 for two parts or more (sklearn's
    ARI of any split against one class) and 1.0 for one part: it is reported as it is.
    """

    n_parts: int
    ari: float
    split_ari: float
    groups: list[GroupScore]


#: Gaussian-bead pairs held at once by :func:`gt_domains_for_gaussians` (about 32 MB of float64).
GT_CHUNK = 4_000_000
#: The arrays of a simulation's gt/beads.npz that scoring reads.
BEAD_ARRAYS = ("centres", "domains", "domain_names", "presence", "sigmas", "amplitudes", "populations")


def load_beads(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A simulation's gt/beads.npz: centres (S, B, 3) Å, domains (B,), domain_names (D,), presence
    (S, B), sigmas (B,) Å, amplitudes (B,) density at a bead's centre, populations (S,) share of
    the images in each state."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "beads", "a simulation's gt/beads.npz", "no such file")
    with np.load(path, allow_pickle=False) as z:
        beads = {k: z[k] for k in BEAD_ARRAYS if k in z}
    for key in BEAD_ARRAYS:
        if key not in beads:
            raise InputError(path, key, "an array written by `cryospire simulate`", "missing")
    return beads


def gt_domains_for_gaussians(centres: np.ndarray, beads: dict[str, np.ndarray]) -> np.ndarray:
    """(G,) ground-truth domain of each Gaussian: the domain holding most of the density at its
    centre in the states' population-weighted mean, every bead counted at full amplitude
    (absent or not: a Gaussian a model gates off still stands for its domain).

    centres: (G, 3) Å; beads: :func:`load_beads`'s arrays (centres (S, B, 3) Å, domains (B,),
    sigmas (B,) Å, amplitudes (B,), populations (S,)). A Gaussian fitted to a consensus sits where
    its domain's density is on average. The nearest bead in any state (this function's rule until
    2026-12) gave the interface of a static domain to a domain swinging past it in a few states:
    on a domain twisting by +-40 degrees the right labels (nearest bead of the mean structure)
    scored 0.74 split-tolerant ARI against it.
    """
    c = np.asarray(centres, np.float64)
    bead_centres = np.asarray(beads["centres"], np.float64)
    domains = np.asarray(beads["domains"], np.int64)
    order = np.argsort(domains, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(domains[order]) != 0])
    sizes = np.diff(np.r_[starts, len(order)])
    two_var = 2.0 * np.asarray(beads["sigmas"], np.float64)[order] ** 2
    log_amp = np.log(np.maximum(np.asarray(beads["amplitudes"], np.float64)[order], 1e-300))
    pop = np.asarray(beads["populations"], np.float64)
    log_pop = np.log(np.maximum(pop / pop.sum(), 1e-300))
    density = np.full((len(c), len(starts)), -np.inf)  # log density per domain, accumulated over states
    step = max(1, GT_CHUNK // max(1, len(order)))  # Gaussians at a time: (step, B) arrays stay small
    for state, at in enumerate(bead_centres[:, order]):
        for g in range(0, len(c), step):
            log_d = log_pop[state] + log_amp - ((c[g:g + step, None, :] - at[None]) ** 2).sum(-1) / two_var
            # log-sum-exp per domain (beads sorted by domain): far from every bead the densities underflow
            top = np.maximum.reduceat(log_d, starts, axis=1)
            summed = np.add.reduceat(np.exp(log_d - np.repeat(top, sizes, axis=1)), starts, axis=1)
            density[g:g + step] = np.logaddexp(density[g:g + step], top + np.log(summed))
    return np.unique(domains)[density.argmax(axis=1)]


def score_parts(part_index: np.ndarray, gt_group: np.ndarray, weights: np.ndarray,
                group_names: list[str] | np.ndarray) -> PartScores:
    """Score discovered parts against ground-truth groups (see :class:`PartScores`).

    part_index: (G,) int, the part of each Gaussian (any integer labels); gt_group: (G,) int in
    0..D-1, the true group of each Gaussian; weights: (G,) float > 0, each Gaussian's mass (any
    unit: only ratios count); group_names: (D,) the groups' names. A part's majority group is the
    one holding most of its mass; a tie goes to the lowest group index.
    """
    part_index = np.asarray(part_index)
    gt_group = np.asarray(gt_group, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    n_groups = len(group_names)
    if part_index.ndim != 1 or gt_group.shape != part_index.shape or weights.shape != part_index.shape:
        raise ValueError(f"part_index, gt_group and weights must all be (G,), got {part_index.shape}, "
                         f"{gt_group.shape}, {weights.shape}")
    if part_index.size == 0:
        raise ValueError("no Gaussians to score")
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError("weights must be finite and strictly positive (a massless part has no majority)")
    if gt_group.min() < 0 or gt_group.max() >= n_groups:
        raise ValueError(f"gt_group must lie in 0..{n_groups - 1} (one per group name), found "
                         f"{gt_group.min()}..{gt_group.max()}")
    _, part_of = np.unique(part_index, return_inverse=True)
    mass = np.zeros((part_of.max() + 1, n_groups))  # (K, D): mass of part k on group g
    np.add.at(mass, (part_of, gt_group), weights)
    majority = mass.argmax(axis=1)  # (K,)
    group_mass = mass.sum(axis=0)  # (D,)
    rows = []
    for g, name in enumerate(group_names):
        claimed = majority == g  # the parts of P_g
        hit = mass[claimed, g].sum()  # mass of P_g truly in g = mass of g inside P_g
        rows.append(GroupScore(
            name=str(name), n_gaussians=int((gt_group == g).sum()),
            mass_fraction=float(group_mass[g] / group_mass.sum()), n_parts=int(claimed.sum()),
            purity=float(hit / mass[claimed].sum()) if claimed.any() else float("nan"),
            recall=float(hit / group_mass[g]) if group_mass[g] > 0 else float("nan")))
    return PartScores(n_parts=len(majority), ari=adjusted_rand(part_index, gt_group),
                      split_ari=adjusted_rand(majority[part_of], gt_group), groups=rows)


def part_scores(clustering: PartClustering, beads: dict[str, np.ndarray]) -> PartScores:
    """:func:`score_parts` of a run's parts against a simulation's bead domains.

    Each Gaussian's group is :func:`gt_domains_for_gaussians`; its mass is the clustering's
    own weight, ``clustering.inputs.weights`` (|mass|, amplitude x width^3, floored just above 0).
    """
    return score_parts(clustering.part_index, gt_domains_for_gaussians(clustering.inputs.centres, beads),
                       clustering.inputs.weights, beads["domain_names"])


def format_part_scores(scores: PartScores) -> str:
    """A summary line and a plain-text table, one row per ground-truth group, of ``scores``."""
    width = max([5] + [len(r.name) for r in scores.groups])
    lines = [f"parts: {scores.n_parts} found; ARI {scores.ari:.3f}; split-tolerant ARI {scores.split_ari:.3f}",
             f"{'group':>{width}} {'Gaussians':>9} {'mass':>6} {'parts':>5} {'purity':>6} {'recall':>6}"]
    for r in scores.groups:
        lines.append(f"{r.name:>{width}} {r.n_gaussians:>9d} {r.mass_fraction:>6.3f} {r.n_parts:>5d} "
                     f"{r.purity:>6.3f} {r.recall:>6.3f}")
    return "\n".join(lines)


def optional_domains(beads: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """{domain: (S,) bool, present in each state} for the domains absent in some states."""
    out = {}
    for d in np.unique(beads["domains"]):
        present = beads["presence"][:, beads["domains"] == d].mean(axis=1) > 0.5
        if present.any() and not present.all():
            out[int(d)] = present
    return out


def domain_presence(model: StageModel, latents: np.ndarray, labels: np.ndarray, beads: dict[str, np.ndarray],
                    n_images: int = 2000, seed: int = 0) -> list[DomainPresence]:
    """Gate medians of every optional domain (see the module docstring).

    model: a trained stage-1 or stage-2 model (its rest centres and gates); latents: (N, zdim);
    labels: (N,) ground-truth state per image; at most ``n_images`` images (a seeded sample)
    are decoded.
    """
    domain_of = gt_domains_for_gaussians(model.centres.detach().cpu().numpy(), beads)
    pick = np.sort(np.random.default_rng(seed).permutation(len(labels))[:n_images])
    with torch.no_grad():
        gates = model.gates(torch.as_tensor(latents[pick], dtype=torch.float32)).cpu().numpy()  # (n, G)
    out = []
    for d, present in optional_domains(beads).items():
        on = domain_of == d
        if not on.any():
            out.append(DomainPresence(str(beads["domain_names"][d]), 0, float("nan"), float("nan"), 0, 0))
            continue
        per_image = gates[:, on].mean(axis=1)
        has = present[labels[pick]]
        out.append(DomainPresence(str(beads["domain_names"][d]), int(on.sum()),
                                  float(np.median(per_image[~has])) if (~has).any() else float("nan"),
                                  float(np.median(per_image[has])) if has.any() else float("nan"),
                                  int((~has).sum()), int(has.sum())))
    return out


def format_presence(rows: list[DomainPresence]) -> str:
    """A plain-text table of :func:`domain_presence` rows."""
    lines = [f"{'domain':>10} {'Gaussians':>9} {'median gate absent':>18} {'present':>8} {'images':>13}"]
    for r in rows:
        lines.append(f"{r.name:>10} {r.n_gaussians:>9d} {r.median_absent:>18.3f} {r.median_present:>8.3f} "
                     f"{r.n_absent:>6d}/{r.n_present:<6d}")
    return "\n".join(lines)
