"""Where a benchmark's report goes: the terminal, and a results file it is appended to."""

from __future__ import annotations

from pathlib import Path


def publish(text: str, out: Path | None) -> None:
    """Print ``text`` and, when ``out`` is given, append it and a blank line to that file (a
    results file keeps every run's report, each headed by its command line)."""
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n\n")
