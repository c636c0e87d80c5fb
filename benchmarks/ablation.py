"""Ablations of stage 2 on a finished run: without anchors, and with too many parts.

Each variant copies the run's consensus and stage 1 (so only the clustering and stage 2
differ), re-runs ``parts`` and ``hierarchical`` with the variant's options, and is scored like
the run itself (CryoBench per-conformation AUC against the simulation's ground truth, and the
adjusted Rand index of the parts against the ground-truth domains). Variants:

- ``no-anchors``: stage 2 without per-part rigid motions (Gaussians move by residuals only);
- ``parts-64``: level 1 fixed at 64 clusters, no level-2 splits (over-segmentation);
- ``features``: level 1 clusters the learned features (the paper's rule) instead of the dynamics.

With ``--epochs-2 N`` every variant, the baseline included, re-runs stage 2 for N epochs (a
cheaper ablation whose rows still differ in one thing only); without it the baseline row is the
run itself.

Usage::

    python benchmarks/ablation.py --run RUN --particles sim/particles.star --gt sim/gt \\
        [--variants no-anchors parts-64] [--epochs-2 N] [--out benchmarks/results/ablation_hinge.txt]

Prints one table (baseline first) and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "baseline": ({}, []),
    "no-anchors": ({"hierarchical": {"anchors": False}}, []),
    "parts-64": ({}, ["--parts", "64", "--parts-level2", "1"]),
    "features": ({}, ["--parts-signal", "features"]),
}


def cryospire(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryospire_core.cli.main", *args], check=True, capture_output=True,
                          text=True)


def score(run: Path, gt: Path) -> dict:
    out = run / "scores.json"
    if not out.exists():
        cryospire("evaluate", "--gt", str(gt), "--run", str(run), "--rows", "0", "--out", str(out))
    data = json.loads(out.read_text())
    s = data["scores"]["summary"]
    cfg = json.loads((run / "config.json").read_text())
    with np.load(run / "parts" / "clustering.npz") as z:
        n_parts = int(z["level1"].shape[0])
    return {"mean": s["mean_auc"], "median": s["median_auc"], "ari": data.get("part_ari", float("nan")),
            "parts": n_parts, "anchors": cfg["train"]["hierarchical"].get("anchors", True)}


def make_variant(base: Path, out: Path, name: str, particles: str, epochs_2: int | None) -> float:
    """Copy base's consensus and stage 1 into out, apply the variant, train parts + stage 2.
    Returns the wall time of the re-run (s); 0 when out already holds a finished stage 2."""
    if (out / "hierarchical" / "model.pt").exists():
        return 0.0
    if not out.exists():
        out.mkdir(parents=True)
        for rel in ("config.json", "consensus", "discovery"):
            (shutil.copytree if (base / rel).is_dir() else shutil.copy)(base / rel, out / rel)
        changes, _ = VARIANTS[name]
        cfg = json.loads((out / "config.json").read_text())
        for section, values in changes.items():
            cfg["train"][section].update(values)
        if epochs_2 is not None:
            cfg["train"]["hierarchical"]["epochs"] = epochs_2
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
    t0 = time.perf_counter()
    cryospire("train", particles, "--out", str(out), "--resume", "--stage", "parts", "--stage", "hierarchical",
              "--quiet", *VARIANTS[name][1])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished `cryospire train` run on a simulation")
    parser.add_argument("--particles", required=True, help="the particles the run was trained on")
    parser.add_argument("--gt", required=True, type=Path, help="the simulation's gt/ folder")
    parser.add_argument("--variants", nargs="+", choices=tuple(v for v in VARIANTS if v != "baseline"),
                        default=["no-anchors", "parts-64"])
    parser.add_argument("--epochs-2", type=int, help="re-run every variant and the baseline with this many stage-2 epochs")
    parser.add_argument("--work", type=Path, help="where variant runs go (default: beside --run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation.txt"))
    args = parser.parse_args()
    work = args.work or args.run.parent
    suffix = "" if args.epochs_2 is None else f"_e{args.epochs_2}"
    rows = [] if args.epochs_2 is not None else [("baseline", score(args.run, args.gt), float("nan"))]
    for name in (["baseline"] if args.epochs_2 is not None else []) + args.variants:
        run = work / f"{args.run.name}{suffix}_{name}"
        seconds = make_variant(args.run, run, name, args.particles, args.epochs_2)
        rows.append((name, score(run, args.gt), seconds))
    base = rows[0][1]["mean"]
    epochs = "as trained" if args.epochs_2 is None else f"{args.epochs_2} epochs"
    lines = [f"ablation of {args.run} (stage 1 shared; parts and stage 2 ({epochs}) re-run per variant)",
             f"{'variant':>11} {'parts':>5} {'anchors':>7} {'AUC mean':>8} {'median':>7} {'vs base':>8} "
             f"{'part ARI':>8} {'re-run s':>8}"]
    for name, r, seconds in rows:
        lines.append(f"{name:>11} {r['parts']:>5d} {str(r['anchors']):>7} {r['mean']:>8.4f} {r['median']:>7.4f} "
                     f"{r['mean'] - base:>+8.4f} {r['ari']:>8.3f} {seconds:>8.0f}")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
