"""Run a program and measure it: wall time, CPU time and peak RSS of its process tree, and the load
average while it ran; optionally stop it when a wall-clock budget is spent.

Used by the benchmark scripts that compare whole programs (``quality.py``), so every tool is
measured the same way.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass
class Measured:
    """What :func:`measure` saw of one program.

    seconds: wall clock (s); cpu_seconds: user + system time of the process tree (s); peak_rss:
    the largest sum of the tree's resident sets (bytes), polled; returncode: the program's (negative:
    killed by that signal); load_mean/load_max: the 1-minute load average sampled while it ran;
    stopped: True when it was stopped at the budget; started: UNIX time of the start.
    """

    seconds: float
    cpu_seconds: float
    peak_rss: int
    returncode: int
    load_mean: float
    load_max: float
    stopped: bool = False
    started: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _poll(procs: list[psutil.Process], cpu: dict[int, float]) -> int:
    """RSS (bytes) of ``procs``; their CPU seconds so far recorded in ``cpu`` (pid -> s)."""
    rss = 0
    for p in procs:
        try:
            with p.oneshot():
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return rss


def _stop(child: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if still there after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def measure(cmd: list[str], log: Path, env: dict[str, str] | None = None, budget_s: float | None = None,
            poll_s: float = 0.2) -> Measured:
    """Run ``cmd`` (stdout and stderr to ``log``) in its own process group and measure it; with
    ``budget_s``, stop it (the whole group) once that many wall-clock seconds have passed.

    CPU time is the larger of two counts: the reaped children's rusage (exact for a tree that
    ends normally) and the sum of the last CPU times polled per process (what a stopped tree,
    whose orphans are not reaped here, used up to the last poll).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    t0 = time.perf_counter()
    peak, cpu, loads, stopped = 0, {}, [], False
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            peak = max(peak, _poll(_tree(proc), cpu))
            loads.append(os.getloadavg()[0])
            if budget_s is not None and time.perf_counter() - t0 >= budget_s:
                stopped = True
                _stop(child)
                break
            time.sleep(poll_s)
        child.wait()
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    loads = loads or [os.getloadavg()[0]]
    return Measured(seconds, max(reaped, sum(cpu.values())), peak, child.returncode,
                    sum(loads) / len(loads), max(loads), stopped, started)


def run_checked(cmd: list[str], log: Path, env: dict[str, str] | None = None,
                budget_s: float | None = None) -> Measured:
    """:func:`measure`, raising with the log's tail when the program fails (a stop at the budget
    is not a failure)."""
    m = measure(cmd, log, env, budget_s)
    if m.returncode != 0 and not m.stopped:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} exited {m.returncode}; end of {log}:\n{tail}")
    return m
