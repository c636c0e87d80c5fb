"""Speed (and optionally quality) of the heterogeneous models, stage 1 and stage 2.

Run:  .venv/bin/python benchmarks/models.py [--reps N] [--skip-paper-dense] [--quality]

Speed table: training images/s (forward + backward + optimiser step, batch 64, 64 px, CTF and
shifts, apix 6 Å) of stage 1 and stage 2 at the ``paper`` and ``cpu`` profile sizes, in the
``dense`` and ``lowrank`` MLP forms; "MLP ms" is the decode step alone (MLPs + deformation,
forward + backward of a sum), "render ms" the projection alone, both per batch. The mixture:
centres uniform in a ball of radius 0.3 D px, widths 1-2 px, K = 8 parts (stage 2). Timings are
the best of at least ``--reps`` runs and 3 s of runs after one warm-up (other processes on the
machine inflate the rest).
The last column is the projected time of a 20,000-image run of the profile's epochs.

Quality (``--quality``): a simulated data set (``--preset``: ``hinge2``, the hinge's two extreme
states, or any phantom preset; 32 px, ``--n`` images, ``--snr``), seeded from the ground-truth
beads at their mean position, is learnt by stage 1 and then by stage 2 (ground-truth domains as
parts, anchors at the domain Gaussian nearest its centroid), in each MLP form. Reported: final
data loss, the accuracy of 2-means on the latents (2-state data only) and the CryoBench
per-conformation AUC (metrics.py) of each stage, and the training seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryospire_core.imaging.ctf import make_ctf_params
from cryospire_core.imaging.geometry import random_rotations
from cryospire_core.imaging.render import project, rasterize
from cryospire_core.models.discovery import (
    DiscoveryConfig,
    PartDiscoveryModel,
    image_variance,
)
from cryospire_core.models.engine import Batch, LoopConfig, run_loop
from cryospire_core.models.hierarchical import HierarchicalConfig, PartAwareModel

BOX, APIX, BATCH, PARTS, N_IMAGES = 64, 6.0, 64, 8, 20000


def mixture(g: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(g, 3))
    r = 0.3 * BOX * rng.uniform(0, 1, g) ** (1 / 3)
    centres = d / np.linalg.norm(d, axis=1, keepdims=True) * r[:, None] * APIX
    return {"centres": centres, "widths": rng.uniform(1, 2, g) * APIX, "amplitudes": rng.uniform(0.5, 1.5, g),
            "box": BOX, "apix": APIX}


def batch(seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return Batch(index=torch.arange(BATCH), images=t(rng.normal(size=(BATCH, BOX, BOX))),
                 rotations=t(random_rotations(BATCH, rng)), shifts=t(rng.uniform(-5, 5, (BATCH, 2)) * APIX),
                 ctf=t(make_ctf_params(BATCH, rng.uniform(1e4, 3e4, BATCH), rng.uniform(1e4, 3e4, BATCH),
                                       rng.uniform(0, 180, BATCH))))


def build(stage: int, cfg):
    g = mixture(cfg.n_gaussians)
    if stage == 1:
        return PartDiscoveryModel.from_consensus(g, 1024, cfg)
    part = np.arange(cfg.n_gaussians) % PARTS
    anchors = np.stack([g["centres"][part == k].mean(0) for k in range(PARTS)])
    rng = np.random.default_rng(1)
    return PartAwareModel.from_parts(g, part, anchors, rng.normal(size=(PARTS, cfg.feature_dim)),
                                     rng.normal(size=(1024, cfg.zdim)) * 0.3, cfg)


def best_time(fn, reps: int, min_seconds: float = 3.0) -> float:
    """Best wall-clock time of at least ``reps`` calls (and at least ``min_seconds`` of calls)
    after a warm-up call: short spikes of the other processes on the machine then miss one."""
    fn()
    best, start, n = math.inf, time.perf_counter(), 0
    while n < reps or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best


def perturb(model) -> None:
    """Give the zero-initialised last layers values, as after some training (same cost)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("head.weight", "u_head.weight")):
                p.normal_(0, 0.01)


