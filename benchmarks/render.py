"""Benchmark of the Gaussian-mixture renderer: fast path vs the dense reference.

Run:  .venv/bin/python benchmarks/render.py [--quick] [--dense-limit SECONDS]

Prints one table per device (CPU, and CUDA when present):
- projection: forward+backward images/s for a batch of 16 images with per-image centres and
  amplitudes (the heterogeneous training case), shifts, CTF and an L2 loss;
- rasterisation: ms per volume, forward only (what the GUI and evaluation need);
for box 64/128/256 and G 2,048/8,192/16,384 (``--quick``: box 64/128, G 2,048/8,192).
The mixture: centres uniform in a ball of radius 0.3 D pixels, widths uniform in 1-2 pixels,
amplitudes in [0.5, 1.5], apix 3 Å.

Timings are the best of several runs (wall clock): other processes sharing the machine inflate
the others. The dense reference runs once per case on 1 image (projection) or the whole volume
(rasterisation), only when a calibration predicts it takes under ``--dense-limit`` seconds.
"%peak" columns: the fast path's GEMM FLOP rate over the peak FLOP/s of a large float32
matmul, and a lower bound of its work-array traffic (each 1D-factor, row-product and output
element written and read once per GEMM pass) over the bandwidth of a large copy.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from cryospire_core.imaging import render
from cryospire_core.imaging.ctf import make_ctf_params
from cryospire_core.imaging.geometry import random_rotations
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.render_reference import project_dense, rasterize_dense

APIX = 3.0
BATCH = 16


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, reps: int) -> float:
    """Best wall-clock time of ``reps`` calls after one warm-up call."""
    fn()
    sync(device)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def time_once(fn, device: torch.device) -> float:
    """Wall-clock time of one call (for the slow dense reference)."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def machine_peaks(device: torch.device) -> tuple[float, float]:
    """(FLOP/s of a 4096^2 float32 matmul, bytes/s of a 512 MiB copy: read + write)."""
    n = 4096
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    flops = 2 * n**3 / best_time(lambda: a @ b, device, 3)
    src = torch.empty(2**27, device=device).normal_()
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / best_time(lambda: dst.copy_(src), device, 3)
    return flops, bandwidth


