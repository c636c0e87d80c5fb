"""How well a trained run recovered the ground truth's parts (simulations only).

Two scores, both against a simulation's ``gt/beads.npz`` (bead domains, positions and presence
per state) and ``gt/labels.npy`` (state of each image):

- part ARI: adjusted Rand index between the discovered parts of the stage-1 Gaussians
  (``RUN/parts/clustering.npz``) and the ground-truth domain of each Gaussian (the domain of
  its nearest bead, :func:`parts.gt_domains_for_gaussians`);
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
from cryospire_core.models.parts import (
    PartClustering,
    adjusted_rand,
    gt_domains_for_gaussians,
)
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


def load_beads(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A simulation's gt/beads.npz: centres (S, B, 3) Å, domains (B,), domain_names (D,), presence (S, B)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "beads", "a simulation's gt/beads.npz", "no such file")
    with np.load(path, allow_pickle=False) as z:
        beads = {k: z[k] for k in ("centres", "domains", "domain_names", "presence") if k in z}
    for key in ("centres", "domains", "domain_names", "presence"):
        if key not in beads:
            raise InputError(path, key, "an array written by `cryospire simulate`", "missing")
    return beads


def part_ari(clustering: PartClustering, beads: dict[str, np.ndarray]) -> float:
    """Adjusted Rand index of the clustering's parts against the ground-truth domains."""
    return adjusted_rand(clustering.part_index, gt_domains_for_gaussians(clustering.inputs.centres, beads))


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