def speed_row(stage: int, profile: str, cfg, reps: int) -> list[str]:
    model = build(stage, cfg)
    perturb(model)
    opt = model.make_optimizer()
    b = batch()
    z = model.latents(b.index).detach().requires_grad_(True)

    def train_step():
        opt.zero_grad(set_to_none=True)
        model.loss(b)[0].backward()
        opt.step()

    def mlp_step():
        out = model.decode(z)
        (out.centres.sum() + out.amplitudes.sum()).backward()

    decoded = model.decode(z)
    centres, amps = (t.detach().requires_grad_(True) for t in (decoded.centres, decoded.amplitudes))

    def render_step():
        images = project(centres, model.widths.detach(), amps, b.rotations, b.shifts, model.lattice, ctf=b.ctf)
        images.pow(2).sum().backward()

    t_train, t_mlp, t_render = (best_time(f, reps) for f in (train_step, mlp_step, render_step))
    rate = BATCH / t_train
    run_min = cfg.epochs * N_IMAGES / rate / 60
    return [f"stage {stage}", profile, cfg.mlp_form, str(cfg.n_gaussians), f"{cfg.hidden}x{cfg.depth}",
            f"{rate:.1f}", f"{1e3 * t_mlp:.0f}", f"{1e3 * t_render:.0f}", str(cfg.epochs), f"{run_min:.1f}"]


def table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head] + rows)


def speed(reps: int, skip_paper_dense: bool, case: int | None = None) -> None:
    head = ["stage", "profile", "form", "G", "MLP", "img/s", "MLP ms", "render ms", "epochs", "20k-run min"]
    cases = []
    for profile in ("paper", "cpu"):
        for stage, config in ((1, DiscoveryConfig), (2, HierarchicalConfig)):
            base = getattr(config, profile)()
            for form in ("dense", "lowrank"):
                if skip_paper_dense and profile == "paper" and stage == 2 and form == "dense":
                    continue
                cases.append((stage, profile, dataclasses.replace(base, mlp_form=form)))
    if case is not None:  # the child process: one case, its row as JSON
        stage, profile, cfg = cases[case]
        print(json.dumps(speed_row(stage, profile, cfg, reps)))
        return
    rows = []
    for i in range(len(cases)):
        # One process per case: the allocator state a big case leaves behind (GBs of freed
        # arrays) was measured to slow the next cases in the same process several fold.
        args = [sys.executable, __file__, "--reps", str(reps), "--case", str(i)] + (["--skip-paper-dense"] * skip_paper_dense)
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(" ".join(rows[-1]), flush=True)
    print(f"\ntraining speed, batch {BATCH}, {BOX} px, {torch.get_num_threads()} threads "
          f"(20k-run: the profile's epochs over {N_IMAGES} images)")
    print(table(rows, head))


# ---------------------------------------------------------------------------------------------
# Quality


