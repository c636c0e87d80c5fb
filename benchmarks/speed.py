"""Training throughput and peak memory of the paper-size models at box 64, 128 and 256.

Run:  .venv/bin/python benchmarks/speed.py [--steps N] [--boxes 64,128,256] [--devices cpu,cuda]

One training step = forward (MLPs, deformation, projection with shifts and CTF, loss) +
backward + optimiser step (Adam, SparseAdam on the latents), the same call ``engine.run_loop``
makes. Models: the paper's stage 2 (8,192 Gaussians, MLPs of 3 hidden layers of 128, 8 parts)
and, for the comparison with the dense reference, the paper's stage 1 (2,048 Gaussians, 1 x 32).
Mixture: centres uniform in a ball of radius 0.3 D px, widths 1-2 px, pixel size 384 Å / D
(CryoBench's field of view). Batch 64, or ``--batch`` per box when memory demands.

Each case runs in its own process (``--steps`` timed steps after one warm-up step; the CPU
run is kept short, so on a shared machine the numbers are rough). images/s = batch / median
step time. Memory: on the CPU, the process's peak resident memory (VmHWM) minus its resident
memory before the first step, and the same at batch 8, giving a per-image slope (the basis of
the ``--batch-size`` guidance in the README); on CUDA, ``torch.cuda.max_memory_allocated``.
"ref" is the issue's dense PyTorch reference on this machine at 64 px, batch 64: 33 images/s
at the stage-1 size, 3 images/s at the paper's stage-2 size (only comparable on the CPU at 64 px).
Writes the table to benchmarks/results/speed_<device>[_<precision>].txt.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryospire_core.imaging.ctf import make_ctf_params
from cryospire_core.imaging.geometry import random_rotations
from cryospire_core.imaging.precision import autocast, grad_scaler, resolve_precision
from cryospire_core.models.discovery import PartDiscoveryModel
from cryospire_core.models.engine import Batch
from cryospire_core.models.hierarchical import PartAwareModel
from cryospire_core.pipeline.config import TrainConfig

FOV_A, PARTS, N_LATENTS = 384.0, 8, 4096
REFERENCE = {1: 33.0, 2: 3.0}  # dense reference, images/s, CPU, 64 px, batch 64
RESULTS = Path(__file__).resolve().parent / "results"


def mixture(g: int, box: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    apix = FOV_A / box
    d = rng.normal(size=(g, 3))
    r = 0.3 * box * rng.uniform(0, 1, g) ** (1 / 3)
    centres = d / np.linalg.norm(d, axis=1, keepdims=True) * r[:, None] * apix
    return {"centres": centres, "widths": rng.uniform(1, 2, g) * apix, "amplitudes": rng.uniform(0.5, 1.5, g),
            "box": box, "apix": apix}


def make_batch(box: int, n: int, device: torch.device, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    apix = FOV_A / box
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    return Batch(index=torch.as_tensor(rng.choice(N_LATENTS, n, replace=False), device=device),
                 images=t(rng.normal(size=(n, box, box))), rotations=t(random_rotations(n, rng)),
                 shifts=t(rng.uniform(-5, 5, (n, 2)) * apix),
                 ctf=t(make_ctf_params(n, rng.uniform(1e4, 3e4, n), rng.uniform(1e4, 3e4, n), rng.uniform(0, 180, n))))


def build(stage: int, box: int, device: torch.device, profile: str = "paper"):
    """A stage-``stage`` model at the sizes of ``profile`` on a random mixture."""
    sizes = TrainConfig.for_profile(profile)
    if stage == 1:
        cfg = sizes.discovery
        return PartDiscoveryModel.from_consensus(mixture(cfg.n_gaussians, box), N_LATENTS, cfg).to(device)
    cfg = sizes.hierarchical
    g = mixture(cfg.n_gaussians, box)
    part = np.arange(cfg.n_gaussians) % PARTS
    anchors = np.stack([g["centres"][part == k].mean(0) for k in range(PARTS)])
    rng = np.random.default_rng(1)
    model = PartAwareModel.from_parts(g, part, anchors, rng.normal(size=(PARTS, cfg.feature_dim)),
                                      rng.normal(size=(N_LATENTS, cfg.zdim)) * 0.3, cfg).to(device)
    with torch.no_grad():  # give the zero-initialised last layers values, as after some training
        for name, p in model.named_parameters():
            if name.endswith("head.weight"):
                p.normal_(0, 0.01)
    return model


def rss_mb() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024 for k in ("VmHWM", "VmRSS")}


def case(stage: int, box: int, batch: int, steps: int, device_name: str, precision: str) -> dict:
    """Time ``steps`` training steps after a warm-up; the child process's JSON result."""
    device = torch.device(device_name)
    precision = resolve_precision(precision, device)
    model = build(stage, box, device)
    opt = model.make_optimizer()
    scaler = grad_scaler(device, precision)
    b = make_batch(box, batch, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = model.loss(b)[0]
        scaler.scale(loss).backward()
        for o in opt.optimizers:
            scaler.step(o)
        scaler.update()
        sync()

    before = rss_mb()["VmRSS"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_gpu = torch.cuda.memory_allocated(device)
    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    out = {"stage": stage, "box": box, "batch": batch, "device": device_name, "precision": precision,
           "step_s": statistics.median(times), "peak_mb": rss_mb()["VmHWM"] - before}
    if device.type == "cuda":
        out["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base_gpu) / 2**20
    return out


def run_case(*args) -> dict:
    stage, box, batch, steps, device, precision = args
    cmd = [sys.executable, __file__, "--case", json.dumps(list(args))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head] + rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2, help="timed steps per case (after one warm-up)")
    p.add_argument("--boxes", default="64,128,256")
    p.add_argument("--batch", default="64,64,64", help="batch per box")
    p.add_argument("--devices", default="cpu,cuda", help="devices to try (cuda only when present)")
    p.add_argument("--precision", default="auto", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--no-slope", action="store_true", help="skip the batch-8 runs (no per-image memory)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(case(*json.loads(args.case))))
        return
    boxes = [int(b) for b in args.boxes.split(",")]
    batches = dict(zip(boxes, (int(b) for b in args.batch.split(","))))
    devices = [d for d in args.devices.split(",") if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    head = ["stage", "box", "batch", "precision", "img/s", "ref img/s", "x ref", "step s", "peak MB",
            "MB/image", "fixed MB"]
    for device in devices:
        rows = []
        for stage in (2, 1):
            for box in boxes:
                r = run_case(stage, box, batches[box], args.steps, device, args.precision)
                rate = r["batch"] / r["step_s"]
                ref = REFERENCE[stage] if device == "cpu" and box == 64 and r["batch"] == 64 else None
                per_image = fixed = "-"
                if not args.no_slope and r["batch"] > 8:
                    small = run_case(stage, box, 8, 1, device, args.precision)
                    slope = (r["peak_mb"] - small["peak_mb"]) / (r["batch"] - 8)
                    per_image, fixed = f"{slope:.1f}", f"{r['peak_mb'] - slope * r['batch']:.0f}"
                rows.append([str(stage), str(box), str(r["batch"]), r["precision"], f"{rate:.1f}",
                             f"{ref:.0f}" if ref else "-", f"{rate / ref:.1f}" if ref else "-",
                             f"{r['step_s']:.2f}", f"{r['peak_mb']:.0f}", per_image, fixed])
                print(" ".join(rows[-1]), flush=True)
        threads = torch.get_num_threads() if device == "cpu" else "-"
        text = (f"training throughput on {device} ({threads} threads), paper sizes: stage 2 = 8,192 Gaussians, "
                f"MLPs 3 x 128; stage 1 = 2,048, 1 x 32. Median of {args.steps} steps after 1 warm-up.\n"
                f"peak MB: peak memory during the steps above the memory before them; MB/image and fixed MB: "
                f"linear fit through batch 8 and the batch shown\n" + table(rows, head))
        print("\n" + text)
        RESULTS.mkdir(exist_ok=True)
        suffix = "" if args.precision == "auto" else f"_{args.precision}"
        (RESULTS / f"speed_{device}{suffix}.txt").write_text(f"$ python benchmarks/speed.py {' '.join(sys.argv[1:])}\n{text}\n")


if __name__ == "__main__":
    main()
