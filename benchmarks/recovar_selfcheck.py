"""Can RECOVAR, as `benchmarks/quality.py` runs it, reconstruct a homogeneous map at all?

RECOVAR's per-state maps scored far below the other tools in `quality.py`. This separates a
file-convention mismatch on our side from a problem inside RECOVAR, on two data sets:

- ``recovar-sim``: one ground-truth map projected by RECOVAR's own simulator
  (``recovar.simulation.simulator.generate_synthetic_dataset``, its "dataset1" poses and CTFs,
  little noise), written in RECOVAR's own files (particles, poses.pkl, ctf.pkl);
- ``cryospire-sim``: a ``cryospire simulate`` stack with our poses.pkl / ctf.pkl, the files
  `quality.py` gives every peer (scored against the noise-free population-mean map).

On each, RECOVAR's homogeneous mean (``recovar pipeline`` with `quality.py`'s options and
``--only-mean``: ``mean.mrc`` and the unfiltered half map) and ``cryospire backproject``
(direct Fourier inversion) of the same images are scored against the truth by the
per-conformation FSC AUC of `quality.py`. If
``cryospire backproject`` scores high on RECOVAR's own files, their pose/CTF conventions read
as ours; if RECOVAR then scores low on its own simulation too, the low scores are RECOVAR's,
not a conversion of ours. RECOVAR runs twice: as shipped, and through ``quality.py``'s
``RECOVAR_CPU_LAUNCHER`` (its CPU slicing given the oversampling factor its GPU kernels use),
which is how ``quality.py`` runs it.

Usage::

    python benchmarks/recovar_selfcheck.py --work /tmp/quality [--box 64] [--n 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meter import run_checked  # noqa: E402
from quality import (  # noqa: E402
    RECOVAR_VERSION,
    RECOVAR_ZDIM,
    child_env,
    cryospire_cmd,
    recovar_env,
    recovar_pipeline_cmd,
    recovar_venv,
    simulate,
)

from cryospire_core.analysis.metrics import (  # noqa: E402
    freq_to_angstrom,
    load_ground_truth,
    population_mean,
    read_grid_map,
    score_states,
)
from cryospire_core.io.atomic import write_text  # noqa: E402

#: RECOVAR's simulator, run in its own interpreter: (out, apix, volume prefix, n, box, noise level).
_RECOVAR_SIMULATE = (
    "import sys, numpy as np; from recovar.simulation import simulator as s; "
    "s.generate_synthetic_dataset(sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4]), "
    "grid_size=int(sys.argv[5]), dataset_params_option='dataset1', noise_level=float(sys.argv[6]), "
    "put_extra_particles=False, percent_outliers=0.0, noise_scale_std=0.0, contrast_std=0.0, "
    "image_dtype=np.float32, per_particle_contrast=False)")
#: Noise level of RECOVAR's simulator for ``recovar-sim`` (its default is 1).
RECOVAR_SIM_NOISE = 0.01


def reconstruct(label: str, stack: Path, poses: Path, ctf: Path, invert: str, work: Path, exe: Path,
                env: dict[str, str], xenv: dict[str, str]) -> dict[str, Path]:
    """RECOVAR's --only-mean maps, as shipped and with ``RECOVAR_CPU_LAUNCHER``'s fix, and cryospire's
    backprojection of one stack: {name: map path}."""
    maps = {}
    for cpu_fix, tag, suffix in ((False, "as shipped", ""), (True, "CPU fix", "_fixed")):
        volumes = work / f"{label}_recovar{suffix}" / "output" / "volumes"
        if not (volumes / "mean.mrc").is_file():
            run_checked([*recovar_pipeline_cmd(exe, stack, poses, ctf, volumes.parent.parent, cpu_fix=cpu_fix),
                         "--only-mean"], work / f"{label}_recovar{suffix}.log", xenv)
        maps |= {f"RECOVAR {tag}: mean.mrc": volumes / "mean.mrc",
                 f"RECOVAR {tag}: mean_half1_unfil": volumes / "mean_half1_unfil.mrc"}
    bp = work / f"{label}_backproject.mrc"
    if not bp.is_file():
        run_checked(cryospire_cmd("backproject", str(stack), "--poses", str(poses), "--ctf", str(ctf), "--invert",
                                  invert, "--out", str(bp), "--overwrite", "--quiet", "--threads",
                                  env["OMP_NUM_THREADS"]), work / f"{label}_backproject.log", env)
    return maps | {"cryospire backproject": bp}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path, help="cache folder (holds recovar-venv, as quality.py's)")
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--snr", type=float, default=1.0, help="SNR of the cryospire simulation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cryospire simulation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recovar_selfcheck.txt"))
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    work = args.work / f"recovar_selfcheck_{args.box}"
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(args.threads)
    exe = recovar_venv(args.work)
    xenv = recovar_env(env, args.threads)

    ours = simulate("hinge", work / "cryospire-sim", args, env)
    gt = load_ground_truth(ours / "gt")
    theirs = work / "recovar-sim"
    stack = theirs / f"particles.{args.box}.mrcs"
    if not stack.is_file():
        (work / "volume").mkdir(exist_ok=True)
        shutil.copyfile(gt.map_paths[0], work / "volume" / "vol0000.mrc")
        run_checked([str(exe.parent / "python"), "-c", _RECOVAR_SIMULATE, str(theirs), f"{gt.lattice.apix:g}",
                     str(work / "volume" / "vol"), str(args.n), str(args.box), str(RECOVAR_SIM_NOISE)],
                    work / "recovar_simulate.log", xenv)

    cases = [("recovar-sim", gt[0], reconstruct("recovar-sim", stack, theirs / "poses.pkl", theirs / "ctf.pkl", "no",
                                                work, exe, env, xenv)),
             ("cryospire-sim", population_mean(gt, gt.labels),
              reconstruct("cryospire-sim", ours / "particles.mrcs", ours / "poses.pkl", ours / "ctf.pkl", "auto",
                          work, exe, env, xenv))]
    lines = [f"RECOVAR {RECOVAR_VERSION} self-check: homogeneous maps scored against the truth (FSC AUC inside the "
             f"ground-truth mask); {args.box} px, {args.n} images (`benchmarks/recovar_selfcheck.py`)",
             f"{'data':>14}  {'map':<38}  {'AUC':>6}  {'res0.5 Å':>8}  {'vs backproject':>14}"]
    for name, truth, maps in cases:
        scores = {label: score_states([(0, read_grid_map(path, gt.lattice).data, truth, None)], gt.mask, label,
                                      gt.lattice.apix).states[0] for label, path in maps.items()}
        reference = scores["cryospire backproject"].auc
        for label, s in scores.items():
            angstrom = freq_to_angstrom(s.res_05, gt.lattice.apix)
            res = f"{angstrom:8.1f}" if np.isfinite(angstrom) else f"{'-':>8}"
            lines.append(f"{name:>14}  {label:<38}  {s.auc:6.3f}  {res}  {s.auc / reference:14.2f}")
    lines += ["recovar-sim: one ground-truth map projected by RECOVAR's simulator with its own poses and CTFs (noise "
              f"level {RECOVAR_SIM_NOISE}), reconstructed from RECOVAR's own files; cryospire-sim: `cryospire simulate "
              f"--preset hinge --snr {args.snr:g}` read from the poses.pkl / ctf.pkl quality.py gives the peers, scored "
              "against the noise-free population-mean map.",
              f"RECOVAR: `recovar pipeline --mask sphere --zdim {RECOVAR_ZDIM} --accept-cpu --only-mean` (its CPU path), as shipped "
              "and with the oversampling factor given to its CPU slicing (quality.py's RECOVAR_CPU_LAUNCHER); cryospire: "
              "`cryospire backproject` (direct Fourier inversion, no regularisation beyond its Wiener constant)."]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
