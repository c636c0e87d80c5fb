"""What limits part discovery on a simulated set (issue 13): stage 1's decoded motion, or the clustering.

For each set (``SET/data``, a simulation with ``gt/``; ``SET/RUN``, a run whose parts are done,
as ``benchmarks/realistic.py`` or ``benchmarks/parts_seeds.py`` leave them) it compares stage 1's
decoded motion at its gate sample with the truth and clusters both:

1. **Fidelity**, per ground-truth group: the rms of the true and of the decoded displacements
   (Å), the slope of decoded on true and their correlation, for each Gaussian as decoded and
   averaged over its ``DYNAMICS_NEIGHBOURS`` nearest (what the dynamics signature averages). A
   Gaussian's true displacement in an image is that of its nearest bead (nearest to the beads'
   population-mean positions) in the image's state, from the bead's mean position; the mean
   displacement of all Gaussians in each image is removed from both (a common shift is no part).
2. **Oracle parts**: the split-tolerant ARI of the run's parts, and of the same clustering rules
   (:func:`~cryospire_core.models.parts.recluster`) fed, instead of the decoded motion, the true
   motion and presence: the parts a perfect stage 1 would give. Each with two signatures: the
   ``displacement`` profile the product clusters (:func:`~cryospire_core.models.parts.dynamics_signature`)
   and a ``twist`` profile: per image, the rigid motion (rotation and the translation it implies at
   the molecule's centre) that best fits the displacements of each Gaussian's ``TWIST_NEIGHBOURS``
   nearest, which is the same for every Gaussian of a rigid body however far it is from the axis.
   Each is also reported after the rigid reassignment the product's parts end with
   (:func:`~cryospire_core.models.parts.rigid_reassign`), and for a skinned stage 1 the
   handles' own twist (:func:`skinned_twist_signature`).

Example::

    python benchmarks/parts_oracle.py --work /data/realistic --sets cftr-hinge2 cyt-twist
    python benchmarks/parts_oracle.py --work /data/realistic --sets cftr-hinge2 --run seeds/default-s1/run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from cryospire_core.analysis.partscores import (
    gt_domains_for_gaussians,
    load_beads,
    part_scores,
)
from cryospire_core.io.arrays import read_npy
from cryospire_core.models import parts
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import stage1_motion

#: Neighbours (the Gaussian included) whose displacements a Gaussian's local rigid motion is fitted to.
TWIST_NEIGHBOURS = 32
#: Neighbour counts the skinned-twist signature is averaged over (1: each Gaussian's own blend).
SKINNED_NEIGHBOURS = (1, 4, 16)
#: Images whose local rigid motions are fitted at once (bounds the (images, G, neighbours, 3) array).
TWIST_CHUNK = 64


def true_motion(beads: dict[str, np.ndarray], states: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each Gaussian's true displacement (S, G, 3) Å and presence (S, G) in images of ``states``
    (S,): those of its nearest bead (to the population-mean bead positions; centres (G, 3) Å).
    beads: a simulation's gt/beads.npz with ``centres`` (T, B, 3), ``presence`` (T, B) and
    ``populations`` (T,)."""
    pop = np.asarray(beads["populations"], np.float64)
    mean = np.einsum("t,tbc->bc", pop / pop.sum(), beads["centres"])
    _, nearest = cKDTree(mean).query(np.asarray(centres, np.float64))
    shifts = beads["centres"][states][:, nearest] - mean[nearest][None]
    return shifts.astype(np.float64), beads["presence"][states][:, nearest].astype(np.float64)