def mixture(box: int, G: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(G, 3, generator=g)
    v = v / v.norm(dim=1, keepdim=True) * torch.rand(G, 1, generator=g) ** (1 / 3) * 0.3 * box * APIX
    s = (1.0 + torch.rand(G, generator=g)) * APIX
    m = 0.5 + torch.rand(G, generator=g)
    return v.to(device), s.to(device), m.to(device)


def projection_case(box: int, G: int, B: int, device: torch.device):
    """Inputs of a training-like step: per-image centres/amplitudes, poses, shifts, CTF, data."""
    c, s, m = mixture(box, G, device)
    g = torch.Generator().manual_seed(1)
    centres = (c[None].cpu() + 0.5 * APIX * torch.randn(B, G, 3, generator=g)).to(device)
    amps = (m[None].cpu() * (0.5 + torch.rand(B, G, generator=g))).to(device)
    rot = torch.tensor(random_rotations(B, np.random.default_rng(1)), dtype=torch.float32, device=device)
    shifts = (2.0 * APIX * torch.randn(B, 2, generator=g)).to(device)
    ctf = torch.tensor(make_ctf_params(B, 15000.0, 14000.0, 30.0), dtype=torch.float32, device=device)
    data = torch.randn(B, box, box, generator=g).to(device)
    return dict(centres=centres, widths=s, amplitudes=amps, rotations=rot, shifts=shifts, lattice=Lattice(box, APIX),
                ctf=ctf), data


def step(fn, kw: dict, data: torch.Tensor):
    """Returns a closure: forward, L2 loss, backward w.r.t. centres, widths, amplitudes."""

    def run():
        leaves = {k: kw[k].detach().requires_grad_(True) for k in ("centres", "widths", "amplitudes")}
        loss = ((fn(**{**kw, **leaves}) - data) ** 2).sum()
        loss.backward()

    return run


def projection_work(kw: dict) -> tuple[int, int]:
    """(GEMM FLOPs of forward+backward, work-array bytes lower bound) of the fast projection."""
    lattice = kw["lattice"]
    xy = torch.einsum("bij,bgj->bgi", kw["rotations"][:, :2, :], kw["centres"]) - kw["shifts"][:, None, :]
    u = lattice.index(xy.flip(-1))
    s_px = (kw["widths"] / lattice.apix).expand(u.shape[0], -1)
    tile = render.default_tile(2, lattice.box, float(torch.quantile(kw["widths"] / lattice.apix, 0.9)))
    return _work(render.TilePlan(u, s_px, (lattice.box,) * 2, tile, render.WINDOW_SIGMAS), passes=3)


def raster_work(c, s, lattice: Lattice) -> tuple[int, int]:
    u = lattice.index(c.flip(-1))[None]
    s_px = (s / lattice.apix)[None]
    tile = render.default_tile(3, lattice.box, float(torch.quantile(s / lattice.apix, 0.9)))
    return _work(render.TilePlan(u, s_px, lattice.shape, tile, render.WINDOW_SIGMAS), passes=1)


def _work(plan: render.TilePlan, passes: int) -> tuple[int, int]:
    padded = sum(n * L for _, n, L in plan.chunks)
    rows = padded * math.prod(plan.tile[:-1]) if len(plan.tile) > 2 else 0
    tiles_out = sum(n for _, n, _ in plan.chunks) * math.prod(plan.tile)
    elements = plan.factor_elements + rows + tiles_out
    return passes * plan.gemm_flops, passes * 2 * 4 * elements


def calibrate_dense(device: torch.device) -> tuple[float, float]:
    """Seconds per (pixel, Gaussian) term: projection forward+backward, rasterisation forward."""
    kw, data = projection_case(48, 1024, 1, device)
    t_proj = time_once(step(project_dense, kw, data), device) / (48 * 48 * 1024)
    c, s, m = mixture(32, 512, device)
    with torch.no_grad():
        t_rast = time_once(lambda: rasterize_dense(c, s, m, Lattice(32, APIX)), device) / (32**3 * 512)
    return t_proj, t_rast


def bench_device(device: torch.device, boxes, counts, dense_limit: float, reps: int) -> None:
    flops_peak, bw_peak = machine_peaks(device)
    print(f"\n## {device.type.upper()}  (threads: {torch.get_num_threads()}; peak: {flops_peak / 1e9:.0f} GFLOP/s "
          f"float32 matmul, {bw_peak / 1e9:.1f} GB/s copy; load average {os.getloadavg()[0]:.2f})")
    per_term_proj, per_term_rast = calibrate_dense(device)
    header = ("| box | G | project fast img/s | dense img/s | speedup | GEMM %peak FLOP | traffic %peak BW "
              "| rasterise fast ms | dense ms | speedup | GEMM %peak FLOP | traffic %peak BW |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for box in boxes:
        for G in counts:
            kw, data = projection_case(box, G, BATCH, device)
            t_fast = best_time(step(render.project, kw, data), device, reps)
            flops, traffic = projection_work(kw)
            fast_ips = BATCH / t_fast
            kw1 = {k: (v[:1] if k in ("centres", "amplitudes", "rotations", "shifts", "ctf") else v) for k, v in kw.items()}
            if per_term_proj * box * box * G < dense_limit:
                t_dense = time_once(step(project_dense, kw1, data[:1]), device)
                per_term_proj = t_dense / (box * box * G)  # better estimate for the next case
                dense_ips = 1.0 / t_dense
                p_dense, p_speed = f"{dense_ips:.3f}", f"{fast_ips / dense_ips:.0f}x"
            else:
                p_dense, p_speed = "skipped", "-"
            p_flop = 100 * flops / t_fast / flops_peak
            p_bw = 100 * traffic / t_fast / bw_peak

            c, s, m = mixture(box, G, device)
            lattice = Lattice(box, APIX)
            with torch.no_grad():
                r_fast = best_time(lambda: render.rasterize(c, s, m, lattice), device, reps)
                r_flops, r_traffic = raster_work(c, s, lattice)
                if per_term_rast * box**3 * G < dense_limit:
                    r_dense_t = time_once(lambda: rasterize_dense(c, s, m, lattice), device)
                    per_term_rast = r_dense_t / (box**3 * G)
                    r_dense, r_speed = f"{1e3 * r_dense_t:.0f}", f"{r_dense_t / r_fast:.0f}x"
                else:
                    r_dense, r_speed = "skipped", "-"
            print(f"| {box} | {G} | {fast_ips:.1f} | {p_dense} | {p_speed} | {p_flop:.1f}% | {p_bw:.1f}% "
                  f"| {1e3 * r_fast:.1f} | {r_dense} | {r_speed} | {100 * r_flops / r_fast / flops_peak:.1f}% "
                  f"| {100 * r_traffic / r_fast / bw_peak:.1f}% |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="box 64/128, G 2,048/8,192 only")
    parser.add_argument("--dense-limit", type=float, default=30.0, help="skip dense cases predicted to take longer (s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    boxes = (64, 128) if args.quick else (64, 128, 256)
    counts = (2048, 8192) if args.quick else (2048, 8192, 16384)
    reps = 2 if args.quick else 3
    print(f"Renderer benchmark: batch {BATCH} for projections, widths 1-2 px, window {render.WINDOW_SIGMAS} widths")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        bench_device(device, boxes, counts, args.dense_limit, reps)


if __name__ == "__main__":
    main()
