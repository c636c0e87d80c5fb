"""Quality benchmark: cryospire against cryoDRGN on the simulator's presets, one table.

For each preset (hinge, random-hinge, assembly, mixed by default):

1. data: ``cryospire simulate --preset P --box 64 --n 20000 --snr 0.05 --seed 0`` into
   WORK/P/data (or reuse a simulation given by ``--data P=DIR``);
2. cryospire: ``cryospire train`` (cpu profile) into WORK/P/cryospire (or reuse a finished run
   given by ``--cryospire-run P=RUN``), scored by ``cryospire evaluate --gt DATA/gt --run RUN``
   (CryoBench per-conformation FSC at the image latent nearest each state's mean latent, and the
   part ARI);
3. cryoDRGN: ``cryodrgn train_vae`` on the same particles.mrcs / poses.pkl / ctf.pkl in its own
   virtual environment (WORK/cryodrgn-venv, made by this script), run only as a separate
   program; then ``cryodrgn eval_vol`` at the latents (z.EPOCH.pkl means) of the particles
   nearest each state's mean latent, picked by the same code as our evaluator
   (:func:`cryospire_core.analysis.metrics.representative_images`), scored by the same FSC code
   against the same ground truth and mask.

Every stage is cached in WORK: a finished stage leaves a ``*.json`` record and is skipped on a
rerun. Training runs are timed (wall clock) and their peak memory is the largest sum of the RSS
of the child process tree, polled every 0.2 s. Children get ``--threads`` BLAS/OpenMP threads.

Conventions, checked against the ground truth by FSC: our stacks are written white (particles
bright; metadata.json ``contrast``), which is what cryoDRGN expects by default (it inverts the
data sign unless ``--uninvert-data``); cryoDRGN's poses.pkl rotations are our A, and its
``eval_vol`` maps (no ``--flip``) come out in our hand, orientation and origin: on a 2,000-image
hinge run, the maps as written scored the best AUC against ground truth, above their z-, y- or
x-mirrored, axis-transposed, negated or one-voxel-shifted versions. The z-mirrored score is kept
in the JSON (``auc_mean_flipped``), so a change of convention in cryoDRGN would show.

Usage::

    python benchmarks/quality.py --work /tmp/quality \\
        [--presets hinge mixed] [--data hinge=/tmp/lead/hinge20k] [--cryospire-run hinge=RUN] \\
        [--epochs 20 | --epochs 20 hinge=2] [--score-epoch hinge=1] [--cryodrgn-arch large|small] \\
        [--tools cryospire cryodrgn] [--n 20000] [--threads 1] [--note TEXT] \\
        [--out benchmarks/results/quality.txt]

Prints one table and writes it to --out, with the rows as JSON beside it (same name, .json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from cryospire_core.analysis.metrics import (
    GroundTruth,
    ScoreTable,
    freq_to_angstrom,
    load_ground_truth,
    read_grid_map,
    representative_images,
    score_states,
)
from cryospire_core.io.atomic import write_json, write_text
from cryospire_core.io.safe_pickle import load_pickle

PRESETS = ("hinge", "random-hinge", "assembly", "mixed")
TOOL_NAMES = {"cryospire": "cryospire", "cryodrgn": "cryoDRGN"}  # --tools value -> table label
TORCH_VERSION = "2.13.0"  # the local index's CPU build; installed first so cryodrgn does not pull a CUDA one
CRYODRGN_VERSION = "4.3.1"
ZDIM = 8  # cryoDRGN's documented choice (README and tutorial: --zdim 8)
# Hidden layers x width of cryoDRGN's encoder and decoder: "large" is cryoDRGN 4.x's default
# (3 x 1024); "small" the 3 x 256 its tutorial recommends for a first pass at D = 128.
ARCHS = {"large": ("3", "1024"), "small": ("3", "256")}


@dataclass
class Measured:
    """A child program's wall time (s), peak RSS of its process tree (bytes) and exit code."""

    seconds: float
    peak_rss: int
    returncode: int


def tree_rss(proc: psutil.Process) -> int:
    """RSS (bytes) of ``proc`` and all its descendants; processes that just ended count 0."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(cmd: list[str], log: Path, env: dict[str, str] | None = None, poll_s: float = 0.2) -> Measured:
    """Run ``cmd`` with stdout and stderr to ``log``; wall time and peak RSS of its process tree."""
    t0 = time.perf_counter()
    peak = 0
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                peak = max(peak, tree_rss(proc))
            except psutil.NoSuchProcess:
                break
            time.sleep(poll_s)
        child.wait()
    return Measured(time.perf_counter() - t0, peak, child.returncode)


def run_checked(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Measured:
    """:func:`measure`, raising with the log's tail when the program fails."""
    m = measure(cmd, log, env)
    if m.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} exited {m.returncode}; end of {log}:\n{tail}")
    return m


