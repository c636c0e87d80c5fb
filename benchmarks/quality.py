"""Quality benchmark: cryospire against cryoDRGN and RECOVAR at the same wall-clock budget, one table and one
AUC-against-time plot per preset.

For each preset (hinge, random-hinge, assembly, mixed by default):

1. data: ``cryospire simulate --preset P --box 64 --n 20000 --snr 0.05 --seed 0`` into
   WORK/P/data (or reuse a simulation given by ``--data P=DIR``);
2. cryospire: ``cryospire train`` (``--profile``, cpu by default; ``--cryospire-epochs`` sets the epochs of
   each stage, for a set where the profile's would take hours) into WORK/P/cryospire, as three measured calls
   (consensus; stage 1 and the parts; stage 2), each scored when it ends (the consensus map
   against every state: the floor; then ``cryospire evaluate --run``: CryoBench per-conformation
   FSC at the image latent nearest each state's mean latent). Or reuse a finished run given by
   ``--cryospire-run P=RUN`` (then nothing is timed and ``--budget-minutes`` is needed);
3. cryoDRGN, with each ``--cryodrgn-arch`` (its default 3x1024 model and/or the 3x256 its
   tutorial starts with): ``cryodrgn train_vae`` on the same particles.mrcs / poses.pkl / ctf.pkl
   in its own virtual environment (WORK/cryodrgn-venv, made by this script, or ``--cryodrgn-exe``),
   run only as a separate program, and stopped when the budget is spent: ``--budget-minutes``, by default the
   wall time of the cryospire run on the same preset. Its last finished epoch is scored
   (``cryodrgn eval_vol`` at the latents of the particles nearest each state's mean latent,
   picked by the same code as our evaluator, scored by the same FSC code against the same ground
   truth and mask), and up to ``--curve-points`` earlier epochs for the plot;
4. RECOVAR: ``recovar pipeline`` on the same files in its own virtual environment
   (WORK/recovar-venv), run as a separate program through ``RECOVAR_CPU_LAUNCHER`` (its CPU
   slicing given the oversampling factor its GPU kernels apply: as shipped, every map it makes
   without a GPU is garbage); it cannot stop at an epoch, so it runs to the end or to
   ``--recovar-budget-factor`` budgets (default 3), then ``compute_state`` at the same latents protocol.

Within one call the tools run one after the other, never side by side; each row records the
load average while its training ran (``meter.measure``: wall and CPU time, peak RSS of the
process tree). Every stage is cached in WORK: a finished stage leaves a ``*.json`` record and is
skipped on a rerun, so calls on different presets or peers (``--tools``, ``--cryodrgn-arch``)
can run at different times, or side by side pinned to separate cores with ``--threads 1``
(``taskset``), and a last call with everything cached writes the whole table; say how they ran
with ``--note``. ``--carry`` reuses the measured rows of an earlier table's JSON (the committed
``benchmarks/results/quality.json``), so a table can grow across machines whose caches are gone:
a carried cryospire row still sets the peers' budget. Children get ``--threads`` BLAS/OpenMP threads.

Columns besides the AUCs: the AUC over f <= 0.25 cycles/px (where heterogeneity shows: the
trapezoid over those shells, so its maximum is 0.25), and a latent score: for a preset whose
states lie on one path (``hinge``), the R^2 of a linear fit of the state index from the latents;
otherwise the accuracy of assigning each image to the state whose mean latent is nearest.

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
        [--budget-minutes 60] [--cryodrgn-arch small large] [--epochs 200] [--curve-points 6] \\
        [--tools cryospire cryodrgn] [--n 20000] [--threads 1] [--carry OLD.json] [--note TEXT] \\
        [--out benchmarks/results/quality.txt]

Prints one table and writes it to --out, the rows and curves as JSON beside it (same name,
.json), and one plot per preset (same name + ``_PRESET.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meter import run_checked  # noqa: E402

from cryospire_core.analysis.metrics import (  # noqa: E402
    GroundTruth,
    ScoreTable,
    freq_to_angstrom,
    load_ground_truth,
    read_grid_map,
    representative_images,
    score_states,
)
from cryospire_core.io.atomic import write_json, write_text  # noqa: E402
from cryospire_core.io.safe_pickle import load_pickle  # noqa: E402
from cryospire_core.pipeline.profiles import profile_names  # noqa: E402

PRESETS = ("hinge", "random-hinge", "assembly", "mixed")
#: Presets whose states are ordered along one path: their latents are scored by the R^2 of the state index.
PATH_PRESETS = ("hinge",)
TOOLS = ("cryospire", "cryodrgn", "recovar")
TORCH_VERSION = "2.13.0"  # the local index's CPU build; installed first so cryodrgn does not pull a CUDA one
CRYODRGN_VERSION = "4.3.1"
ZDIM = 8  # cryoDRGN's documented choice (README and tutorial: --zdim 8)
# Hidden layers x width of cryoDRGN's encoder and decoder: "large" is cryoDRGN 4.x's default
# (3 x 1024); "small" the 3 x 256 its tutorial recommends for a first pass at D = 128.
ARCHS = {"large": ("3", "1024"), "small": ("3", "256")}
RECOVAR_VERSION = "1.0.5"
RECOVAR_ZDIM = 10  # the latent size RECOVAR's tutorial analyses (its pipeline computes several)
#: RECOVAR's memory plan (``--gpu-budget-gb``, its batch sizes; on the CPU it otherwise plans with
#: half the RAM and then peaks near all of it: 20 GB of 24 computing a 64 px mean), so that two
#: RECOVAR runs fit side by side on a 24-GB machine. It sets the batch sizes and how many principal
#: components RECOVAR computes (64 px: 174 instead of 200); the maps and latents use the first
#: ``RECOVAR_ZDIM``.
RECOVAR_MEMORY_GB = 5
#: Highest frequency (cycles/px) of the low-frequency AUC column.
LOW_FREQ = 0.25
#: cryospire's training as separately measured calls: (label, --stage arguments, scored as).
CRYOSPIRE_CALLS = (("consensus", ("consensus",), "map"), ("stage 1", ("discovery", "parts"), "run"),
                   ("stage 2", ("hierarchical",), "run"))


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


def low_freq_auc(scores: dict, fmax: float = LOW_FREQ) -> float:
    """Mean over states of the FSC AUC over frequencies <= ``fmax`` cycles/px (trapezoid), from a
    :meth:`ScoreTable.to_dict` with its curves."""
    f = np.asarray(scores["freqs"], dtype=np.float64)
    keep = f <= fmax + 1e-9
    return float(np.mean([np.trapezoid(np.asarray(st["curve"])[keep], f[keep]) for st in scores["states"]]))


def simulated_preset(data: Path, name: str) -> str:
    """The preset a simulation folder was made from (its metadata.json), else ``name``."""
    try:
        return str(json.loads((data / "metadata.json").read_text())["options"]["preset"] or name)
    except (OSError, KeyError, TypeError, ValueError):
        return name


def latent_score(latents: np.ndarray, labels: np.ndarray, preset: str) -> tuple[str, float]:
    """("R2", R^2 of a least-squares linear fit of the state index) for a path preset, else
    ("acc", the fraction of images whose nearest state-mean latent is their own state's).
    latents: (N, z); labels: (N,) ground-truth states; preset: the simulation's preset."""
    z = np.asarray(latents, dtype=np.float64).reshape(len(labels), -1)
    labels = np.asarray(labels)
    if preset in PATH_PRESETS:
        a = np.c_[z, np.ones(len(z))]
        y = labels.astype(np.float64)
        fit = a @ np.linalg.lstsq(a, y, rcond=None)[0]
        return "R2", float(1.0 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    states = np.unique(labels)
    means = np.stack([z[labels == k].mean(0) for k in states])
    nearest = states[np.argmin(((z[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    return "acc", float(np.mean(nearest == labels))


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


def stage_epochs(given: list[int] | None) -> tuple[int, ...]:
    """cryospire's epochs per stage (consensus, stage 1, stage 2) from ``--cryospire-epochs``:
    one value for every stage or one per stage; () keeps the profile's."""
    if not given:
        return ()
    if len(given) not in (1, 3) or min(given) < 1:
        raise SystemExit(f"--cryospire-epochs: expected 1 or 3 whole numbers >= 1 (consensus, stage 1, stage 2), "
                         f"found {' '.join(map(str, given))}")
    return tuple(given) * (3 // len(given))


def set_description(data: Path, box: int, n: int, snr: float) -> str:
    """'128 px, 100,000 images, SNR 0.01': from a simulation folder's metadata.json, else from
    ``box``, ``n`` and ``snr`` (the options it would be simulated with)."""
    try:
        meta = json.loads((data / "metadata.json").read_text())
        box, n, snr = int(meta["box"]), int(meta["n_images"]), float(meta["snr"])
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return f"{box} px, {n:,} images, SNR {snr:g}"


def run_epochs(run: Path) -> int:
    """Image passes of a cryospire run: the sum of its training stages' epochs (config.json)."""
    train = json.loads((run / "config.json").read_text())["train"]
    return sum(int(train[stage]["epochs"]) for stage in ("consensus", "discovery", "hierarchical"))


def combined(records: list[dict]) -> dict:
    """The timing of calls run one after the other: wall and CPU summed, the peak of the peaks,
    the load averaged over wall time and its maximum."""
    wall = sum(r["seconds"] for r in records)
    return {"seconds": wall, "cpu_seconds": sum(r["cpu_seconds"] for r in records),
            "peak_rss": max(r["peak_rss"] for r in records),
            "load_mean": sum(r["load_mean"] * r["seconds"] for r in records) / wall if wall else None,
            "load_max": max(r["load_max"] for r in records)}


def cryospire_side(preset: str, data: Path, work: Path, reuse: Path | None, args: argparse.Namespace,
                   env: dict[str, str]) -> dict:
    """Train (unless reused) and score cryospire on ``data``: the table row's fields, with the
    AUC after each measured call as its curve."""
    run = reuse or work / "run"
    work.mkdir(parents=True, exist_ok=True)
    labels = np.load(data / "gt" / "labels.npy")

    def evaluate(kind: str, out: Path) -> dict:
        if not out.is_file():
            which = ["--map", str(run / "consensus" / "map.mrc")] if kind == "map" else ["--run", str(run)]
            run_checked(cryospire_cmd("evaluate", "--gt", str(data / "gt"), *which, "--rows", "0", "--out", str(out)),
                        out.with_suffix(".log"), env)
        return json.loads(out.read_text())

    if reuse is not None:
        if not (reuse / "hierarchical" / "model.pt").is_file():
            raise RuntimeError(f"{reuse}: not a finished run (no hierarchical/model.pt)")
        scores = evaluate("run", work / f"scores_reused_{reuse.name}.json")
        latent = latent_score(np.load(reuse / "latents.npy"), labels, simulated_preset(data, preset))
        return row_fields(preset, "cryospire", scores, None, len(labels), run_epochs(run), latent, [],
                          note=f"{args.profile} profile, reused run {reuse}", part_ari=scores.get("part_ari"))

    epochs = stage_epochs(args.cryospire_epochs)
    quick = [f"--epochs-{stage}={n}" for stage, n in zip(("consensus", "1", "2"), epochs)]
    note = f"{args.profile} profile" + (f", epochs {'/'.join(map(str, epochs))}" if epochs else "")
    records, curve, scores, latent = [], [], None, None
    for label, stages, kind in CRYOSPIRE_CALLS:
        tag = label.replace(" ", "")

        def train(stages=stages, kind=kind, tag=tag) -> dict:
            m = run_checked(cryospire_cmd("train", str(data / "particles.star"), "--out", str(run), "--profile", args.profile,
                                          "--device", args.device, "--threads", str(args.threads), "--resume",
                                          "--quiet", *quick,
                                          *(a for st in stages for a in ("--stage", st))),
                            work / f"train_{tag}.log", env)
            # latents.npy is the last finished stage's: read it before the next stage replaces it
            lat = (latent_score(np.load(run / "latents.npy"), labels, simulated_preset(data, preset))
                   if kind == "run" else None)
            return {**m.to_dict(), "latent": lat}

        records.append(cached(work / f"train_{tag}.json", train))
        scores = evaluate(kind, work / f"scores_{tag}.json")
        latent = records[-1]["latent"] or latent
        curve.append({"label": label, "seconds": sum(r["seconds"] for r in records),
                      "auc_mean": scores["scores"]["summary"]["mean_auc"]})
    return row_fields(preset, "cryospire", scores, combined(records), len(labels), run_epochs(run), latent, curve,
                      note=note, part_ari=scores.get("part_ari"))


# ---------------------------------------------------------------------------------------------
# cryoDRGN, only ever run as a separate program from its own virtual environment


def peer_venv(work: Path, name: str, packages: list[str]) -> Path:
    """WORK/NAME-venv with ``packages`` installed, one pip call each in this order (torch first,
    so a CPU build is there before a package that would pull a CUDA one); returns its ``NAME``."""
    venv = work / f"{name}-venv"
    exe = venv / "bin" / name
    if not exe.is_file():
        run_checked([sys.executable, "-m", "venv", str(venv)], work / f"{name}-venv.log")
        for package in packages:
            run_checked([str(venv / "bin" / "pip"), "install", "-q", package],
                        work / f"{name}-venv-{package.split('==')[0]}.log")
    return exe


def cryodrgn_venv(work: Path) -> Path:
    """WORK/cryodrgn-venv with torch (CPU build) and cryodrgn installed; returns its ``cryodrgn``."""
    return peer_venv(work, "cryodrgn", [f"torch=={TORCH_VERSION}", f"cryodrgn=={CRYODRGN_VERSION}"])


def read_latents(path: Path) -> np.ndarray:
    """(N, zdim) latent means from a cryoDRGN z.EPOCH.pkl (its first pickled object)."""
    z = np.asarray(load_pickle(path), dtype=np.float64)
    if z.ndim != 2:
        raise RuntimeError(f"{path}: expected (N, zdim) latent means, found shape {z.shape}")
    return z


def write_zfile(path: Path, latents: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Write the latents of the images nearest each state's mean latent (one row per state, in
    state order) for cryoDRGN's ``eval_vol --zfile`` and RECOVAR's ``compute_state
    --latent-points``; returns {state: image index}."""
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


def finished_epochs(out: Path, log: Path) -> list[int]:
    """The epochs (1-based, ascending) a ``train_vae`` run finished and saved: its log says
    "=====> Epoch: E ... Finished in" and both weights.E.pkl and z.E.pkl are there. (A stop at
    the budget lands inside an epoch; the chance that it lands in the save after the log line
    is the save's share of an epoch, well under 1%, and eval_vol would then fail loudly.)"""
    logged = re.findall(r"=====> Epoch: (\d+) .*Finished in", log.read_text(errors="replace")) if log.is_file() else []
    return [e for e in sorted({int(x) for x in logged})
            if (out / f"weights.{e}.pkl").is_file() and (out / f"z.{e}.pkl").is_file()]


def curve_epochs(finished: list[int], points: int) -> list[int]:
    """Up to ``points`` epochs of ``finished``, evenly spread, the last always included."""
    if len(finished) <= points:
        return list(finished)
    idx = np.unique(np.round(np.linspace(0, len(finished) - 1, points)).astype(int))
    return [finished[i] for i in idx]


def score_cryodrgn_epoch(exe: Path, out: Path, work: Path, epoch: int, gt: GroundTruth,
                         env: dict[str, str]) -> dict:
    """Maps of epoch ``epoch`` at each state's representative latent, scored (cached in
    WORK/scores_eEPOCH.json): {"scores": ScoreTable dict, "auc_flipped": summary}."""
    record = work / f"scores_e{epoch}.json"
    if record.is_file():
        return json.loads(record.read_text())
    latents = read_latents(out / f"z.{epoch}.pkl")
    maps_dir, zfile = work / f"maps_e{epoch}", work / f"z_states_e{epoch}.txt"
    reps = write_zfile(zfile, latents, gt.labels)
    maps = [maps_dir / f"vol_{i:03d}.mrc" for i in range(len(reps))]
    if not all(p.is_file() for p in maps):
        run_checked([str(exe), "eval_vol", str(out / f"weights.{epoch}.pkl"), "-c", str(out / "config.yaml"),
                     "--zfile", str(zfile), "-o", str(maps_dir), "--Apix", f"{gt.lattice.apix:g}", "--vol-start-index", "0"],
                    work / f"eval_vol_e{epoch}.log", env)
    title = f"per-conformation FSC: cryoDRGN {out} epoch {epoch}"
    table = score_state_maps(gt, maps, reps, title)
    flipped = score_state_maps(gt, maps, reps, title + " (z-flipped)", flip=True)
    result = {"scores": table.to_dict(), "auc_flipped": flipped.summary()}
    write_json(record, result)
    return result


def cryodrgn_side(preset: str, data: Path, work: Path, arch: str, budget_s: float, args: argparse.Namespace,
                  env: dict[str, str]) -> dict:
    """Train cryoDRGN (architecture ``arch``) on ``data`` until ``budget_s`` seconds have passed
    (or ``--epochs`` are done), score its last finished epoch and, for the curve, up to
    ``--curve-points`` finished epochs: the table row's fields."""
    exe = args.cryodrgn_exe or cryodrgn_venv(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "train"
    layers, width = ARCHS[arch]
    options = ["--zdim", str(ZDIM), "-n", str(args.epochs), "--enc-layers", layers, "--enc-dim", width,
               "--dec-layers", layers, "--dec-dim", width, "--seed", str(args.seed), "--no-analysis",
               "--max-threads", str(args.threads), "--log-interval", "2000"]

    def train() -> dict:
        m = run_checked([str(exe), "train_vae", str(data / "particles.mrcs"), "--poses", str(data / "poses.pkl"),
                         "--ctf", str(data / "ctf.pkl"), "-o", str(out), *options], work / "train.log", env, budget_s)
        return {**m.to_dict(), "options": options, "budget_s": budget_s}

    timing = cached(work / "train.json", train)
    label = f"cryoDRGN {arch}"
    note = f"{CRYODRGN_VERSION} {arch} ({layers}x{width}), zdim {ZDIM}"
    finished = finished_epochs(out, work / "train.log")
    if not finished:
        return {"preset": preset, "tool": label, "epochs": 0, **timing_fields(timing),
                "note": note + f"; no epoch finished within {budget_s / 60:.0f} min", "curve": []}
    gt = load_ground_truth(data / "gt")
    scores = {epoch: score_cryodrgn_epoch(exe, out, work, epoch, gt, env)
              for epoch in curve_epochs(finished, args.curve_points)}  # the last epoch always among them
    curve = [{"label": f"epoch {epoch}", "epoch": epoch,
              "seconds": (out / f"weights.{epoch}.pkl").stat().st_mtime - timing["started"],
              "auc_mean": scored["scores"]["summary"]["mean_auc"]} for epoch, scored in scores.items()]
    last = finished[-1]
    scored = scores[last]
    latent = latent_score(read_latents(out / f"z.{last}.pkl"), gt.labels, simulated_preset(data, preset))
    stop = f"stopped at the budget ({budget_s / 60:.0f} min)" if timing["stopped"] else "all epochs done"
    row = row_fields(preset, label, scored, timing, len(gt.labels), last, latent, curve,
                     note=f"{note}; {stop}")
    row["auc_mean_flipped"] = scored["auc_flipped"]["mean_auc"]
    return row


# ---------------------------------------------------------------------------------------------
# RECOVAR, only ever run as a separate program from its own virtual environment (its licence
# allows running it for comparison; nothing of it is vendored)


def recovar_venv(work: Path) -> Path:
    """WORK/recovar-venv with recovar (and its CPU JAX) installed; returns its ``recovar``."""
    return peer_venv(work, "recovar", [f"recovar=={RECOVAR_VERSION}"])


def recovar_env(env: dict[str, str], threads: int) -> dict[str, str]:
    """``env`` with XLA's CPU thread pools limited to ``threads`` (JAX ignores OMP_NUM_THREADS)."""
    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else ""
    return {**env, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}


#: RECOVAR's own command line, run in its interpreter with one fix. Its JAX slicing
#: (``recovar.core.relion_interp``, the path it takes without a GPU) puts an image's frequencies on
#: a volume grid oversampled k times (its mean and per-state maps use k = 2) at the image grid's
#: positions, without the factor k its CUDA kernels apply (``upsampling = N0 // H``), so every
#: oversampled reconstruction it makes on the CPU is garbage (``benchmarks/recovar_selfcheck.py``:
#: FSC AUC 0.08 of its own simulation). The fix scales those frequencies and the radius cut-off by
#: k, as its GPU path does; nothing else of RECOVAR changes.
RECOVAR_CPU_LAUNCHER = """
import sys
import recovar.core.relion_interp as ri
from recovar.command_line import main_commands

def oversampled(slicer):
    def scaled(x, rotations, image_shape, volume_shape, *args, max_r=None, **kwargs):
        k = volume_shape[0] // image_shape[0]
        if k == 1:
            return slicer(x, rotations, image_shape, volume_shape, *args, max_r=max_r, **kwargs)
        plain = ri._pixel_frequencies
        ri._pixel_frequencies = lambda shape, half_image=False: plain(shape, half_image=half_image) * k
        try:
            return slicer(x, rotations, image_shape, volume_shape, *args,
                          max_r=None if max_r is None else max_r * k, **kwargs)
        finally:
            ri._pixel_frequencies = plain
    return scaled

ri.project, ri.backproject = oversampled(ri.project), oversampled(ri.backproject)
sys.argv[0] = "recovar"
sys.exit(main_commands())
"""


def recovar_cmd(exe: Path, *args: str, cpu_fix: bool = True) -> list[str]:
    """``recovar ARGS --gpu-budget-gb RECOVAR_MEMORY_GB`` from its venv: through
    ``RECOVAR_CPU_LAUNCHER`` unless ``cpu_fix`` is off."""
    args = (*args, "--gpu-budget-gb", str(RECOVAR_MEMORY_GB))
    if not cpu_fix:
        return [str(exe), *args]
    return [str(exe.parent / "python"), "-c", RECOVAR_CPU_LAUNCHER, *args]


def recovar_pipeline_cmd(exe: Path, particles: Path, poses: Path, ctf: Path, out: Path,
                         cpu_fix: bool = True, lazy: bool = False) -> list[str]:
    """``recovar pipeline`` as this benchmark runs it: spherical mask, zdim ``RECOVAR_ZDIM``, on the CPU;
    ``lazy``: its ``--lazy`` (images read from disk batch by batch instead of held in memory)."""
    return recovar_cmd(exe, "pipeline", str(particles), "--poses", str(poses), "--ctf", str(ctf), "--mask", "sphere",
                       "-o", str(out), "--zdim", str(RECOVAR_ZDIM), "--accept-cpu", *(["--lazy"] if lazy else []),
                       cpu_fix=cpu_fix)


#: Reads a finished pipeline's latents with RECOVAR's own reader, in its own interpreter.
_RECOVAR_LATENTS = ("import sys, numpy as np; from recovar.output import output as o; "
                    "po = o.PipelineOutput(sys.argv[1]); "
                    "np.save(sys.argv[3], np.asarray(po.get_embedding_component('latent_coords', int(sys.argv[2]))))")


def recovar_side(preset: str, data: Path, work: Path, budget_s: float, args: argparse.Namespace,
                 env: dict[str, str]) -> dict:
    """RECOVAR on ``data``: its pipeline (spherical mask, zdim ``RECOVAR_ZDIM``), then
    ``compute_state`` at the latent of the image nearest each state's mean latent, scored like
    the others. RECOVAR has no epochs to stop after, so it runs to the end (at most
    ``args.recovar_budget_factor`` x the budget) and the row says whether it fitted the budget."""
    exe = recovar_venv(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out, xenv = work / "pipeline", recovar_env(env, args.threads)

    def train() -> dict:
        m = run_checked(recovar_pipeline_cmd(exe, data / "particles.mrcs", data / "poses.pkl", data / "ctf.pkl", out,
                                             lazy=args.recovar_lazy),
                        work / "pipeline.log", xenv, args.recovar_budget_factor * budget_s)
        return {**m.to_dict(), "budget_s": budget_s, "budget_factor": args.recovar_budget_factor,
                "lazy": args.recovar_lazy}

    timing = cached(work / "train.json", train)
    # from the run's own record, so a cached run keeps the options it ran with
    note = (f"{RECOVAR_VERSION}, zdim {RECOVAR_ZDIM}, spherical mask, CPU slicing fixed, memory plan {RECOVAR_MEMORY_GB} GB"
            + (", lazy loading" if timing.get("lazy") else ""))
    if timing["stopped"]:
        return {"preset": preset, "tool": "RECOVAR", **timing_fields(timing), "curve": [],
                "note": f"{note}; not finished after {timing['budget_factor']:g} x the budget"}
    gt = load_ground_truth(data / "gt")
    latents_path = work / "latents.npy"
    if not latents_path.is_file():
        run_checked([str(exe.parent / "python"), "-c", _RECOVAR_LATENTS, str(out), str(RECOVAR_ZDIM),
                     str(latents_path)], work / "latents.log", xenv)
    latents = np.load(latents_path).astype(np.float64)
    states_dir, points = work / "states", work / "z_states.txt"
    reps = write_zfile(points, latents, gt.labels)
    maps = [states_dir / f"state{i:03d}.mrc" for i in range(len(reps))]
    if not all(p.is_file() for p in maps):
        run_checked(recovar_cmd(exe, "compute_state", str(out), "-o", str(states_dir), "--latent-points", str(points)),
                    work / "compute_state.log", xenv)
    table = score_state_maps(gt, maps, reps, f"per-conformation FSC: RECOVAR {out}")
    within = "within" if timing["seconds"] <= budget_s else "over"
    curve = [{"label": "pipeline", "seconds": timing["seconds"], "auc_mean": table.summary()["mean_auc"]}]
    return row_fields(preset, "RECOVAR", {"scores": table.to_dict()}, timing, len(gt.labels), 1,
                      latent_score(latents, gt.labels, simulated_preset(data, preset)), curve,
                      note=f"{note}; {within} the budget ({budget_s / 60:.0f} min)")


# ---------------------------------------------------------------------------------------------
# the table and the plots


def timing_fields(timing: dict | None) -> dict:
    """Wall s, CPU s, peak RSS (GB) and load average of a timing record (None: not measured)."""
    timing = timing or {}
    rss = timing.get("peak_rss")
    return {"seconds": timing.get("seconds"), "cpu_seconds": timing.get("cpu_seconds"),
            "peak_rss_gb": rss / 1e9 if rss else None, "load_mean": timing.get("load_mean"),
            "load_max": timing.get("load_max")}


def row_fields(preset: str, tool: str, scores: dict, timing: dict | None, n_images: int, epochs: int,
               latent: tuple[str, float] | list | None, curve: list[dict], note: str = "",
               part_ari: float | None = None) -> dict:
    """One table row from ``scores`` (``cryospire evaluate --out``'s JSON, or {"scores": a
    :meth:`ScoreTable.to_dict`}) and ``timing`` (a :class:`meter.Measured` dict or a
    :func:`combined` one; None when not measured): AUC mean/median over states, AUC over f <=
    ``LOW_FREQ``, FSC=0.5 resolution (Å, median and mean over states), timing, image passes per
    second (images x epochs / wall), the latent score and the part ARI."""
    table = scores["scores"]
    s = table["summary"]
    res = [freq_to_angstrom(st["res_05"], table["apix"]) for st in table["states"]]
    t = timing_fields(timing)
    return {"preset": preset, "tool": tool, "epochs": epochs, "n_images": n_images, "n_states": s["n_states"],
            "auc_mean": s["mean_auc"], "auc_median": s["median_auc"], "auc_std": s["std_auc"],
            "auc_low": low_freq_auc(table), "res05_median_A": float(np.median(res)), "res05_mean_A": float(np.mean(res)),
            **t, "images_per_s": n_images * epochs / t["seconds"] if t["seconds"] else None,
            "latent_kind": latent[0] if latent else None, "latent_score": latent[1] if latent else None,
            "part_ari": part_ari, "curve": curve, "note": note}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = [("preset", "preset", "s"), ("tool", "tool", "s"), ("epochs", "epochs", "d"),
           ("AUC mean", "auc_mean", ".4f"), ("AUC median", "auc_median", ".4f"), ("AUC f<=.25", "auc_low", ".4f"),
           ("res0.5 Å", "res05_median_A", ".1f"), ("wall s", "seconds", ".0f"), ("CPU s", "cpu_seconds", ".0f"),
           ("img/s", "images_per_s", ".1f"), ("peak GB", "peak_rss_gb", ".2f"), ("load", "load_mean", ".1f"),
           ("latent", "latent_text", "s"), ("part ARI", "part_ari", ".3f")]


def format_table(rows: list[dict], header: str, footer: list[str]) -> str:
    """The plain-text table of ``rows`` (dicts from :func:`row_fields`)."""
    def cell(r: dict, key: str, spec: str) -> str:
        if key == "latent_text":
            return "-" if r.get("latent_score") is None else f"{r['latent_kind']} {r['latent_score']:.3f}"
        return _fmt(r.get(key), spec)

    cells = [[cell(r, key, spec) for _, key, spec in COLUMNS] for r in rows]
    widths = [max(len(name), *(len(c[i]) for c in cells)) if cells else len(name) for i, (name, _, _) in enumerate(COLUMNS)]
    lines = [header, "  ".join(name.rjust(w) for (name, _, _), w in zip(COLUMNS, widths)) + "  note"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell_row, widths)) + f"  {r.get('note', '')}".rstrip()
              for cell_row, r in zip(cells, rows)]
    return "\n".join(lines + footer)


def plot_curves(rows: list[dict], preset: str, path: Path) -> Path | None:
    """AUC (mean over states) against wall-clock minutes, one curve per tool, for ``preset``;
    saved as a PNG at ``path``, naming the tools that ran but made no map. None when no row of the
    preset has a curve."""
    mapless = [r["tool"] for r in rows if r["preset"] == preset and r.get("seconds") and not r.get("curve")]
    rows = [r for r in rows if r["preset"] == preset and r.get("curve")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in rows:
        minutes = [p["seconds"] / 60 for p in r["curve"]]
        aucs = [p["auc_mean"] for p in r["curve"]]
        (line,) = ax.plot(minutes, aucs, marker="o", label=r["tool"])
        if r["tool"] == "cryospire":
            for x, y, p in zip(minutes, aucs, r["curve"]):
                ax.annotate(p["label"], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color=line.get_color())
    ax.set_xlabel("wall-clock time (min, same machine; how the tools shared it: the table's notes)")
    ax.set_ylabel("per-conformation FSC AUC (mean over states)")
    ax.set_title(f"{preset}: map quality against training time")
    if mapless:
        ax.text(0.98, 0.03, "no map within the budget: " + ", ".join(mapless), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="0.3")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _pairs(items: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag}: expected NAME=PATH, found {item!r}")
        out[name] = Path(path)
    return out


def not_run_pairs(tokens: list[str]) -> set[tuple[str, str]]:
    """``PRESET:TOOL`` tokens (a row listed as not run) as {(preset, tool)}; TOOL is one of
    TOOLS, or ``cryodrgn-ARCH`` for one cryoDRGN model only."""
    names = [*TOOLS, *(f"cryodrgn-{arch}" for arch in ARCHS)]
    pairs = {tuple(t.split(":", 1)) for t in tokens}
    bad = [t for t in tokens if ":" not in t or t.split(":", 1)[1] not in names]
    if bad:
        raise SystemExit(f"--not-run: expected PRESET:TOOL (TOOL one of {', '.join(names)}), found {bad[0]!r}")
    return pairs


def carried_rows(path: Path | None) -> dict[tuple[str, str], dict]:
    """The measured rows of an earlier table's JSON (``--carry``) as {(preset, tool label): row}:
    a run folder does not outlive its machine, the committed JSON does."""
    if path is None:
        return {}
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--carry {path}: expected a table's JSON with a 'rows' list ({exc})") from None
    return {(r["preset"], r["tool"]): r for r in rows if r.get("seconds") is not None}


def budget_seconds(args: argparse.Namespace, cryospire_row: dict | None) -> float:
    """The peers' wall-clock budget: ``--budget-minutes``, else the cryospire row's wall time."""
    if args.budget_minutes is not None:
        return args.budget_minutes * 60.0
    if cryospire_row is None or not cryospire_row.get("seconds"):
        raise SystemExit("--budget-minutes is needed when cryospire is not trained here (reused or not run)")
    return float(cryospire_row["seconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path, help="cache folder: simulations, runs, cryoDRGN venv")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS),
                        help=f"simulated presets ({', '.join(PRESETS)}) and/or names given a folder by --data")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--data", nargs="*", default=[], help="NAME=DIR: a simulation to use (particles.*, gt/)")
    parser.add_argument("--cryospire-run", nargs="*", default=[], help="NAME=RUN: reuse a finished cryospire run")
    parser.add_argument("--cryospire-epochs", type=int, nargs="+",
                        help="cryospire's epochs: one number for every stage or three (consensus, stage 1, "
                             "stage 2) (default: the profile's)")
    parser.add_argument("--profile", default="cpu", choices=profile_names(),
                        help="cryospire's training profile (default cpu; paper on a GPU)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="cryospire's device (default auto: CUDA when present); cryoDRGN picks its own")
    parser.add_argument("--cryodrgn-exe", type=Path,
                        help="a cryodrgn program to run instead of making WORK/cryodrgn-venv (a machine without "
                             "network: benchmarks/gpu_quality.sh)")
    parser.add_argument("--budget-minutes", type=float,
                        help="wall-clock budget of each peer (default: the cryospire run's wall time on that data)")
    parser.add_argument("--recovar-budget-factor", type=float, default=3.0,
                        help="RECOVAR cannot stop part-way with a result: it may run to this many budgets "
                             "(default 3; 1 = strictly equal wall time)")
    parser.add_argument("--recovar-lazy", action="store_true",
                        help="RECOVAR reads the images from disk batch by batch (its --lazy) instead of holding the "
                             "stack in memory: for a stack that would not fit beside the other jobs")
    parser.add_argument("--epochs", type=int, default=1000,
                        help="cryoDRGN's -n: an upper bound, the budget stops it first (default 1000)")
    parser.add_argument("--curve-points", type=int, default=6,
                        help="cryoDRGN epochs scored for the plot, the last included (default 6, at least 1)")
    parser.add_argument("--cryodrgn-arch", nargs="+", choices=ARCHS, default=["small", "large"],
                        help="large: 3x1024 (cryoDRGN 4.x default); small: 3x256 (its tutorial's first pass)")
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="compute threads of every child program (default 1)")
    parser.add_argument("--not-run", nargs="+", default=[], metavar="PRESET:TOOL",
                        help="list these rows as not run instead of running them (e.g. assembly:cryodrgn, "
                             "or assembly:cryodrgn-large for one model)")
    parser.add_argument("--carry", type=Path,
                        help="an earlier table's JSON: its measured rows are reused instead of run again")
    parser.add_argument("--note", action="append", default=[], help="a line added to the table's footer (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.txt"))
    args = parser.parse_args(argv)
    if args.curve_points < 1:
        parser.error("--curve-points: at least 1 (the scored epoch is always a point)")
    if args.recovar_budget_factor < 1:
        parser.error("--recovar-budget-factor: at least 1 (RECOVAR gets at least cryospire's wall time)")
    args.work = args.work.resolve()
    data_dirs = _pairs(args.data, "--data")
    unknown = [p for p in args.presets if p not in PRESETS and p not in data_dirs]
    if unknown:
        raise SystemExit(f"--presets: {unknown[0]!r} is not a preset ({', '.join(PRESETS)}); give its folder with --data")
    runs = _pairs(args.cryospire_run, "--cryospire-run")
    env = child_env(args.threads)
    skipped = not_run_pairs(args.not_run)
    carried = carried_rows(args.carry)
    args.cryospire_epochs = stage_epochs(args.cryospire_epochs)  # refused before anything runs
    rows, sets = [], {}
    for preset in args.presets:
        data = data_dirs.get(preset) or simulate(preset, args.work / preset / "data", args, env)
        sets.setdefault(set_description(data, args.box, args.n, args.snr), []).append(preset)
        ours = None
        for tool in args.tools:
            before = len(rows)
            if (preset, tool) in skipped:
                rows.append({"preset": preset, "tool": tool, "note": "not run"})
                continue
            if tool == "cryospire":
                ours = carried.get((preset, "cryospire")) or cryospire_side(
                    preset, data, args.work / preset / "cryospire", runs.get(preset), args, env)
                rows.append(ours)
            elif tool == "recovar":
                budget = budget_seconds(args, ours)
                rows.append(carried.get((preset, "RECOVAR")) or recovar_side(
                    preset, data, args.work / preset / f"recovar_b{budget:.0f}s", budget, args, env))
            else:
                budget = budget_seconds(args, ours)
                for arch in args.cryodrgn_arch:
                    if (preset, f"cryodrgn-{arch}") in skipped:
                        rows.append({"preset": preset, "tool": f"cryoDRGN {arch}", "note": "not run"})
                        continue
                    tag = f"cryodrgn_{arch}_b{budget:.0f}s"
                    rows.append(carried.get((preset, f"cryoDRGN {arch}")) or cryodrgn_side(
                        preset, data, args.work / preset / tag, arch, budget, args, env))
            print("\n".join(format_table(rows[before:], "", []).splitlines()[2:]), flush=True)
    described = "; ".join(f"{', '.join(names)}: {text}" for text, names in sets.items())
    header = (f"quality at equal wall time ({described}; seed {args.seed}); CryoBench per-conformation "
              f"FSC vs ground truth inside its mask (`benchmarks/quality.py`)")
    footer = [
        "AUC: per-conformation FSC AUC (mean, median over states); AUC f<=.25: the same curves integrated up to "
        "0.25 cycles/px only (max 0.25); res0.5: FSC=0.5 resolution in Å, median over states.",
        "wall s / CPU s / peak GB: training only (evaluation excluded), wall clock, user+system CPU time and peak RSS "
        f"of the process tree, {args.threads} thread(s); load: mean 1-minute load average of the machine while it "
        "trained (what else ran is in the notes below); '-' = not measured (a reused run).",
        "img/s = images x epochs / wall (cryospire: epochs summed over consensus, stage 1 and stage 2).",
        "latent: R2 = linear fit of the ground-truth state index from the latents (path presets); acc = share of images "
        "whose nearest state-mean latent is their own state's.",
        f"cryoDRGN {CRYODRGN_VERSION}: train_vae --zdim {ZDIM}, encoder and decoder small 3x256 or large 3x1024 (its "
        "default), other options default (data sign inverted: our stacks are white), stopped at the budget (the "
        "cryospire run's wall time unless --budget-minutes); its last finished epoch is scored, maps by eval_vol at "
        "the latent of the particle nearest each state's mean latent (as `cryospire evaluate --run`), no flip.",
        *args.note,
    ]
    text = format_table(rows, header, footer)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, text + "\n")
    write_json(args.out.with_suffix(".json"), {"rows": rows, "argv": sys.argv[1:]})
    for preset in args.presets:
        png = plot_curves(rows, preset, args.out.with_name(f"{args.out.stem}_{preset}.png"))
        if png is not None:
            print(f"plot: {png}")


if __name__ == "__main__":
    main()
