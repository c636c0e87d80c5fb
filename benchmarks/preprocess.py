"""Does the data term's preprocessing help where it should? A consensus fit on white noise,
coloured noise, and coloured noise with neighbouring particles, with the soft window off/on and
noise weighting off/on, scored by the FSC AUC of the fitted map against the ground truth.

Data: the ``homogeneous`` preset simulated three times with the same seed (``--noise-spectrum``
white / coloured, ``--clutter`` 0 / 2). Fit: the consensus stage from a map that only knows the
molecule's low resolution (the ground truth blurred by a Gaussian of 1.5 px, as a poor starting
refinement would give), its 3D pre-fit, then ``--epochs`` epochs against the images with the
data term of each row (:func:`cryospire_core.pipeline.preprocess.stage_misfit`; the noise
spectrum measured from the image backgrounds as a run does). Every fit starts from the same seed
and sees the same batches: the rows differ only in the data term.

Usage::

    python benchmarks/preprocess.py [--box 64] [--n 5000] [--snr 0.05] [--epochs 1] \\
        [--work /tmp/preprocess_bench] [--out benchmarks/results/preprocess.txt]

Prints one table and writes it to --out.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cryospire_core.imaging.fsc import auc, fsc, max_auc
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import read_map
from cryospire_core.models.consensus import (
    ConsensusConfig,
    ConsensusFiles,
    fit_consensus,
)
from cryospire_core.pipeline.preprocess import (
    PreprocessConfig,
    measure_noise_spectrum,
    stage_misfit,
)
from cryospire_core.sim.simulate import simulate, write_simulation

CASES = {"white": ("white", 0), "coloured": ("coloured", 0), "coloured+clutter": ("coloured", 2)}
SEED_BLUR_PX = 1.5


def fit_auc(ps, seed_map: np.ndarray, gt: np.ndarray, mask: np.ndarray, pre: PreprocessConfig, spectrum,
            epochs: int, work: Path) -> float:
    """AUC against ``gt`` of the consensus fitted from ``seed_map`` with the data term of ``pre``."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files = ConsensusFiles(*(work / f for f in ("backprojection.mrc", "checkpoint.pt", "gaussians.npz", "map.mrc",
                                                 "history.json")))
    cfg = ConsensusConfig(epochs=epochs, map_fit_steps=100)
    fit_consensus(ps, seed_map, files, cfg, torch.device("cpu"), misfit=stage_misfit(pre, ps.box, spectrum))
    return auc(*fsc(read_map(files.map).data, gt, mask))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", default="/tmp/preprocess_bench")
    parser.add_argument("--out", default="benchmarks/results/preprocess.txt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    t_start = time.perf_counter()
    lines = [(f"consensus fit (homogeneous preset, {args.box} px, {args.n} images, SNR {args.snr:g}, "
              f"{args.epochs} epoch(s) from the ground truth blurred by {SEED_BLUR_PX} px); "
              f"FSC AUC vs ground truth (max {max_auc(args.box):.3f}), 1 CPU thread"),
             f"{'noise':<18} {'window':<7} {'weighting':<10} {'AUC':>8} {'vs plain':>9} {'seconds':>8}"]
    print("\n".join(lines), flush=True)
    for name, (spectrum_kind, clutter) in CASES.items():
        data = work / name
        if not (data / "metadata.json").exists():
            write_simulation(data, simulate("homogeneous", args.box, args.n, args.snr, seed=2,
                                            noise_spectrum=spectrum_kind, clutter=clutter), overwrite=True)
        ps = load_particles(data / "particles.star")
        gt, mask = read_map(data / "gt" / "vol_000.mrc").data, read_map(data / "gt" / "mask.mrc").data
        seed_map = ndimage.gaussian_filter(gt, SEED_BLUR_PX)
        spectrum = measure_noise_spectrum(ps, PreprocessConfig().window_radius)
        plain = None
        for window in (False, True):
            for weighting in (False, True):
                t0 = time.perf_counter()
                value = fit_auc(ps, seed_map, gt, mask, PreprocessConfig(window=window, noise_weighting=weighting),
                                spectrum, args.epochs, work / "fit")
                plain = value if plain is None else plain
                line = (f"{name:<18} {'on' if window else 'off':<7} {'on' if weighting else 'off':<10} {value:8.5f} "
                        f"{value - plain:+9.5f} {time.perf_counter() - t0:8.0f}")
                lines.append(line)
                print(line, flush=True)
    lines.append(f"total {time.perf_counter() - t_start:.0f} s; command: python benchmarks/preprocess.py "
                 f"--box {args.box} --n {args.n} --snr {args.snr:g} --epochs {args.epochs}")
    print(lines[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