def child_env(threads: int) -> dict[str, str]:
    """The environment of child programs: this checkout importable, ``threads`` compute threads."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def cryospire_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryospire_core.cli.main", *args]


def cached(record: Path, make) -> dict:
    """The JSON record of a finished stage, or ``make()`` (a dict) written there atomically."""
    if record.is_file():
        return json.loads(record.read_text())
    result = make()
    write_json(record, result)
    return result


# ---------------------------------------------------------------------------------------------
# data and cryospire


def simulate(preset: str, folder: Path, args: argparse.Namespace, env: dict[str, str]) -> Path:
    """A simulation of ``preset`` in ``folder`` (made unless its metadata.json exists)."""
    if not (folder / "metadata.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        run_checked(cryospire_cmd("simulate", "--preset", preset, "--box", str(args.box), "--n", str(args.n),
                                  "--snr", str(args.snr), "--seed", str(args.seed), "--out", str(folder),
                                  "--overwrite", "--quiet"), folder.parent / "simulate.log", env)
    return folder


def run_epochs(run: Path) -> int:
    """Image passes of a cryospire run: the sum of its training stages' epochs (config.json)."""
    train = json.loads((run / "config.json").read_text())["train"]
    return sum(int(train[stage]["epochs"]) for stage in ("consensus", "discovery", "hierarchical"))


def cryospire_side(preset: str, data: Path, work: Path, reuse: Path | None, args: argparse.Namespace,
                   env: dict[str, str]) -> dict:
    """Train (unless reused) and score cryospire on ``data``: the table row's fields."""
    run = reuse or work / "run"
    work.mkdir(parents=True, exist_ok=True)

    def train() -> dict:
        if reuse is not None:
            if not (reuse / "hierarchical" / "model.pt").is_file():
                raise RuntimeError(f"{reuse}: not a finished run (no hierarchical/model.pt)")
            return {"reused": str(reuse), "seconds": None, "peak_rss": None}
        quick = [] if args.cryospire_epochs is None else [
            f"--epochs-{stage}={args.cryospire_epochs}" for stage in ("consensus", "1", "2")]
        m = run_checked(cryospire_cmd("train", str(data / "particles.star"), "--out", str(run), "--profile", "cpu",
                                      "--resume", "--quiet", *quick), work / "train.log", env)
        return {"reused": None, "seconds": m.seconds, "peak_rss": m.peak_rss}

    record, scores_path = work / "train.json", work / "scores.json"
    if record.is_file() and json.loads(record.read_text())["reused"] != (None if reuse is None else str(reuse)):
        record.unlink()  # another run than the cached one: score it afresh
        scores_path.unlink(missing_ok=True)
    timing = cached(record, train)
    if not scores_path.is_file():
        run_checked(cryospire_cmd("evaluate", "--gt", str(data / "gt"), "--run", str(run), "--rows", "0",
                                  "--out", str(scores_path)), work / "evaluate.log", env)
    scores = json.loads(scores_path.read_text())
    n = len(np.load(data / "gt" / "labels.npy"))
    return row_fields(preset, "cryospire", scores["scores"], timing, n, run_epochs(run), scores.get("part_ari"),
                      note="cpu profile" + (f", reused run {reuse}" if reuse else ""))


# ---------------------------------------------------------------------------------------------
# cryoDRGN, only ever run as a separate program from its own virtual environment


def cryodrgn_venv(work: Path) -> Path:
    """WORK/cryodrgn-venv with torch (CPU build) and cryodrgn installed; returns its ``cryodrgn``."""
    venv = work / "cryodrgn-venv"
    exe = venv / "bin" / "cryodrgn"
    if not exe.is_file():
        log = work / "cryodrgn-venv.log"
        run_checked([sys.executable, "-m", "venv", str(venv)], log)
        pip = str(venv / "bin" / "pip")
        run_checked([pip, "install", "-q", f"torch=={TORCH_VERSION}"], work / "cryodrgn-venv-torch.log")
        run_checked([pip, "install", "-q", f"cryodrgn=={CRYODRGN_VERSION}"], work / "cryodrgn-venv-cryodrgn.log")
    return exe


