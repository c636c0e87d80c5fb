"""Entry point of the ``cryospire`` command.

Each subcommand lives in its own module ``cryospire_core.cli.<name>`` exposing
``add_args(parser)`` and ``run(args) -> int | None``; modules are imported only when their
command runs so that ``cryospire --help`` stays fast.

Every failure ends in one line on stderr and exit status 1: a usage error as ``cryospire CMD:
error: --opt: expected ..., found ...`` (:mod:`.options`), a bad input as its InputError, a full
disk or exhausted memory as what to change. An exception nobody foresaw is a bug: it prints one
line naming a log file in the system's temporary folder that holds the traceback
(``CRYOSPIRE_DEBUG=1`` raises it instead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
import warnings

from cryospire_core.errors import (
    InputError,
    ResourceError,
    disk_full,
    is_disk_full,
    is_out_of_memory,
    out_of_memory,
)
from cryospire_core.pipeline.threads import (
    prefer_sleeping_threads,
    thread_budget,
    use_threads,
)
from cryospire_core.ranges import COUNT, OrAuto

COMMANDS: dict[str, str] = {
    "demo": "run the main job on built-in sample data (simulate, reconstruct, score)",
    "simulate": "simulate particle images with ground truth from a procedural model",
    "backproject": "reconstruct a map by direct Fourier inversion with CTF weighting",
    "evaluate": "score maps against ground truth (CryoBench per-conformation FSC)",
    "consensus": "fit a homogeneous Gaussian-mixture map to the particles (stage 0)",
    "train": "consensus, part discovery, parts and the part-aware model into a run folder",
    "render": "write maps of a trained run at given latents or particles",
    "infer": "latents for new particles under a trained run's frozen model",
    "analyze": "PCA, k-means states, traversals, plots, part label map and masks of a run",
    "parts": "show, re-cluster, merge or split a run's parts, and write their masks",
    "traverse": "maps along a traversal of a run's latent space (a PC, or between particles or states)",
    "select": "a subset of a run's particles (k-means states, polygon on PC1/PC2, latent box, index file)",
    "branch": "a new run folder that trains a run's stage 2 on a particle selection",
    "downsample": "particles Fourier-cropped to a smaller box, written as a new stack and .star (and .cs)",
}


class CommandParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``expected ..., found ...`` line and exit status 1."""

    def error(self, message: str):
        from cryospire_core.cli.options import usage_error

        self.exit(1, f"{self.prog}: error: {usage_error(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="cryospire", description=__doc__.splitlines()[0])
    from cryospire_core import __version__

    parser.add_argument("--version", action="version", version=f"cryospire {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help / version / the usage error
        parser.print_help()
        return 2
    name = argv[0]
    prefer_sleeping_threads()  # before the command's module loads torch (and OpenMP)
    module = importlib.import_module(f"{__package__}.{name}")
    sub = CommandParser(prog=f"cryospire {name}", description=COMMANDS[name])
    module.add_args(sub)
    sub.add_argument("--threads", type=OrAuto(COUNT), default="auto",
                     help="CPU threads: auto (default: the CPUs this process may use, from its affinity, cgroup "
                          "quota, SLURM_CPUS_PER_TASK or OMP_NUM_THREADS) or N")
    try:
        args = sub.parse_args(argv[1:])
    except SystemExit as exc:  # --help (0) or a usage error (1, already printed): a status like run's
        return exc.code if isinstance(exc.code, int) else 1
    budget = thread_budget(args.threads)
    use_threads(budget)
    args.threads, args.threads_source = budget.n, budget.source  # saved with the command in a run's config
    with warnings.catch_warnings():  # restores the default printer when the command returns
        warnings.showwarning = _warning_line(name)
        return _run(name, module, args)


def _warning_line(name: str):
    """A ``warnings.showwarning`` that prints ``cryospire CMD: warning: <message>``: one line a
    user can act on, not Python's file, line number and source line."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"cryospire {name}: warning: {message}", file=sys.stderr if file is None else file)
    return show


def _run(name: str, module, args: argparse.Namespace) -> int:
    """Run the parsed command; every failure becomes one line on stderr and a status."""
    try:
        return int(module.run(args) or 0)
    except (InputError, ResourceError) as exc:
        print(f"cryospire {name}: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, MemoryError) as exc:
        # A full disk or exhausted memory outside the atomic writers and the training loop (which
        # raise ResourceError themselves) still ends in one line saying what to change.
        if is_disk_full(exc):
            print(f"cryospire {name}: error: {disk_full(getattr(exc, 'filename', None))}", file=sys.stderr)
            return 1
        if is_out_of_memory(exc):
            device = getattr(args, "device", None) or "auto"
            device = "the device" if device == "auto" else device
            error = out_of_memory(device, getattr(args, "batch_size", None))
            print(f"cryospire {name}: error: {error}", file=sys.stderr)
            return 1
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            # The file system refused (permissions, a file where a folder should be, ...): the
            # user's environment, not a bug.
            print(f"cryospire {name}: error: {exc.filename}: file access: expected a path cryospire can read "
                  f"and write, found {exc.strerror}", file=sys.stderr)
            return 1
        return internal_error(name, exc)
    except KeyboardInterrupt:
        print(f"cryospire {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the safety net: one line and a log, never a traceback
        return internal_error(name, exc)


def internal_error(name: str, exc: Exception) -> int:
    """Report an exception no check foresaw: one line naming a log file holding the traceback;
    with CRYOSPIRE_DEBUG=1 it is raised instead."""
    if os.environ.get("CRYOSPIRE_DEBUG", "") not in ("", "0"):
        raise exc
    text = "".join(traceback.format_exception(exc))
    fd, log = tempfile.mkstemp(prefix=f"cryospire-{name}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(f"cryospire {name} {' '.join(sys.argv[1:])}\n{text}")
    msg = (str(exc).strip().splitlines() or [""])[0][:200]
    print(f"cryospire {name}: error: internal error ({type(exc).__name__}: {msg}); this is a cryospire bug: "
          f"please report it with {log}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
