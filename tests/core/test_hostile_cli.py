"""Hostile command lines (``hostile_cli``): every case ends in its exact outcome (one clear error
line with exit 1, or a sound result with exit 0), never a traceback, and no file the user made
is written, truncated or deleted. The tally by category is printed and written to
``<pytest tmp>/hostile_cli/tally.txt``; ``benchmarks/hostile_tally.py`` prints the same table."""

from __future__ import annotations

import pytest

from .hostile_cli import Tally, Unexpected, all_cases, make_template, run_case

CASES = all_cases()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template(tmp_path_factory.mktemp("hostile_cli") / "template")


@pytest.fixture(scope="module")
def tally(template):
    t = Tally()
    yield t
    table = t.table()
    (template.parent / "tally.txt").write_text(table + "\n")
    print(f"\nhostile command-line tally ({template.parent / 'tally.txt'}):\n{table}")


def test_there_are_enough_cases():
    assert len(CASES) >= 150
    assert {c.category for c in CASES} >= {"user files", "physics", "numbers", "metadata", "options", "run folder",
                                          "results"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, template, tally, tmp_path):
    try:
        outcome = run_case(case, template, tmp_path)
    except Unexpected:
        tally.add(case.category, "unexpected")
        raise
    tally.add(case.category, outcome)


@pytest.mark.parametrize("argv, line", [
    (["train", "nothing.star", "--out", "r", "--batch-size", "0"],
     "cryospire train: error: --batch-size: expected a whole number >= 1, found 0"),
    (["render", "no-run", "--z", "z.txt", "--out", "maps"], "cryospire render: error: no-run"),
    (["backproject", "missing.star", "--out", "bp.mrc"], "cryospire backproject: error: missing.star: "),
    (["simulate", "--preset", "hinge", "--box", "31", "--n", "10", "--snr", "1", "--out", "s"],
     "cryospire simulate: error: --box: expected an even whole number"),
])
def test_the_installed_command_prints_one_line_and_no_traceback(argv, line, tmp_path):
    """The real entry point in its own process (the in-process harness cannot see what Python
    itself prints at exit): exit 1, one line on stderr, no traceback."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "cryospire_core.cli.main", *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith(line), res.stderr
