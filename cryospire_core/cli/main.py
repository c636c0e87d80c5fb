"""Entry point of the ``cryospire`` command.

Each subcommand lives in its own module ``cryospire_core.cli.<name>`` exposing
``add_args(parser)`` and ``run(args) -> int | None``; modules are imported only when their
command runs so that ``cryospire --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import InputError, ResourceError, disk_full, is_disk_full, is_out_of_memory, out_of_memory

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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryospire", description=__doc__.splitlines()[0])
    from .. import __version__

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
    module = importlib.import_module(f"{__package__}.{name}")
    sub = argparse.ArgumentParser(prog=f"cryospire {name}", description=COMMANDS[name])
    module.add_args(sub)
    args = sub.parse_args(argv[1:])
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
        raise
    except KeyboardInterrupt:
        print(f"cryospire {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
