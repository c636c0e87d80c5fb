"""threads: the CPUs a process may use, from its affinity, cgroup quota, SLURM and OpenMP
settings, and the command line's --threads (printed by train, saved in the run's config)."""

from __future__ import annotations

import os

import pytest

from cryospire_core.pipeline.threads import (
    ThreadBudget,
    busy_cpus,
    cgroup_cpus,
    prefer_sleeping_threads,
    thread_budget,
)

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("env, cgroup, expected", [
    ({}, None, ThreadBudget(AFFINITY, "affinity")),
    ({}, 1, ThreadBudget(1, "cgroup quota") if AFFINITY > 1 else ThreadBudget(1, "affinity")),
    ({"SLURM_CPUS_PER_TASK": "1"}, None, ThreadBudget(1, "SLURM_CPUS_PER_TASK") if AFFINITY > 1
     else ThreadBudget(1, "affinity")),
    ({"SLURM_CPUS_PER_TASK": "512"}, None, ThreadBudget(AFFINITY, "affinity")),
    ({"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "1"}, 1, ThreadBudget(3, "OMP_NUM_THREADS")),
    ({"OMP_NUM_THREADS": "0"}, None, ThreadBudget(AFFINITY, "affinity")),  # not a usable value: ignored
    ({"OMP_NUM_THREADS": "four", "SLURM_CPUS_PER_TASK": "x"}, None, ThreadBudget(AFFINITY, "affinity")),
    ({"LOCAL_WORLD_SIZE": "64"}, None, ThreadBudget(1, "affinity / 64 processes")),
])
def test_the_budget_is_the_smallest_limit_and_the_users_choice_wins(env, cgroup, expected):
    assert thread_budget("auto", environ=env, cgroup=cgroup) == expected


def test_threads_given_on_the_command_line_win():
    assert thread_budget(5, environ={"OMP_NUM_THREADS": "2"}, cgroup=1) == ThreadBudget(5, "--threads")
    assert str(ThreadBudget(1, "cgroup quota")) == "1 CPU thread (cgroup quota)"


@pytest.mark.parametrize("v2, v1, expected", [
    ("max 100000\n", None, None), ("150000 100000\n", None, 2), ("50000 100000", None, 1),
    (None, ("-1", "100000"), None), (None, ("400000", "100000"), 4), (None, None, None), ("garbage", None, None),
])
def test_cgroup_quota_v1_and_v2(tmp_path, v2, v1, expected):
    f2, q1, p1 = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    if v2 is not None:
        f2.write_text(v2)
    if v1 is not None:
        q1.write_text(v1[0])
        p1.write_text(v1[1])
    assert cgroup_cpus(f2, (q1, p1)) == expected


STAT = """cpu  10 0 10 100 0 0 0 0 0 0
cpu0 {u0} 0 0 {i0} 0 0 0 0 0 0
cpu1 {u1} 0 0 {i1} 0 0 0 0 0 0
intr 1 2 3
"""


def test_busy_cpus_counts_other_processes_on_our_cpus_only():
    before = STAT.format(u0=100, i0=100, u1=100, i1=100)
    after = STAT.format(u0=200, i0=100, u1=110, i1=190)  # cpu0 fully busy, cpu1 10 % busy
    assert busy_cpus(before, after, {0, 1}) == pytest.approx(2 * 110 / 200)
    assert busy_cpus(before, after, {0}) == pytest.approx(1.0)
    assert busy_cpus(before, after, {1}) == pytest.approx(0.1)
    assert busy_cpus(before, before, {0, 1}) == 0.0


@pytest.mark.parametrize("env, busy, policy", [
    ({}, 1.0, "PASSIVE"), ({}, 0.2, None), ({"OMP_WAIT_POLICY": "ACTIVE"}, 2.0, "ACTIVE"),
])
def test_idle_threads_sleep_only_on_a_shared_machine_unless_the_user_chose(env, busy, policy):
    prefer_sleeping_threads(env, busy=busy)
    assert env.get("OMP_WAIT_POLICY") == policy


def test_the_command_line_measures_before_torch_loads(tmp_path):
    """In a fresh process the check reads /proc/stat and decides; with torch loaded it does
    nothing (OpenMP has read its policy already)."""
    import subprocess
    import sys

    code = ("import os, sys; from cryospire_core.pipeline.threads import prefer_sleeping_threads as p; "
            "e = {}; p(e, seconds=0.05); print(e.get('OMP_WAIT_POLICY'), 'torch' in sys.modules); "
            "import torch; e = {}; p(e, seconds=0.05); print(e.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out[0] in ("None", "PASSIVE") and out[1] == "False" and out[2] == "None"


def test_every_command_takes_threads_and_train_prints_and_saves_them(tmp_path):
    """``--threads 1`` reaches torch, the train log line and RUN/config.json; a bad value is one
    usage line."""
    import json
    import subprocess
    import sys

    from cryospire_core.sim.simulate import simulate, write_simulation

    data = write_simulation(tmp_path / "data", simulate("homogeneous", 16, 40, snr=10.0, seed=0))
    cmd = [sys.executable, "-m", "cryospire_core.cli.main", "train", str(data / "particles.star"), "--out",
           str(tmp_path / "run"), "--stage", "consensus", "--epochs-consensus", "1", "--quiet", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "on cpu with 1 CPU thread (--threads)" in res.stdout
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train_command"]
    assert saved["threads"] == 1 and saved["threads_source"] == "--threads"
    bad = subprocess.run([*cmd[:-1], "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == \
        "cryospire train: error: --threads: expected auto or a whole number >= 1, found 0"
