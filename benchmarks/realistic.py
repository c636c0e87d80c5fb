"""Part discovery and map quality on real molecules (issue 13): simulate, train, score, tabulate.

The sets are in ``benchmarks/realistic/sets.json``: an atomic model from
``benchmarks/structures/`` (wwPDB entries shipped in the MDAnalysisTests 2.11.0 source
distribution), a pixel size, and a spec of groups, motions, presence states or flexible loops
(see ``cryospire_core/sim/structure.py``). Each set's ``role`` says whether it was used to choose
part-discovery constants (``tune``) or only to report them (``held-out``).

Per set, as a user would run it (separate ``cryospire`` commands, cached in ``--work``):

1. ``cryospire simulate --structure ... --spec ... --apix ...`` (64 px, 20,000 images, SNR 0.05);
2. ``cryospire train`` with the cpu profile (``--stage1``: consensus, stage 1 and parts only);
3. ``cryospire evaluate --run`` (per-conformation AUC, part scores, the ideal homogeneous map:
   the noise-free population mean) and ``cryospire evaluate --map RUN/consensus/map.mrc`` (the
   floor).

Example::

    python benchmarks/realistic.py --work /data/realistic --out benchmarks/results/realistic.txt
    python benchmarks/realistic.py --work /data/realistic --sets tcr-complex --stage1   # parts only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from cryospire_core.analysis.partscores import load_beads, part_scores
from cryospire_core.models.parts import PartClustering

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish  # noqa: E402

HERE = Path(__file__).resolve().parent
SETS = HERE / "realistic" / "sets.json"
STRUCTURES = HERE / "structures"
CRYOSPIRE = [sys.executable, "-m", "cryospire_core.cli.main"]


def load_sets() -> dict[str, dict]:
    return {k: v for k, v in json.loads(SETS.read_text()).items() if not k.startswith("_")}


def _run(args: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"$ cryospire {' '.join(args)}\n")
        f.flush()
        subprocess.run(CRYOSPIRE + args, check=True, stdout=f, stderr=subprocess.STDOUT)


def simulate(name: str, s: dict, folder: Path, n: int, snr: float) -> Path:
    data = folder / "data"
    if not (data / "particles.star").exists():
        folder.mkdir(parents=True, exist_ok=True)
        spec = folder / "spec.json"
        spec.write_text(json.dumps(s["spec"], indent=1))
        _run(["simulate", "--structure", str(STRUCTURES / s["structure"]), "--spec", str(spec),
              "--apix", str(s["apix"]), "--box", "64", "--n", str(n), "--snr", str(snr), "--out", str(data),
              "--quiet", "--overwrite"], folder / "commands.log")
    return data


def train(folder: Path, data: Path, stage1: bool, threads: int, extra: list[str]) -> tuple[Path, float]:
    """Train (or resume) RUN; returns it and the wall seconds this call spent training."""
    run = folder / "run"
    stages = ["--stage", "consensus", "--stage", "discovery", "--stage", "parts"] if stage1 else []
    resume = ["--resume"] if (run / "config.json").exists() else []
    t0 = time.perf_counter()
    _run(["train", str(data / "particles.star"), "--out", str(run), "--profile", "cpu", "--threads", str(threads),
          "--quiet", *resume, *stages, *extra], folder / "commands.log")
    return run, time.perf_counter() - t0


def evaluate(folder: Path, data: Path, run: Path, stage1: bool) -> dict:
    """Scores of the run and of its consensus (the floor), from `cryospire evaluate --out`."""
    tag = "stage1" if stage1 else "final"
    scores = {}
    for key, what in (("run", ["--run", str(run)]), ("floor", ["--map", str(run / "consensus" / "map.mrc")])):
        out = folder / f"{tag}_{key}.json"
        out.unlink(missing_ok=True)  # the run may have changed since
        _run(["evaluate", "--gt", str(data / "gt"), *what, "--out", str(out), "--rows", "0"], folder / "commands.log")
        scores[key] = json.loads(out.read_text())
    return scores


def rescored_parts(folder: Path) -> dict:
    """The part scores of ``folder``/run's saved parts against ``folder``/data/gt/beads.npz, by
    today's code (the clustering or the ground-truth rule may have changed since it was evaluated)."""
    clustering = PartClustering.from_npz(folder / "run" / "parts" / "clustering.npz")
    return dataclasses.asdict(part_scores(clustering, load_beads(folder / "data" / "gt" / "beads.npz")))


