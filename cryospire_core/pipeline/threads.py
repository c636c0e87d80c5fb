"""How many CPU threads a command may use: the CPUs this process is actually allowed, not every
core of the node.

On a cluster node or a workstation shared with other jobs, ``os.cpu_count()`` (and torch's own
default) counts every core, while the process may be pinned to a few (``taskset``, SLURM's
cgroups), capped by a CPU quota (a container's ``--cpus``, cgroup ``cpu.max``) or given a share
by the scheduler (``SLURM_CPUS_PER_TASK``). More threads than CPUs makes OpenMP's threads wait
for each other: a stage-2 step slowed ~6x here with one other busy process beside a 2-thread
run. The budget is the smallest of these limits; ``OMP_NUM_THREADS`` or ``--threads`` set by the
user wins. Under torchrun the processes of one node share it (``LOCAL_WORLD_SIZE``).

When other processes are already busy on this process's CPUs as a command starts, idle OpenMP
threads are made to sleep at once rather than spin (``OMP_WAIT_POLICY=PASSIVE``, set before torch
loads, unless the user chose a policy): a spinning thread whose partner's CPU is taken burns the
CPU that partner needs. Measured here (``benchmarks/threads.py``, 2 cores, stage 2 of the cpu
profile): 1.8-1.9x the steps/s with one busy process beside the run; on an idle machine the
spinning default was faster (sleeping threads ran at 0.64-1.10x of it), hence only when shared.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# cgroup v2 (one file: "<quota> <period>" or "max <period>") and v1 (two files, quota -1 = none).
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


@dataclass(frozen=True)
class ThreadBudget:
    """``n`` threads, and the limit that set it (``"affinity"``, ``"cgroup quota"``,
    ``"SLURM_CPUS_PER_TASK"``, ``"OMP_NUM_THREADS"``, ``"--threads"``, with ``" / K processes"``
    under torchrun)."""

    n: int
    source: str

    def __str__(self) -> str:
        return f"{self.n} CPU thread{'s' if self.n != 1 else ''} ({self.source})"


def cgroup_cpus(v2: Path = _CGROUP_V2, v1: tuple[Path, Path] = _CGROUP_V1) -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), or None without one."""
    try:
        quota, period = v2.read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota, period = (int(p.read_text()) for p in v1)
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def _positive_int(text: str | None) -> int | None:
    try:
        n = int(text) if text is not None else None
    except ValueError:
        return None
    return n if n is not None and n > 0 else None


def thread_budget(requested: int | str = "auto", environ: dict[str, str] | None = None,
                  cgroup: int | None | str = "read") -> ThreadBudget:
    """The threads a command uses: ``requested`` when it is a number; otherwise
    ``OMP_NUM_THREADS`` when set to a positive whole number, else the smallest of the CPU
    affinity, the cgroup quota and ``SLURM_CPUS_PER_TASK``; divided among torchrun's processes
    on this node. ``environ``/``cgroup`` replace ``os.environ``/the cgroup files (tests)."""
    env = os.environ if environ is None else environ
    if requested != "auto":
        n, source = int(requested), "--threads"
    elif _positive_int(env.get("OMP_NUM_THREADS")) is not None:
        n, source = _positive_int(env.get("OMP_NUM_THREADS")), "OMP_NUM_THREADS"
    else:
        limits = {"affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1}
        quota = cgroup_cpus() if cgroup == "read" else cgroup
        if quota is not None:
            limits["cgroup quota"] = quota
        slurm = _positive_int(env.get("SLURM_CPUS_PER_TASK"))
        if slurm is not None:
            limits["SLURM_CPUS_PER_TASK"] = slurm
        source = min(limits, key=lambda k: (limits[k], k != "affinity"))
        n = limits[source]
        processes = _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1
        if processes > 1:
            n, source = max(1, n // processes), f"{source} / {processes} processes"
    return ThreadBudget(n, source)


def use_threads(budget: ThreadBudget) -> None:
    """Make torch compute with ``budget.n`` threads: the one place cryospire sets torch's thread
    count (the commands, the training service and the napari docks all call it)."""
    import torch

    torch.set_num_threads(budget.n)


def busy_cpus(before: str, after: str, cpus: set[int]) -> float:
    """How many of ``cpus`` other processes kept busy between two readings of ``/proc/stat``
    (taken while this process slept): the busy fraction of their time, times their count."""
    def times(text: str) -> tuple[int, int]:
        busy = total = 0
        for line in text.splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(f) for f in fields[:8]]
                idle = ticks[3] + ticks[4]  # idle + iowait
                busy, total = busy + sum(ticks) - idle, total + sum(ticks)
        return busy, total

    (b0, t0), (b1, t1) = times(before), times(after)
    return len(cpus) * (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def prefer_sleeping_threads(environ: dict[str, str] | None = None, busy: float | None = None,
                            seconds: float = 0.2) -> None:
    """Ask OpenMP to put idle threads to sleep instead of spinning when other processes keep at
    least half a CPU of this process's CPUs busy (``busy``, measured over ``seconds`` when not
    given), unless the user chose a policy; only effective before torch is first imported."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env:
        return
    if busy is None:
        if "torch" in sys.modules:
            return  # OpenMP has loaded and read its policy: measuring would only cost time
        try:
            stat = Path("/proc/stat")
            first = stat.read_text()
            time.sleep(seconds)
            busy = busy_cpus(first, stat.read_text(), os.sched_getaffinity(0))
        except (OSError, ValueError, AttributeError):
            return  # no /proc (not Linux): keep OpenMP's default
    if busy >= 0.5:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
