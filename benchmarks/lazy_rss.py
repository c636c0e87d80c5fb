"""Peak memory while training on an image stack far larger than the memory it is allowed to use.

Run:  .venv/bin/python benchmarks/lazy_rss.py [--work DIR] [--keep] [--n 100000] [--box 128] [--steps 300]

1. Writes (or reuses, from ``--work``) a stack of ``--n`` images of ``--box`` px in float32
   (100,000 x 128 px: 6.55 GB) with a RELION 3.1 .star of its poses and CTFs. To write it
   quickly, 1,000 images of the ``homogeneous`` preset are simulated properly (uniform
   rotations, shifts, CTFs, SNR 0.05) and the stack repeats them, each copy with fresh noise
   (another 20% of the noise variance) and the poses/CTF of its original.
2. In a child process: loads the particles (contrast detection reads 1,000 images), reads every
   image once in order (as the backprojection and the consensus pass do), then trains stage 1
   (the paper's size: 2,048 Gaussians, MLPs 1 x 32, batch 64) for ``--steps`` steps through
   ``engine.run_loop`` (shuffled batches read by the prefetching thread from the memory-mapped
   stack).
3. Prints the child's peak resident memory (VmHWM, and the parent's RUSAGE_CHILDREN maximum),
   its file-backed and anonymous parts at the end, and the timings; writes the table to
   ``benchmarks/results/lazy_rss.txt``. The stack is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASE_IMAGES = 1000
RESULTS = Path(__file__).resolve().parent / "results"


def make_stack(work: Path, n: int, box: int) -> tuple[Path, bool]:
    """(the .star of an n-image stack in ``work``, whether an earlier one was reused)."""
    from cryospire_core.io import star
    from cryospire_core.io.mrc import StackWriter
    from cryospire_core.io.particles import ImageSource, ParticleSet, Provenance
    from cryospire_core.sim.simulate import simulate

    star_path, done = work / "particles.star", work / "stack.json"
    if done.exists() and json.loads(done.read_text()) == {"n": n, "box": box}:
        return star_path, True
    work.mkdir(parents=True, exist_ok=True)
    m = min(BASE_IMAGES, n)
    sim = simulate("homogeneous", box, m, snr=0.05, seed=1, oversample=1)
    base = np.concatenate([images for _, _, images in sim.batches()])
    noise = 0.2**0.5 * sim.noise_std
    rng = np.random.default_rng(2)
    copy = np.arange(n) % m
    with StackWriter(work / "particles.mrcs", box, sim.apix) as writer:
        for start in range(0, n, m):
            k = min(m, n - start)
            writer.append(base[:k] + noise * rng.standard_normal((k, box, box), dtype=np.float32))
    ps = ParticleSet(ImageSource([work / "particles.mrcs"], np.zeros(n, dtype=np.int64), np.arange(n), box),
                     sim.apix, sim.rotations[copy], sim.shifts[copy], sim.ctf[copy], np.ones(n, dtype=np.int64),
                     Provenance("simulated", work / "particles.mrcs"), sim.sign)
    star.write_star(star_path, ps)
    done.write_text(json.dumps({"n": n, "box": box}))
    return star_path, False


def remove_stack(work: Path, temporary: bool) -> None:
    if temporary:
        shutil.rmtree(work)
        return
    for f in (*work.glob("particles.*"), work / "stack.json"):
        f.unlink(missing_ok=True)


def memory_mb() -> dict[str, int]:
    """This process's peak resident memory (VmHWM) and its current anonymous / file-backed parts, MB."""
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) // 1024 for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def child(star_path: Path, steps: int, run_dir: Path) -> None:
    """Read every image once, then train stage 1 for ``steps`` steps; print a JSON report."""
    import torch

    from cryospire_core.io.load import load_particles
    from cryospire_core.models.discovery import (
        DiscoveryConfig,
        PartDiscoveryModel,
        image_variance,
    )
    from cryospire_core.models.engine import LoopConfig, run_loop
    from cryospire_core.sim.phantoms import make_phantom

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.perf_counter()
    ps = load_particles(star_path)
    report = {"n": len(ps), "box": ps.box, "stack_gb": len(ps) * ps.box**2 * 4 / 1e9, "load_s": time.perf_counter() - t0}
    t = time.perf_counter()
    total = 0.0
    for start in range(0, len(ps), 1024):
        total += float(ps.images(np.arange(start, min(start + 1024, len(ps)))).sum(dtype=np.float64))
    report["read_pass_s"] = time.perf_counter() - t
    report["after_read_pass"] = memory_mb()

    ph = make_phantom("homogeneous", ps.box, ps.apix)
    beads = {"centres": ph.centres[0], "widths": ph.sigmas, "amplitudes": ph.amplitudes, "box": ps.box, "apix": ps.apix}
    cfg = DiscoveryConfig(image_var=image_variance(ps))  # the paper's stage 1 (the class defaults)
    model = PartDiscoveryModel.from_consensus(beads, len(ps), cfg)
    done = {"steps": 0}

    def stop() -> bool:
        done["steps"] += 1
        return done["steps"] > steps

    t = time.perf_counter()
    run_loop(model, model.make_optimizer(), ps, LoopConfig(1, checkpoint_minutes=1e9), run_dir / "checkpoint.pt",
             "stage 1", torch.device("cpu"), should_stop=stop)
    report["train_s"] = time.perf_counter() - t
    report["steps"] = steps
    report["gaussians"] = cfg.n_gaussians
    report["end"] = memory_mb()
    print(json.dumps(report))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, help="folder for the stack (reused if it holds one of the same size)")
    p.add_argument("--keep", action="store_true", help="keep the stack afterwards")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child, args.steps, args.run)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="cryospire_lazy_"))
    t = time.perf_counter()
    star_path, reused = make_stack(work, args.n, args.box)
    write_s = time.perf_counter() - t
    try:
        with tempfile.TemporaryDirectory() as run:
            cmd = [sys.executable, __file__, "--child", str(star_path), "--steps", str(args.steps), "--run", run]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    finally:
        if not args.keep:
            remove_stack(work, temporary=args.work is None)
    a, e = r["after_read_pass"], r["end"]
    lines = [
        f"stack: {r['n']} images of {r['box']} px float32 = {r['stack_gb']:.2f} GB "
        f"({'reused' if reused else f'written in {write_s:.0f} s'}); machine RAM "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.0f} GB",
        f"load (metadata + contrast detection): {r['load_s']:.1f} s",
        f"read pass over every image: {r['read_pass_s']:.1f} s; then peak RSS {a['VmHWM']} MB "
        f"(RSS {a['VmRSS']} MB: anonymous {a['RssAnon']} MB, file-backed {a['RssFile']} MB)",
        f"stage 1 training ({r['gaussians']} Gaussians, batch 64, prefetch 2): {r['steps']} steps in {r['train_s']:.0f} s "
        f"({64 * r['steps'] / r['train_s']:.0f} images/s)",
        f"peak RSS of the whole run (VmHWM): {e['VmHWM']} MB; at the end RSS {e['VmRSS']} MB "
        f"(anonymous {e['RssAnon']} MB, file-backed {e['RssFile']} MB)",
        f"peak RSS of the child process seen by the parent (RUSAGE_CHILDREN ru_maxrss): {children_peak} MB",
        f"target < 3000 MB: {'met' if max(e['VmHWM'], children_peak) < 3000 else 'NOT met'}",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lazy_rss.txt").write_text(f"$ python benchmarks/lazy_rss.py {' '.join(sys.argv[1:])}\n{text}\n")


if __name__ == "__main__":
    main()