def read_latents(path: Path) -> np.ndarray:
    """(N, zdim) latent means from a cryoDRGN z.EPOCH.pkl (its first pickled object)."""
    z = np.asarray(load_pickle(path), dtype=np.float64)
    if z.ndim != 2:
        raise RuntimeError(f"{path}: expected (N, zdim) latent means, found shape {z.shape}")
    return z


def write_zfile(path: Path, latents: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Write the latents of the images nearest each state's mean latent (one row per state, in
    state order) for ``eval_vol --zfile``; returns {state: image index}."""
    reps = representative_images(latents, labels)
    rows = np.stack([latents[reps[k]] for k in sorted(reps)])
    write_text(path, "\n".join(" ".join(f"{v:.8g}" for v in row) for row in rows) + "\n")
    return reps


def score_state_maps(gt: GroundTruth, maps: list[Path], reps: dict[int, int], title: str,
                     flip: bool = False) -> ScoreTable:
    """Score map i of ``maps`` against state sorted(reps)[i]; ``flip`` mirrors z (the other hand)."""
    def pairs():
        for path, k in zip(maps, sorted(reps)):
            vol = read_grid_map(path, gt.lattice).data
            yield k, (vol[::-1] if flip else vol), gt[k], reps[k]

    return score_states(pairs(), gt.mask, title, gt.lattice.apix)


def epoch_seconds(log: Path) -> list[float]:
    """Seconds of each finished epoch in a ``train_vae`` log ("=====> Epoch: E ... Finished in H:MM:SS.f")."""
    times = re.findall(r"=====> Epoch: (\d+) .*Finished in (\d+):(\d+):([\d.]+)", log.read_text(errors="replace"))
    return [int(h) * 3600 + int(m) * 60 + float(sec) for _, h, m, sec in times]


def cryodrgn_side(preset: str, data: Path, work: Path, epochs: int, score_epoch: int | None,
                  args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Train cryoDRGN on ``data`` for ``epochs``, render and score its maps after ``score_epoch``
    (1-based; default the last): the table row's fields."""
    exe = cryodrgn_venv(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "train"
    layers, width = ARCHS[args.cryodrgn_arch]
    options = ["--zdim", str(ZDIM), "-n", str(epochs), "--enc-layers", layers, "--enc-dim", width,
               "--dec-layers", layers, "--dec-dim", width, "--seed", str(args.seed), "--no-analysis",
               "--max-threads", str(args.threads), "--log-interval", "2000"]

    def train() -> dict:
        m = run_checked([str(exe), "train_vae", str(data / "particles.mrcs"), "--poses", str(data / "poses.pkl"),
                         "--ctf", str(data / "ctf.pkl"), "-o", str(out), *options], work / "train.log", env)
        return {"reused": None, "seconds": m.seconds, "peak_rss": m.peak_rss, "options": options}

    epoch = score_epoch or epochs  # cryoDRGN 4.x names the outputs after epoch E weights.E.pkl and z.E.pkl
    stopped = (epoch < epochs and (out / f"weights.{epoch}.pkl").is_file() and not (work / "train.json").is_file())
    timing = {"peak_rss": None} if stopped else cached(work / "train.json", train)  # a stopped run's memory is unknown
    if epoch < epochs:  # the time of the scored epochs: cryoDRGN's own epoch times (data loading excluded)
        times = epoch_seconds(work / "train.log")[:epoch]
        timing = {**timing, "seconds": sum(times) if len(times) == epoch else None}
    gt = load_ground_truth(data / "gt")
    latents = read_latents(out / f"z.{epoch}.pkl")
    maps_dir = work / f"maps_e{epoch}"
    zfile = work / f"z_states_e{epoch}.txt"
    reps = write_zfile(zfile, latents, gt.labels)
    maps = [maps_dir / f"vol_{i:03d}.mrc" for i in range(len(reps))]
    if not all(p.is_file() for p in maps):
        run_checked([str(exe), "eval_vol", str(out / f"weights.{epoch}.pkl"), "-c", str(out / "config.yaml"),
                     "--zfile", str(zfile), "-o", str(maps_dir), "--Apix", f"{gt.lattice.apix:g}", "--vol-start-index", "0"],
                    work / "eval_vol.log", env)
    title = f"per-conformation FSC: cryoDRGN {out} epoch {epoch}"
    table = score_state_maps(gt, maps, reps, title)
    flipped = score_state_maps(gt, maps, reps, title + " (z-flipped)", flip=True)
    write_json(work / f"scores_e{epoch}.json", {"scores": table.to_dict(), "auc_flipped": flipped.summary()})
    row = row_fields(preset, "cryoDRGN", table.to_dict(), timing, len(latents), epoch, None,
                     note=f"{CRYODRGN_VERSION} {args.cryodrgn_arch} ({layers}x{width}), zdim {ZDIM}"
                          + (f", scored after epoch {epoch} of {epochs}" if epoch < epochs else "")
                          + (" (training stopped there)" if stopped else ""))
    row["auc_mean_flipped"] = flipped.summary()["mean_auc"]
    return row


# ---------------------------------------------------------------------------------------------
# the table


def row_fields(preset: str, tool: str, scores: dict, timing: dict, n_images: int, epochs: int,
               part_ari: float | None, note: str = "") -> dict:
    """One table row from ``scores`` (a :meth:`ScoreTable.to_dict`, as `cryospire evaluate --out` writes
    it) and ``timing`` ({"seconds", "peak_rss" (bytes)}, None when not measured): AUC mean/median over
    states, FSC=0.5 resolution (Å; median and mean over states), wall time (s), image passes per second
    (images x epochs / wall), peak RSS (GB) and part ARI."""
    s = scores["summary"]
    res = [freq_to_angstrom(st["res_05"], scores["apix"]) for st in scores["states"]]
    seconds, rss = timing.get("seconds"), timing.get("peak_rss")
    return {"preset": preset, "tool": tool, "epochs": epochs, "n_images": n_images, "n_states": s["n_states"],
            "auc_mean": s["mean_auc"], "auc_median": s["median_auc"], "auc_std": s["std_auc"],
            "res05_median_A": float(np.median(res)), "res05_mean_A": float(np.mean(res)),
            "seconds": seconds, "images_per_s": n_images * epochs / seconds if seconds else None,
            "peak_rss_gb": rss / 1e9 if rss else None, "part_ari": part_ari, "note": note}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict], header: str, footer: list[str]) -> str:
    """The plain-text table of ``rows`` (dicts from :func:`row_fields`)."""
    cols = [("preset", "preset", "s"), ("tool", "tool", "s"), ("epochs", "epochs", "d"),
            ("AUC mean", "auc_mean", ".4f"), ("AUC median", "auc_median", ".4f"),
            ("res0.5 Å", "res05_median_A", ".1f"), ("wall s", "seconds", ".0f"),
            ("img/s", "images_per_s", ".1f"), ("peak GB", "peak_rss_gb", ".2f"), ("part ARI", "part_ari", ".3f")]
    cells = [[_fmt(r.get(key), spec) for _, key, spec in cols] for r in rows]
    widths = [max(len(name), *(len(c[i]) for c in cells)) if cells else len(name) for i, (name, _, _) in enumerate(cols)]
    lines = [header, "  ".join(name.rjust(w) for (name, _, _), w in zip(cols, widths)) + "  note"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths)) + f"  {r.get('note', '')}".rstrip()
              for cell, r in zip(cells, rows)]
    return "\n".join(lines + footer)