def quality(preset: str, n: int, snr: float, epochs1: int, epochs2: int, hidden2: int, depth2: int, rank: int,
            forms: list[str]) -> None:
    from sklearn.cluster import KMeans

    from cryospire_core.analysis.metrics import homogeneous_floor, per_conformation
    from cryospire_core.io.load import load_particles
    from cryospire_core.io.mrc import read_map
    from cryospire_core.sim.phantoms import make_phantom
    from cryospire_core.sim.simulate import simulate, write_simulation

    box = 32
    ph = make_phantom("hinge" if preset == "hinge2" else preset, box, 384.0 / box)
    if preset == "hinge2":
        ph = dataclasses.replace(ph, centres=ph.centres[[0, -1]], presence=ph.presence[[0, -1]],
                                 populations=np.array([0.5, 0.5]), state_names=("a", "b"))
    tmp = Path(tempfile.mkdtemp())
    out = write_simulation(tmp / "data", simulate(ph.name, box, n, snr=snr, seed=1, phantom=ph))
    ps = load_particles(out / "particles.star")
    labels = np.load(out / "gt" / "labels.npy")
    gt = [read_map(out / "gt" / f"vol_{k:03d}.mrc").data for k in range(ph.n_states)]
    mask = read_map(out / "gt" / "mask.mrc").data
    seed = {"centres": ph.centres.mean(0), "widths": ph.sigmas, "amplitudes": ph.amplitudes, "box": box,
            "apix": ph.apix}
    var = image_variance(ps)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    seed_map = rasterize(t(seed["centres"]), t(seed["widths"]), t(seed["amplitudes"]), ph.lattice).numpy()
    floor = homogeneous_floor(seed_map, gt, mask).summary()["mean_auc"]

    def kmeans_accuracy(z):
        if ph.n_states != 2:
            return "-"
        found = KMeans(2, n_init=4, random_state=0).fit_predict(z)
        return f"{max(np.mean(found == labels), np.mean(found != labels)):.3f}"

    def score(model):
        with torch.no_grad():
            table = per_conformation(model.latents.numpy(), labels, gt,
                                     lambda z: model.volume(torch.as_tensor(z)).numpy(), mask)
        return f"{table.summary()['mean_auc']:.4f}"

    def train(model, epochs, name):
        t = time.perf_counter()
        r = run_loop(model, model.make_optimizer(), ps, LoopConfig(epochs), tmp / f"{name}.pt", name, torch.device("cpu"))
        return r.history[-1], time.perf_counter() - t

    rows = []
    for form in forms:
        cfg1 = DiscoveryConfig(image_var=var, epochs=epochs1, mlp_form=form, rank=rank)
        m1 = PartDiscoveryModel.from_consensus(seed, len(ps), cfg1)
        loss1, t1 = train(m1, epochs1, f"s1_{form}")
        part = ph.domains
        centres = m1.base.centres.detach().numpy()
        feats = m1.features().detach().numpy()
        nearest = [np.flatnonzero(part == k)[np.argmin(((centres[part == k] - centres[part == k].mean(0)) ** 2).sum(1))]
                   for k in range(part.max() + 1)]
        cfg2 = HierarchicalConfig(image_var=var, epochs=epochs2, mlp_form=form, hidden=hidden2, depth=depth2, rank=rank)
        gate0 = 1 / (1 + np.exp(-cfg1.gate_bias))
        g2 = {"centres": centres, "widths": m1.widths.detach().numpy(),
              "amplitudes": m1.base.amplitudes.detach().numpy() * gate0, "box": box, "apix": ph.apix}
        m2 = PartAwareModel.from_parts(g2, part, centres[nearest], feats[nearest], m1.latents.numpy(), cfg2)
        loss2, t2 = train(m2, epochs2, f"s2_{form}")
        rows.append([form, f"{loss1:.4f}", kmeans_accuracy(m1.latents.numpy()), score(m1), f"{t1:.0f}",
                     f"{loss2:.4f}", kmeans_accuracy(m2.latents.numpy()), score(m2), f"{t2:.0f}"])
        print(" ".join(rows[-1]), flush=True)
    print(f"\nquality: {preset}, {ph.n_states} states, {box} px, {n} images, SNR {snr}; stage 1 {epochs1} epochs, "
          f"stage 2 {epochs2} epochs (MLP {hidden2} x {depth2}, rank {rank}); AUC max {(box / 2 - 1) / box:.3f}, "
          f"seed map (homogeneous floor) {floor:.4f}")
    print(table(rows, ["form", "s1 loss", "s1 2-means", "s1 AUC", "s1 s", "s2 loss", "s2 2-means", "s2 AUC", "s2 s"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--skip-paper-dense", action="store_true", help="skip stage 2 paper dense (slowest case)")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quality", action="store_true")
    p.add_argument("--preset", default="hinge2", help="hinge2 or a phantom preset (hinge, assembly, ...)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--snr", type=float, default=1.0)
    p.add_argument("--epochs1", type=int, default=8)
    p.add_argument("--epochs2", type=int, default=8)
    p.add_argument("--hidden2", type=int, default=64, help="stage-2 MLP width in the quality run")
    p.add_argument("--depth2", type=int, default=2, help="stage-2 MLP hidden layers in the quality run")
    p.add_argument("--rank", type=int, default=8, help="rank of the lowrank form in the quality run")
    p.add_argument("--forms", default="dense,lowrank")
    args = p.parse_args()
    if not args.no_speed:
        speed(args.reps, args.skip_paper_dense, args.case)
    if args.quality:
        quality(args.preset, args.n, args.snr, args.epochs1, args.epochs2, args.hidden2, args.depth2, args.rank,
                args.forms.split(","))


if __name__ == "__main__":
    main()