def centre_and_rg(centres: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """The weighted centre (3,) Å and radius of gyration (Å) of centres (G, 3) Å."""
    centre = np.average(centres, axis=0, weights=weights)
    return centre, float(np.sqrt(np.average(((centres - centre) ** 2).sum(1), weights=weights)))


def twist_signature(shifts: np.ndarray, gates: np.ndarray, centres: np.ndarray, masses: np.ndarray,
                    apix: float, neighbours: int = TWIST_NEIGHBOURS) -> np.ndarray:
    """(G, C) float32 like :func:`~cryospire_core.models.parts.dynamics_signature`, from each
    Gaussian's local rigid motion instead of its displacement.

    shifts: (S, G, 3) Å; gates: (S, G); centres: (G, 3) Å; masses: (G,). Per image, the
    displacements d_j of the ``neighbours`` nearest Gaussians (mass-weighted, centred on their
    centroid x̄) are fitted by v + ω × (x_j − x̄): ω = inertia⁻¹ Σ w_j r_j × d_j. The profile is
    ω × the molecule's radius of gyration (the displacement it causes one Rg from the axis) and
    the translation at the molecule's centre v − ω × (x̄ − centre), both in pixels, and the
    presence × GATE_PX; then averaged and reduced as the dynamics signature is.
    """
    S, G = np.asarray(gates).shape
    c = np.asarray(centres, np.float64)
    w = np.abs(np.asarray(masses, np.float64)) + 1e-12
    near = parts.nearest(c, neighbours)
    wn = w[near] / w[near].sum(1, keepdims=True)
    local = np.einsum("gk,gkc->gc", wn, c[near])
    centre, rg = centre_and_rg(c, w)
    omega, move = np.empty((S, G, 3)), np.empty((S, G, 3))
    for s in range(0, S, TWIST_CHUNK):
        v, omega[s:s + TWIST_CHUNK] = parts.fit_rigid(np.asarray(shifts[s:s + TWIST_CHUNK], np.float64)[:, near],
                                                      c[near] - local[:, None], wn, 0.05)
        move[s:s + TWIST_CHUNK] = v - np.cross(omega[s:s + TWIST_CHUNK], (local - centre)[None])
    profile = np.concatenate([omega.transpose(1, 0, 2).reshape(G, -1) * rg / apix,
                              move.transpose(1, 0, 2).reshape(G, -1) / apix,
                              np.asarray(gates, np.float64).T * parts.GATE_PX], axis=1)
    return parts.reduce_profile(profile, c, w)


def skinned_twist_signature(model, latents: np.ndarray, gates: np.ndarray, centres: np.ndarray, masses: np.ndarray,
                            apix: float, neighbours: int) -> np.ndarray:
    """(G, C) like :func:`twist_signature`, read from a skinned stage 1
    (:class:`~cryospire_core.models.discovery.SkinnedMotion`) instead of fitted: each handle's
    rigid motion at ``latents`` (S, zdim), as ω × the molecule's Rg and the translation at the
    molecule's centre (pixels), blended by each Gaussian's weights; then the presence × GATE_PX,
    averaged over ``neighbours`` and reduced as the dynamics signature is."""
    c = np.asarray(centres, np.float64)
    w = np.abs(np.asarray(masses, np.float64)) + 1e-12
    centre, rg = centre_and_rg(c, w)
    with torch.no_grad():
        rotvec, trans = (t.double().numpy() for t in model.skinned.motions(torch.as_tensor(latents)))
        blend = model.skinned.weights().double().numpy()  # (G, H)
    pivots = model.skinned.pivots.double().numpy()
    move = trans + np.cross(rotvec, (centre - pivots)[None])  # (S, H, 3) Å at the molecule's centre
    handle = np.concatenate([rotvec.transpose(1, 0, 2).reshape(len(pivots), -1) * rg / apix,
                             move.transpose(1, 0, 2).reshape(len(pivots), -1) / apix], axis=1)
    profile = np.concatenate([blend @ handle, np.asarray(gates, np.float64).T * parts.GATE_PX], axis=1)
    return parts.reduce_profile(profile, c, w, neighbours)


def fidelity(true: np.ndarray, decoded: np.ndarray, groups: np.ndarray, centres: np.ndarray,
             masses: np.ndarray, neighbours: int = 1) -> list[tuple[float, float, float, float]]:
    """Per group 0..D-1: (rms true Å, rms decoded Å, slope of decoded on true, correlation).

    true, decoded: (S, G, 3) Å; groups: (G,); with ``neighbours`` > 1 each Gaussian's
    displacements are first averaged, mass-weighted, over its nearest ``neighbours``. The mean
    displacement of all Gaussians in each image is removed from both."""
    w = np.abs(np.asarray(masses, np.float64)) + 1e-12
    near = parts.nearest(centres, neighbours)
    rows = []
    fields = []
    for x in (true, decoded):
        x = np.einsum("gk,sgkc->sgc", w[near], np.asarray(x, np.float64)[:, near]) / w[near].sum(1)[None, :, None]
        fields.append(x - np.einsum("g,sgc->sc", w / w.sum(), x)[:, None])
    for g in range(int(groups.max()) + 1):
        t, e = (f[:, groups == g].ravel() for f in fields)
        tt = float(t @ t)
        corr = float(np.corrcoef(t, e)[0, 1]) if t.std() > 0 and e.std() > 0 else float("nan")
        rows.append((float(np.sqrt(tt / t.size)), float(np.sqrt((e @ e) / e.size)),
                     float(t @ e) / tt if tt > 0 else float("nan"), corr))
    return rows


def oracle(folder: Path, run_name: str) -> list[str]:
    """The report lines of one set (see the module docstring)."""
    run = RunFolder(folder / run_name)
    motion = stage1_motion(run, run.n_particles(), run.train_config())
    beads = load_beads(folder / "data" / "gt" / "beads.npz")
    states = read_npy(folder / "data" / "gt" / "labels.npy", "labels")[motion.sample]
    true, presence = true_motion(beads, states, motion.centres)
    groups = gt_domains_for_gaussians(motion.centres, beads)
    names = [str(n) for n in beads["domain_names"]]
    lines = [f"{folder.name} ({run_name}): {len(motion.centres)} Gaussians, {len(states)} sampled images"]
    for label, k in (("as decoded", 1), (f"{parts.DYNAMICS_NEIGHBOURS}-nbr mean", parts.DYNAMICS_NEIGHBOURS)):
        rows = fidelity(true, motion.shifts, groups, motion.centres, motion.masses, k)
        lines.append(f"  fidelity {label:>12}: " + "; ".join(
            f"{n} rms {a:.2f}/{b:.2f} Å slope {s:.2f} corr {c:.2f}" for n, (a, b, s, c) in zip(names, rows)))

    def scored(signature: np.ndarray, gates: np.ndarray, shifts: np.ndarray | None = None):
        """The parts from ``signature`` (and, given the shifts (S, G, 3) Å, rigidly reassigned), scored."""
        clustering = parts.discover_parts(motion.features, motion.centres, motion.masses, signature, gates.mean(0),
                                          motion=None if shifts is None else shifts / motion.apix,
                                          gates=None if shifts is None else gates)
        return part_scores(clustering, beads)

    def split_ari(shifts, gates, kind) -> str:
        make = parts.dynamics_signature if kind == "displacement" else twist_signature
        signature = make(shifts, gates, motion.centres, motion.masses, motion.apix)
        plain, refined = scored(signature, gates), scored(signature, gates, shifts)
        return f"{plain.split_ari:.3f} ({plain.n_parts} parts; reassigned {refined.split_ari:.3f})"

    saved = part_scores(run.clustering(), beads)
    lines.append(f"  split ARI  run's parts {saved.split_ari:.3f} ({saved.n_parts} parts)")
    for kind in ("displacement", "twist"):
        lines.append(f"  split ARI  {kind:>12}: decoded {split_ari(motion.shifts, motion.gates, kind)}, "
                     f"true {split_ari(true, presence, kind)}")
    model = run.model("discovery")
    if model.cfg.handles > 0:
        found = [scored(skinned_twist_signature(model, motion.latents, motion.gates, motion.centres, motion.masses,
                                                motion.apix, k), motion.gates) for k in SKINNED_NEIGHBOURS]
        lines.append(f"  split ARI  skinned twist ({model.cfg.handles} handles): " + ", ".join(
            f"{k} nbr {s.split_ari:.3f} ({s.n_parts} parts)" for k, s in zip(SKINNED_NEIGHBOURS, found)))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder of SET/data + SET/RUN folders")
    p.add_argument("--sets", nargs="+", required=True)
    p.add_argument("--run", default="run", help="the run inside each set's folder (default: run)")
    p.add_argument("--out", type=Path, help="append the report to this file")
    args = p.parse_args(argv)
    lines = [f"# python benchmarks/parts_oracle.py {' '.join(sys.argv[1:] if argv is None else argv)}"]
    for name in args.sets:
        report = oracle(args.work / name, args.run)
        print("\n".join(report), flush=True)
        lines += report
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