def _pairs(items: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in items:
        preset, sep, path = item.partition("=")
        if not sep or preset not in PRESETS:
            raise SystemExit(f"{flag}: expected PRESET=PATH with PRESET in {', '.join(PRESETS)}, found {item!r}")
        out[preset] = Path(path)
    return out


def not_run_pairs(tokens: list[str]) -> set[tuple[str, str]]:
    """``PRESET:TOOL`` tokens (a row listed as not run) as {(preset, tool)}."""
    pairs = {tuple(t.split(":", 1)) for t in tokens}
    bad = [t for t in tokens if tuple(t.split(":", 1)) not in {(p, k) for p in PRESETS for k in TOOL_NAMES}]
    if bad:
        raise SystemExit(f"--not-run: expected PRESET:TOOL (TOOL cryospire or cryodrgn), found {bad[0]!r}")
    return pairs


def per_preset(tokens: list[str], flag: str) -> dict[str, int]:
    """``N`` (every preset) and ``PRESET=N`` (one preset, wins over N) tokens as {preset: N}."""
    out = {}
    for token in sorted(tokens, key=lambda t: "=" in t):
        preset, sep, value = token.rpartition("=")
        if (sep and preset not in PRESETS) or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"{flag}: expected N or PRESET=N (N >= 1, PRESET in {', '.join(PRESETS)}), found {token!r}")
        out.update({preset: int(value)} if sep else dict.fromkeys(PRESETS, int(value)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path, help="cache folder: simulations, runs, cryoDRGN venv")
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--tools", nargs="+", choices=TOOL_NAMES, default=list(TOOL_NAMES))
    parser.add_argument("--data", nargs="*", default=[], help="PRESET=DIR: reuse a simulation (particles.*, gt/)")
    parser.add_argument("--cryospire-run", nargs="*", default=[], help="PRESET=RUN: reuse a finished cryospire run")
    parser.add_argument("--cryospire-epochs", type=int,
                        help="smoke tests only: this many epochs in every cryospire stage (default: the cpu profile's)")
    parser.add_argument("--epochs", nargs="+", default=["20"],
                        help="cryoDRGN epochs: N for every preset and/or PRESET=N (default 20, its train_vae default)")
    parser.add_argument("--score-epoch", nargs="+", default=[],
                        help="N and/or PRESET=N: score cryoDRGN after this epoch instead of the last; a training "
                             "stopped after it is not re-run (its memory is then not measured)")
    parser.add_argument("--cryodrgn-arch", choices=ARCHS, default="large",
                        help="large: 3x1024 (cryoDRGN 4.x default); small: 3x256 (its tutorial's first pass)")
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="compute threads of every child program (default 1)")
    parser.add_argument("--not-run", nargs="+", default=[], metavar="PRESET:TOOL",
                        help="list these rows as not run instead of running them (e.g. assembly:cryodrgn)")
    parser.add_argument("--note", action="append", default=[], help="a line added to the table's footer (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.txt"))
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    data_dirs = _pairs(args.data, "--data")
    runs = _pairs(args.cryospire_run, "--cryospire-run")
    env = child_env(args.threads)
    skipped = not_run_pairs(args.not_run)
    rows = []
    for preset in args.presets:
        data = None
        for tool in args.tools:
            if (preset, tool) in skipped:
                rows.append({"preset": preset, "tool": TOOL_NAMES[tool], "note": "not run"})
                continue
            data = data or data_dirs.get(preset) or simulate(preset, args.work / preset / "data", args, env)
            if tool == "cryospire":
                rows.append(cryospire_side(preset, data, args.work / preset / "cryospire", runs.get(preset), args, env))
            else:
                epochs = per_preset(args.epochs, "--epochs")[preset]
                tag = f"cryodrgn_{args.cryodrgn_arch}_e{epochs}"
                score_epoch = per_preset(args.score_epoch, "--score-epoch").get(preset)
                if score_epoch is not None and score_epoch > epochs:
                    raise SystemExit(f"--score-epoch: {preset} trains {epochs} epochs, cannot score epoch {score_epoch}")
                rows.append(cryodrgn_side(preset, data, args.work / preset / tag, epochs, score_epoch, args, env))
            print(format_table(rows[-1:], "", []).splitlines()[-1], flush=True)
    header = (f"quality vs cryoDRGN: {args.box} px, SNR {args.snr}, seed {args.seed}; CryoBench per-conformation FSC "
              f"vs ground truth inside its mask (`benchmarks/quality.py`)")
    footer = [
        "AUC: per-conformation FSC AUC (mean, median over states); res0.5: FSC=0.5 resolution in Å, median over states.",
        "wall s / peak GB: training only (evaluation excluded), wall clock and peak RSS of the process tree, "
        f"{args.threads} thread(s) on a shared CPU; '-' = not measured (a reused run; for a training stopped after "
        "the scored epoch, memory is not measured); a cryoDRGN row scored before its last epoch counts the time of the "
        "scored epochs only, from cryoDRGN's own epoch times.",
        "img/s = images x epochs / wall (cryospire: epochs summed over consensus, stage 1 and stage 2).",
        f"cryoDRGN {CRYODRGN_VERSION}: train_vae --zdim {ZDIM} -n EPOCHS, encoder and decoder "
        f"{'x'.join(ARCHS[args.cryodrgn_arch])} ({args.cryodrgn_arch}), "
        "other options default (data sign inverted: our stacks are white); maps by eval_vol at the latent of the "
        "particle nearest each state's mean latent (as `cryospire evaluate --run`), no flip.",
        *args.note,
    ]
    text = format_table(rows, header, footer)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, text + "\n")
    write_json(args.out.with_suffix(".json"), {"rows": rows, "argv": sys.argv[1:]})


if __name__ == "__main__":
    main()
