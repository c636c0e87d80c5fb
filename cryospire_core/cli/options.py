"""The command line's shared pieces: the options several commands take (particles, device,
``--overwrite``) and argparse's usage errors rewritten as one line.

The ranges of typed values live in :mod:`cryospire_core.ranges` (the run config is checked with
the same ones).
"""

from __future__ import annotations

import argparse
import re

from cryospire_core.errors import InputError
from cryospire_core.io.load import INVERT_CHOICES, ParticleSource
from cryospire_core.io.particles import ParticleSet
from cryospire_core.models.device import resolve_device
from cryospire_core.ranges import BOX, shown


def device_name(text: str) -> str:
    """An argparse type: a device name :func:`resolve_device` accepts on this machine."""
    try:
        resolve_device(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(f"expected {exc.expected}, found {exc.found}") from None
    return text


def add_device_arg(parser) -> None:
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (CUDA when present), cpu, cuda or cuda:N")


def add_particle_args(parser: argparse.ArgumentParser) -> None:
    """Add the options every command reading PARTICLES shares (see :func:`particles_from_args`)."""
    parser.add_argument(
        "particles",
        help="particles: RELION .star, cryoSPARC .cs, or an image stack (.mrcs/.mrc, or .txt listing "
        "stacks) with --poses and --ctf",
    )
    parser.add_argument("--poses", help="cryoDRGN poses.pkl (with an image stack)")
    parser.add_argument(
        "--ctf", help="cryoDRGN ctf.pkl (with an image stack); for a .cs, its passthrough .cs if not found beside it"
    )
    parser.add_argument(
        "--datadir", help="folder where image stacks are searched (e.g. the RELION or cryoSPARC project directory)"
    )
    parser.add_argument(
        "--invert",
        choices=tuple(INVERT_CHOICES),
        default="auto",
        help="particle contrast in the stack: auto = detect (default); yes = white particles "
        "(usual after RELION/cryoSPARC extraction), multiplied by -1 on reading; no = dark particles",
    )
    parser.add_argument("--apix", type=float, help="pixel size in Å, overriding the metadata")


def particle_source(args: argparse.Namespace) -> ParticleSource:
    """The particles described by the options of :func:`add_particle_args`."""
    return ParticleSource(args.particles, poses=args.poses, ctf=args.ctf, datadir=args.datadir,
                          invert=INVERT_CHOICES[args.invert], apix=args.apix)


def particles_from_args(args: argparse.Namespace) -> ParticleSet:
    """Load the particles described by the options of :func:`add_particle_args`."""
    return particle_source(args).load()


def add_overwrite_arg(parser: argparse.ArgumentParser, what: str = "output files") -> None:
    """The ``--overwrite`` flag every writing command shares."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace existing {what} (default: refuse before computing anything)")


def add_map_box_arg(parser: argparse.ArgumentParser) -> None:
    """``--box B``: the samples per side of the maps a command writes from a run (render,
    traverse, analyze), on the run's field of view."""
    parser.add_argument("--box", type=BOX, help="maps of B samples per side with the run's field of view (voxel "
                        "size apix * D / B; default: the box D the model was trained at)")


# -- usage errors ---------------------------------------------------------------------------------

_CHOICE = re.compile(r"invalid choice: (?P<found>.+?) \(choose from (?P<choices>.+)\)$")
_TYPE = re.compile(r"invalid (?P<type>.+?) value: (?P<found>.+)$")
_NUMBER_TYPES = {"int": "a whole number", "float": "a number"}


def usage_error(message: str) -> str:
    """An argparse error message rewritten as ``<option>: expected ..., found ...``."""
    m = re.match(r"argument (?P<opt>[^:]+): (?P<msg>.+)$", message, re.S)
    if m:
        opt, msg = m["opt"], m["msg"]
        if msg.startswith("expected ") and ", found " in msg:  # our own types
            return f"{opt}: {msg}"
        if c := _CHOICE.match(msg):
            choices = ", ".join(s.strip().strip("'") for s in c["choices"].split(","))
            return f"{opt}: expected one of {choices}, found {shown(c['found'].strip(chr(39)))}"
        if t := _TYPE.match(msg):
            expected = _NUMBER_TYPES.get(t["type"], t["type"])
            return f"{opt}: expected {expected}, found {shown(t['found'].strip(chr(39)))}"
        if msg.startswith("not allowed with argument "):
            other = msg.removeprefix("not allowed with argument ")
            return f"{opt}: expected either {opt} or {other}, found both"
        if msg.startswith("expected") and "argument" in msg:
            return f"{opt}: {msg.replace('argument', 'value')}, found none"
        return f"{opt}: expected a valid value, found {msg}"
    if message.startswith("the following arguments are required: "):
        return f"{message.split(': ', 1)[1]}: expected a value (required), found none"
    if m := re.match(r"one of the arguments (?P<opts>.+) is required$", message):
        return f"{'/'.join(m['opts'].split())}: expected one of them, found none"
    if message.startswith("unrecognized arguments: "):
        return f"{message.split(': ', 1)[1]}: expected options of this command (see --help), found unknown arguments"
    if m := re.match(r"ambiguous option: (?P<opt>\S+) could match (?P<matches>.+)$", message):
        return f"{m['opt']}: expected one option, found an abbreviation of {m['matches']}"
    return message
