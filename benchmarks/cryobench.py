"""A CryoBench-scale run on this machine: train a simulated set stage by stage, score every epoch's
model against the ground truth, and print the table of issue 14 (wall time, CPU time, peak RSS,
AUC against the floor and the ceiling) plus AUC against wall time.

Each epoch is one ``cryospire train --resume`` call asking for one more epoch (there is no
learning-rate schedule, so this trains exactly what one call with all the epochs would), followed
by ``cryospire evaluate``; the training wall time excludes the scoring. The floor is the run's
consensus map, scored against every state (a map at a smaller box than the ground truth is
resampled onto it). Everything runs as separate commands, as a user would run them; the script
resumes where it stopped (the run folder and ``scores/`` say what is done).

Example (the 128 px set of the closing note)::

    cryospire simulate --preset hinge --box 128 --n 100000 --snr 0.01 --oversample 1 --out DATA
    python benchmarks/cryobench.py --data DATA --run RUN --epochs-consensus 3 --epochs-1 3 --epochs-2 4 \\
        --out benchmarks/results/cryobench_hinge128.txt
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish  # noqa: E402

CRYOSPIRE = [sys.executable, "-m", "cryospire_core.cli.main"]


def _children_usage() -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of every finished child process so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


class Ledger:
    """The timings of the training commands, kept in RUN/../<run>.ledger.json so an interrupted
    benchmark resumes with its totals."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"wall": 0.0, "cpu": 0.0, "rss_mb": 0.0,
                                                                         "points": []}

    def train(self, args: list[str]) -> None:
        cpu0, _ = _children_usage()
        t0 = time.perf_counter()
        subprocess.run(CRYOSPIRE + ["train", *args, "--quiet"], check=True)
        wall = time.perf_counter() - t0
        cpu1, rss = _children_usage()
        self.data["wall"] += wall
        self.data["cpu"] += cpu1 - cpu0
        self.data["rss_mb"] = max(self.data["rss_mb"], rss)
        self.save()

    def point(self, stage: str, epoch: int, scores: dict) -> None:
        s = summary(scores)
        self.data["points"].append({"stage": stage, "epoch": epoch, "wall": self.data["wall"], **s})
        self.save()
        print(f"  {stage:<12} epoch {epoch:>2}: train wall {self.data['wall'] / 60:7.1f} min, "
              f"AUC mean {s['mean']:.4f}, median {s['median']:.4f}", flush=True)

    def done(self, stage: str, epoch: int) -> bool:
        return any(p["stage"] == stage and p["epoch"] == epoch for p in self.data["points"])

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def evaluate(gt: Path, out: Path, *what: str) -> dict:
    """``cryospire evaluate`` scores (JSON), computed once and kept in ``out``."""
    if not out.exists():
        subprocess.run(CRYOSPIRE + ["evaluate", "--gt", str(gt), *what, "--out", str(out), "--rows", "0"], check=True,
                       stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def summary(scores: dict) -> dict:
    """AUC mean and median of an `evaluate --out` file's score table."""
    s = scores["scores"]["summary"]
    return {"mean": s["mean_auc"], "median": s["median_auc"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a `cryospire simulate` folder (particles.star, gt/)")
    p.add_argument("--run", type=Path, required=True, help="the run folder to train (resumed when it exists)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--epochs-consensus", type=int, required=True)
    p.add_argument("--epochs-1", type=int, required=True)
    p.add_argument("--epochs-2", type=int, required=True)
    p.add_argument("--train-args", default="", help="more `cryospire train` options (e.g. box options), quoted")
    p.add_argument("--out", type=Path, help="append the table to this file")
    args = p.parse_args()

    data, run, gt = args.data, args.run, args.data / "gt"
    scores = run.parent / f"{run.name}.scores"
    scores.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(run.parent / f"{run.name}.ledger.json")
    load0 = os.getloadavg()
    first = ["--profile", args.profile, "--epochs-consensus", str(args.epochs_consensus), "--epochs-1", "1",
             "--epochs-2", "1", *args.train_args.split()]
    resume = ["--resume"] if (run / "config.json").exists() else []
    base = [str(data / "particles.star"), "--out", str(run)]

    if not ledger.done("consensus", args.epochs_consensus):
        ledger.train(base + (resume or first) + ["--stage", "consensus"])
        ledger.point("consensus", args.epochs_consensus,
                     evaluate(gt, scores / "consensus.json", "--map", str(run / "consensus" / "map.mrc")))
    for k in range(1, args.epochs_1 + 1):
        if not ledger.done("stage 1", k):
            ledger.train(base + ["--resume", "--stage", "discovery", "--epochs-1", str(k)])
            ledger.point("stage 1", k, evaluate(gt, scores / f"stage1_{k:02d}.json", "--run", str(run)))
    for k in range(1, args.epochs_2 + 1):
        if not ledger.done("stage 2", k):
            ledger.train(base + ["--resume", "--epochs-2", str(k)])
            ledger.point("stage 2", k, evaluate(gt, scores / f"stage2_{k:02d}.json", "--run", str(run)))

    ceiling = json.loads((scores / f"stage2_{args.epochs_2:02d}.json").read_text())["ceiling"]
    top = summary({"scores": ceiling})  # the same table format
    final = ledger.data["points"][-1]
    floor = ledger.data["points"][0]
    cfg = json.loads((run / "config.json").read_text())
    boxes = "/".join(str(min(cfg["train"][s].get("box") or 10**6, _stack_box(data)))
                     for s in ("consensus", "discovery", "hierarchical"))
    meta = json.loads((data / "metadata.json").read_text())
    lines = [
        f"# benchmarks/cryobench.py {' '.join(sys.argv[1:])}",
        f"# {os.cpu_count()} CPUs, load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f}",
        "box  particles  SNR    stage boxes  wall h  CPU h  peak RSS GB  AUC mean  AUC median  floor mean  "
        "floor median  ceiling  margin",
        f"{_stack_box(data):>3}  {meta.get('n_images', '?'):>9}  {meta.get('snr', '?'):<5}  {boxes:<11}  "
        f"{ledger.data['wall'] / 3600:6.2f}  {ledger.data['cpu'] / 3600:5.2f}  {ledger.data['rss_mb'] / 1024:11.2f}  "
        f"{final['mean']:8.4f}  {final['median']:10.4f}  {floor['mean']:10.4f}  {floor['median']:12.4f}  "
        f"{top['mean']:7.4f}  {final['mean'] - floor['mean']:+.4f}",
        "AUC against training wall time (each epoch's model, scored by `cryospire evaluate`):",
        "stage         epoch  wall min  AUC mean  AUC median",
        *(f"{q['stage']:<12}  {q['epoch']:>5}  {q['wall'] / 60:8.1f}  {q['mean']:8.4f}  {q['median']:10.4f}"
          for q in ledger.data["points"]),
    ]
    publish("\n".join(lines), args.out)
    return 0


def _stack_box(data: Path) -> int:
    meta = json.loads((data / "metadata.json").read_text())
    return int(meta["box"])


if __name__ == "__main__":
    sys.exit(main())