def row(name: str, s: dict, scores: dict) -> dict:
    r, f = scores["run"], scores["floor"]
    parts = r.get("parts", {})
    groups = parts.get("groups", [])
    purity = [g["purity"] for g in groups if g["purity"] is not None and not math.isnan(g["purity"])]
    return {
        "set": name, "role": s["role"], "groups": len(groups), "parts": parts.get("n_parts"),
        "ari": parts.get("ari"), "split_ari": parts.get("split_ari"),
        "purity_min": min(purity) if purity else float("nan"),
        "recall_min": min((g["recall"] for g in groups), default=float("nan")),
        "found": sum(1 for g in groups if g["n_parts"] > 0),
        "auc_mean": r["scores"]["summary"]["mean_auc"], "auc_median": r["scores"]["summary"]["median_auc"],
        "floor": f["scores"]["summary"]["mean_auc"],
        "ideal": r["ideal_homogeneous"]["summary"]["mean_auc"] if "ideal_homogeneous" in r else float("nan"),
        "ceiling": r["ceiling"]["summary"]["mean_auc"],
        "group_rows": groups,
    }


def table(rows: list[dict]) -> str:
    head = (f"{'set':<12} {'role':<8} {'model':<7} {'groups':>6} {'found':>5} {'parts':>5} {'ARI':>6} {'split':>6} "
            f"{'purity':>6} {'recall':>6} {'AUC mean':>8} {'median':>7} {'floor':>7} {'ideal':>7} {'ceiling':>7} "
            f"{'vs ideal':>8}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['set']:<12} {r['role']:<8} {r['model']:<7} {r['groups']:>6} {r['found']:>5} {r['parts']:>5} {r['ari']:>6.3f} "
                     f"{r['split_ari']:>6.3f} {r['purity_min']:>6.3f} {r['recall_min']:>6.3f} {r['auc_mean']:>8.4f} "
                     f"{r['auc_median']:>7.4f} {r['floor']:>7.4f} {r['ideal']:>7.4f} {r['ceiling']:>7.4f} "
                     f"{r['auc_mean'] - r['ideal']:>+8.4f}")
    lines.append("groups: ground-truth groups; found: groups that are the majority of at least one part; purity, "
                 "recall: the lowest over groups (mass-weighted); ideal: the noise-free population-mean map")
    lines.append("per group (name: parts, purity, recall):")
    for r in rows:
        lines.append(f"  {r['set']}: " + "; ".join(f"{g['name']} {g['n_parts']}, {g['purity']:.2f}, {g['recall']:.2f}"
                                                   for g in r["group_rows"]))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the simulations and runs (kept, resumed)")
    p.add_argument("--sets", default=",".join(load_sets()), help="comma-separated set names (default: all)")
    p.add_argument("--n", type=int, default=20000, help="images per set (default 20,000)")
    p.add_argument("--snr", type=float, default=0.05)
    p.add_argument("--stage1", action="store_true", help="consensus, stage 1 and parts only (part scores)")
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--train-args", default="", help="more `cryospire train` options, quoted")
    p.add_argument("--report", action="store_true",
                   help="run nothing: tabulate the scores already in --work (stage 2 where trained, else stage 1), "
                        "the parts scored again by the current rules where the run's clustering is there")
    p.add_argument("--out", type=Path, help="append the table to this file")
    args = p.parse_args()

    sets = load_sets()
    unknown = [n for n in args.sets.split(",") if n not in sets]
    if unknown:
        p.error(f"unknown sets {', '.join(unknown)}; choose from {', '.join(sets)}")
    rows = []
    for name in args.sets.split(","):
        s, folder = sets[name], args.work / name
        if args.report:
            tag = "final" if (folder / "final_run.json").exists() else "stage1"
            if (folder / f"{tag}_run.json").exists():
                scores = {k: json.loads((folder / f"{tag}_{k}.json").read_text()) for k in ("run", "floor")}
                if (folder / "run" / "parts" / "clustering.npz").is_file():
                    scores["run"]["parts"] = rescored_parts(folder)
                rows.append({**row(name, s, scores), "model": "stage 2" if tag == "final" else "stage 1"})
            continue
        data = simulate(name, s, folder, args.n, args.snr)
        run, wall = train(folder, data, args.stage1, args.threads, args.train_args.split())
        rows.append({**row(name, s, evaluate(folder, data, run, args.stage1)),
                     "model": "stage 1" if args.stage1 else "stage 2"})
        print(f"{name}: trained {wall / 60:.1f} min this call; AUC mean {rows[-1]['auc_mean']:.4f}, "
              f"split ARI {rows[-1]['split_ari']:.3f}", flush=True)
    text = "\n".join([f"# python benchmarks/realistic.py {' '.join(sys.argv[1:])}",
                      # the parts vary with the thread count (floating-point order), so it is recorded
                      f"# {os.cpu_count()} CPUs, {args.threads} thread(s) per training, "
                      f"load average {os.getloadavg()[0]:.2f}", table(rows)])
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
