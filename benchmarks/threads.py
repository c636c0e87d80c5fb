"""Stage-2 training throughput on a shared machine: alone, and with other CPU-bound processes
beside it, for three thread settings.

Run:  .venv/bin/python benchmarks/threads.py [--seconds 20] [--competitors 1]

Settings: "before" is how cryospire ran until now (torch's thread count, OpenMP's default wait
policy: idle threads spin a while); "after" is what a ``cryospire`` command does now
(``thread_budget()`` threads, the CPUs this process may use, and ``prefer_sleeping_threads()``:
``OMP_WAIT_POLICY=PASSIVE``, idle threads sleep at once, when other processes are busy on its
CPUs as it starts); "passive" forces that policy; "1 thread" is ``--threads 1`` (same check). Each case runs in its own process (the wait policy is read when OpenMP loads)
and times training steps of the ``cpu`` profile's stage-2 model (4,096 Gaussians, 64 px, batch
64; the model of ``benchmarks/speed.py``) for ``--seconds``; the competitors are busy Python
loops started just before it and stopped just after. steps/s = 1 / median step time. Writes the
table to benchmarks/results/threads_cpu.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BUSY = "while True: pass"


# setting -> (--threads, or None for torch's own count; OMP_WAIT_POLICY: None for OpenMP's default,
# "check" for what the command line decides)
SETTINGS = {"before": (None, None), "after": ("auto", "check"), "passive": ("auto", "PASSIVE"), "1 thread": (1, "check")}


def case(seconds: float, threads: int | str | None, check: bool) -> dict:
    """Time stage-2 steps for ``seconds`` in this process; the JSON row."""
    if check:
        from cryospire_core.pipeline.threads import prefer_sleeping_threads

        prefer_sleeping_threads()  # before torch loads OpenMP, as cryospire_core.cli.main does
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import speed

    from cryospire_core.pipeline.threads import thread_budget, use_threads
    if threads is not None:
        use_threads(thread_budget(threads))
    cpu = torch.device("cpu")
    model, batch = speed.build(2, 64, cpu, profile="cpu"), speed.make_batch(64, 64, cpu)
    opt = model.make_optimizer()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(batch)[0].backward()
        for o in opt.optimizers:
            o.step()

    step()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"threads": torch.get_num_threads(), "steps_per_s": 1 / statistics.median(times), "steps": len(times),
            "policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def run(seconds: float, setting: str, competitors: int) -> dict:
    threads, policy = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if policy not in (None, "check"):
        env["OMP_WAIT_POLICY"] = policy
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(competitors)]
    try:
        out = subprocess.run([sys.executable, __file__, "--case", json.dumps([seconds, threads, policy == "check"])], env=env,
                             check=True, capture_output=True, text=True).stdout
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per case (default 20)")
    parser.add_argument("--competitors", type=int, default=1, help="busy processes beside it (default 1)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(*json.loads(args.case))))
        return 0
    rows = []
    for setting in SETTINGS:
        alone = run(args.seconds, setting, 0)
        shared = run(args.seconds, setting, args.competitors)
        rows.append([setting, str(alone["threads"]), f"{alone['steps_per_s']:.2f}", alone["policy"],
                     f"{shared['steps_per_s']:.2f}", shared["policy"], f"{shared['steps_per_s'] / alone['steps_per_s']:.2f}"])
    head = ["setting", "threads", "alone steps/s", "policy", f"+{args.competitors} busy steps/s", "policy", "shared/alone"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    speed = {r[0]: (float(r[2]), float(r[4])) for r in rows}
    lines.append(f"\nafter/before: alone {speed['after'][0] / speed['before'][0]:.2f}x, "
                 f"with {args.competitors} busy {speed['after'][1] / speed['before'][1]:.2f}x")
    lines.append(f"os.cpu_count() {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}; "
                 f"load average at the end {os.getloadavg()[0]:.2f}")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads_cpu.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
