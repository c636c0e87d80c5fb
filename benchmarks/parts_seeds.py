"""How much the discovered parts depend on stage 1's random seed alone (issue 13).

A constant chosen on one stage-1 run per data set is only as good as that run is typical. This
script retrains stage 1 and the parts on a fixed consensus with several seeds and tabulates the
split-tolerant ARI of each, so a change to part discovery can be judged against the spread.

``--work`` holds one folder per set, as ``benchmarks/realistic.py`` leaves them (or made by hand
for a preset): ``SET/data`` (a simulation with ``gt/beads.npz``) and ``SET/run`` (a run whose
consensus is finished). For each set and each ``--seeds`` S, the consensus and config are copied
to ``SET/seeds/TAG-sS/run`` with ``train.discovery.seed`` = S and any ``--set FIELD=VALUE`` of
the stage-1 config (for example ``feature_tv=1e-4``), then::

    cryospire train SET/data/particles.star --out RUN --resume --stage discovery --stage parts

and the parts are scored against the ground-truth groups (``cryospire evaluate``'s part scores).
With ``--parts-refine rigid`` each finished run is copied to ``SET/seeds/TAG-rigid-sS/run`` and
re-clustered there (``cryospire train ... --resume --stage parts --parts-refine rigid``, the same
stage 1), and those parts are scored. Finished runs are reused. Example::

    python benchmarks/parts_seeds.py --work /data/realistic --sets cftr-hinge2 tcr-complex --seeds 0 1 2
    python benchmarks/parts_seeds.py --work /data/realistic --sets cftr-hinge2 --seeds 0 1 2 --set feature_tv=1e-4
    python benchmarks/parts_seeds.py --work /data/realistic --sets cyt-twist --set handles=24 --parts-refine rigid

Prints a table (split-tolerant ARI per seed, their mean, min and max; parts found per seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cryospire_core.analysis.partscores import load_beads, part_scores
from cryospire_core.io.atomic import write_json
from cryospire_core.models.discovery import DiscoveryConfig
from cryospire_core.models.parts import PartClustering

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish  # noqa: E402

CRYOSPIRE = [sys.executable, "-m", "cryospire_core.cli.main"]


def overrides(items: list[str]) -> dict[str, int | float]:
    """``--set FIELD=VALUE`` items as {field: number of the field's type}, numeric fields of
    :class:`DiscoveryConfig` only (the seed is ``--seeds``)."""
    kinds = {"int": int, "float": float}  # the fields' annotations, as strings
    fields = {f.name: kinds[f.type] for f in dataclasses.fields(DiscoveryConfig) if f.type in kinds and f.name != "seed"}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key] = fields[key](value)
        except (KeyError, ValueError):
            raise SystemExit(f"--set: expected FIELD=NUMBER with FIELD a numeric stage-1 option "
                             f"({', '.join(sorted(fields))}), found {item!r}") from None
    return out


def seeded_run(folder: Path, tag: str, seed: int, changes: dict[str, float], threads: int) -> tuple[Path, float]:
    """Train stage 1 and the parts on a copy of ``folder/run``'s consensus with stage-1 seed
    ``seed`` and ``changes``; returns the run and the seconds it took (0 when reused)."""
    source, run = folder / "run", folder / "seeds" / f"{tag}-s{seed}" / "run"
    if (run / "parts" / "clustering.npz").is_file():
        return run, 0.0
    if not (source / "consensus" / "gaussians.npz").is_file():
        raise SystemExit(f"{source}: no finished consensus (train it first, e.g. benchmarks/realistic.py --stage1)")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    shutil.copytree(source / "consensus", run / "consensus")
    config = json.loads((source / "config.json").read_text())
    config["train"]["discovery"].update(seed=seed, **changes)
    write_json(run / "config.json", config)
    log = run.parent / "train.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([*CRYOSPIRE, "train", str(folder / "data" / "particles.star"), "--out", str(run), "--resume",
                        "--threads", str(threads), "--quiet", "--stage", "discovery", "--stage", "parts"],
                       check=True, stdout=f, stderr=subprocess.STDOUT)
    return run, time.perf_counter() - start


def refined_run(folder: Path, tag: str, seed: int, threads: int) -> tuple[Path, float]:
    """A copy of the finished run ``SET/seeds/TAG-sS/run`` re-clustered with the rigid reassignment
    (stage 1 not retrained); returns it and the seconds it took (0 when reused)."""
    source, run = folder / "seeds" / f"{tag}-s{seed}" / "run", folder / "seeds" / f"{tag}-rigid-s{seed}" / "run"
    if (run / "parts" / "clustering.npz").is_file():
        return run, 0.0
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("clustering.npz", "run.lock"))
    start = time.perf_counter()
    with open(run.parent / "train.log", "w") as f:
        subprocess.run([*CRYOSPIRE, "train", str(folder / "data" / "particles.star"), "--out", str(run), "--resume",
                        "--threads", str(threads), "--quiet", "--stage", "parts", "--parts-refine", "rigid"],
                       check=True, stdout=f, stderr=subprocess.STDOUT)
    return run, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder of SET/data + SET/run folders")
    p.add_argument("--sets", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", dest="changes", action="append", default=[], metavar="FIELD=VALUE",
                   help="a stage-1 config change (repeatable), e.g. feature_tv=1e-4")
    p.add_argument("--parts-refine", choices=("none", "rigid"), default="none",
                   help="rigid: score each run re-clustered with the rigid reassignment (a copy, same stage 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="append the table to this file")
    args = p.parse_args(argv)
    changes = overrides(args.changes)
    tag = "-".join(f"{k}{v:g}" for k, v in sorted(changes.items())) or "default"
    lines = [f"# python benchmarks/parts_seeds.py {' '.join(sys.argv[1:] if argv is None else argv)}",
             f"# stage-1 config changes: {changes or 'none'}; parts refinement: {args.parts_refine}; "
             f"{os.cpu_count()} CPUs",
             f"{'set':<14} " + " ".join(f"{'s' + str(s):>6}" for s in args.seeds) + "   mean    min    max  parts"]
    for name in args.sets:
        folder = args.work / name
        beads = load_beads(folder / "data" / "gt" / "beads.npz")
        split, parts = [], []
        for seed in args.seeds:
            run, seconds = seeded_run(folder, tag, seed, changes, args.threads)
            if args.parts_refine == "rigid":
                run, more = refined_run(folder, tag, seed, args.threads)
                seconds += more
            scores = part_scores(PartClustering.from_npz(run / "parts" / "clustering.npz"), beads)
            split.append(scores.split_ari)
            parts.append(scores.n_parts)
            print(f"{name} seed {seed}: split-tolerant ARI {scores.split_ari:.3f}, {scores.n_parts} parts"
                  + (f" ({seconds / 60:.1f} min)" if seconds else " (reused)"), flush=True)
        a = np.asarray(split)
        lines.append(f"{name:<14} " + " ".join(f"{v:>6.3f}" for v in a)
                     + f" {a.mean():>6.3f} {a.min():>6.3f} {a.max():>6.3f}  {','.join(map(str, parts))}")
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
