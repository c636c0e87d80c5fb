"""Hostile-input tally: the generators of ``tests/core/test_hostile_inputs.py`` with a fixed seed
and many more cases, and the table of how each kind of damage ended; then every hostile command
line of ``tests/core/test_hostile_cli.py`` (user files, physics, numbers, metadata, options, run
folder, results), tallied by category.

Run:  .venv/bin/python benchmarks/hostile_tally.py [--count 2000] [--seed 8] [--part readers|cli|both]

Command-line table columns: cases, clear error (exit 1 and one line ``file: field: expected ...``
matching the case), valid result (exit 0 and a sound result), unexpected (anything else: a
traceback, another exit status, an unsound result, or a user's file written, truncated or
deleted: must be 0; the first few are printed).

``--count`` cases are spread over the families (damage kind x file): hypothesis stops a family
early when it has tried every distinct case its generator can make (e.g. "empty file"), and the
cases it did not use go to the families that can make more, in further passes with the next
seeds; "tried" is what actually ran. Columns: InputError (file, field and what was expected),
repair (documented: NaN/Inf pixels set to 0 with a warning; missing origins taken as 0), read
ok (the damage did not matter and the data read is sound), other (anything else: another
exception, an unsound result, a hang past the time limit, a large allocation: must be 0; the
first few are printed). Exit status 1 when "other" is not 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.core import hostile_cli  # noqa: E402
from tests.core.hostile_cases import (  # noqa: E402
    FAMILIES,
    Tally,
    Unexpected,
    make_template,
    run_case,
)


def run_family(name: str, template: Path, n: int, rng_seed: int, tally: Tally, failures: list[str]) -> None:
    family = FAMILIES[name]

    # Generation only: a failure is counted, not shrunk, so the run measures and never stops.
    @seed(rng_seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=family.strategy)
    def one(case) -> None:
        try:
            tally.add(name, run_case(family, template, case))
        except Unexpected as exc:
            tally.add(name, "unexpected")
            failures.append(str(exc))

    one()


def cli_tally() -> int:
    """Run every hostile command line once and print the table by category; the number of
    unexpected outcomes."""
    import torch

    torch.set_num_threads(1)  # tiny problems: threads only add overhead
    tally, failures = hostile_cli.Tally(), []
    cases = hostile_cli.all_cases()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hostile-cli-") as d:
        template = hostile_cli.make_template(Path(d) / "template")
        for case in cases:
            try:
                tally.add(case.category, hostile_cli.run_case(case, template, Path(d)))
            except hostile_cli.Unexpected as exc:
                tally.add(case.category, "unexpected")
                failures.append(str(exc))
    print(f"\ncommand lines: {len(cases)} cases, {time.perf_counter() - t0:.0f} s\n")
    print(tally.table())
    for f in failures[:20]:
        print("unexpected:", f)
    return len(failures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="reader cases in all (default 2000)")
    parser.add_argument("--seed", type=int, default=8, help="hypothesis seed (default 8)")
    parser.add_argument("--part", choices=("readers", "cli", "both"), default="both",
                        help="which tally to run (default both)")
    args = parser.parse_args()
    bad = 0
    if args.part in ("readers", "both"):
        bad += reader_tally(args.count, args.seed)
    if args.part in ("cli", "both"):
        bad += cli_tally()
    return 1 if bad else 0


def reader_tally(count: int, first_seed: int) -> int:
    """The damaged-reader families with ``count`` cases from ``first_seed`` on; the number of
    cases that ended in anything but an error, a repair or a sound read."""
    tally, failures = Tally(), []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hostile-tally-") as d:
        template = Path(d) / "valid"
        template.mkdir()
        make_template(template)
        open_families, remaining, rng_seed = sorted(FAMILIES), count, first_seed
        while remaining > 0 and open_families:
            per_family = -(-remaining // len(open_families))
            still_open = []
            for name in open_families:
                before = sum(tally.counts.get(name, {}).values())
                run_family(name, template, min(per_family, remaining), rng_seed, tally, failures)
                ran = sum(tally.counts[name].values()) - before
                remaining -= ran
                if ran == per_family:
                    still_open.append(name)
                if remaining <= 0:
                    break
            open_families, rng_seed = still_open, rng_seed + 1
    print(f"{len(FAMILIES)} families, {count - max(remaining, 0)} cases, seeds {first_seed}..{rng_seed - 1}, "
          f"{time.perf_counter() - t0:.0f} s\n")
    print(tally.table())
    for f in failures[:20]:
        print("other:", f)
    return len(failures)


if __name__ == "__main__":
    sys.exit(main())
