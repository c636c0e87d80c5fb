"""One entry point for particles in any supported format, and the matching CLI options.

Formats by extension: ``.star`` (RELION 3.0/3.1+), ``.cs`` (cryoSPARC), and an image stack
``.mrcs`` / ``.mrc`` / ``.txt`` (list of stacks) with cryoDRGN ``poses.pkl`` and ``ctf.pkl``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.io.cryodrgn import read_stack_with_pkls
from cryospire_core.io.cryosparc import read_cs, write_cs
from cryospire_core.io.particles import (
    ParticleSet,
    check_not_blank,
    check_pixel_size,
    detect_contrast,
)
from cryospire_core.io.star import read_star, write_star

STACK_SUFFIXES = (".mrcs", ".mrc", ".txt")
INVERT_CHOICES = {"auto": None, "yes": True, "no": False}
"""The words ``--invert`` takes and the contrast each declares (None: detect)."""


@dataclass(frozen=True)
class ParticleSource:
    """Where a command's particles come from, as :func:`load_particles` reads them.

    particles: .star / .cs, or an image stack (.mrcs / .mrc / .txt) with ``poses`` and ``ctf``
    (cryoDRGN pkls; with a .cs, ``ctf`` may name its passthrough .cs); datadir: where image
    stacks are searched; invert: True for white particles, False for dark, None to detect;
    apix: Å/px overriding the metadata (None: the file's).
    """

    particles: str | os.PathLike
    poses: str | os.PathLike | None = None
    ctf: str | os.PathLike | None = None
    datadir: str | os.PathLike | None = None
    invert: bool | None = None
    apix: float | None = None

    def load(self) -> ParticleSet:
        return load_particles(self.particles, poses=self.poses, ctf=self.ctf, datadir=self.datadir,
                              invert=self.invert, apix=self.apix)

    def command(self) -> dict[str, Any]:
        """The source as a run's ``train_command`` records it (the command line's option values)."""
        words = {v: k for k, v in INVERT_CHOICES.items()}
        text = lambda p: None if p is None else str(p)  # noqa: E731
        return {"particles": str(self.particles), "poses": text(self.poses), "ctf": text(self.ctf),
                "datadir": text(self.datadir), "invert": words[self.invert], "apix": self.apix}


def load_particles(
    path: str | os.PathLike,
    poses: str | os.PathLike | None = None,
    ctf: str | os.PathLike | None = None,
    datadir: str | os.PathLike | None = None,
    invert: bool | None = None,
    apix: float | None = None,
) -> ParticleSet:
    """Read particles, dispatching on the extension of ``path``.

    poses, ctf: cryoDRGN poses.pkl / ctf.pkl, required with a stack; with a ``.cs`` file, ``ctf``
    may name the passthrough ``.cs`` holding the CTF fields (found automatically when beside it).
    datadir: extra folder (e.g. the RELION/cryoSPARC project) where stacks are searched.
    invert: None detects whether the stack holds white or dark particles; True declares white
    particles (RELION/cryoSPARC extraction default: images are multiplied by -1 on reading);
    False declares dark ones. apix: Å/pixel overriding the file's value.
    Every reader checks the stacks from their headers (existence, square images, one box size,
    enough images for every reference) without opening the data, and the values it read with
    ``ParticleSet.validate`` (physics and float32 range; see :mod:`cryospire_core.io.particles`).
    """
    path = Path(path)
    if apix is not None:
        check_pixel_size(None, "--apix", np.array([apix], dtype=np.float64))
    suffix = path.suffix.lower()
    if suffix == ".star":
        _refuse_pkls(path, poses, ctf, "a .star file holds poses and CTFs itself")
        ps = read_star(path, datadir=datadir, apix=apix)
    elif suffix == ".cs":
        _refuse_pkls(path, poses, None, "a .cs file holds poses itself")
        ps = read_cs(path, passthrough=ctf, datadir=datadir, apix=apix)
    elif suffix in STACK_SUFFIXES:
        if poses is None or ctf is None:
            missing = " and ".join(n for n, v in (("--poses", poses), ("--ctf", ctf)) if v is None)
            raise InputError(path, "poses/CTF", "--poses poses.pkl and --ctf ctf.pkl with an image stack", f"no {missing}")
        ps = read_stack_with_pkls(path, poses, ctf, datadir=datadir, apix=apix)
    else:
        raise InputError(path, "file type", "a .star, .cs, .mrcs, .mrc or .txt file", suffix or "no extension")
    if invert is None:
        ps.contrast = detect_contrast(ps.source)
    else:
        check_not_blank(ps.source)
        ps.contrast = -1.0 if invert else 1.0
    return ps


def _refuse_pkls(path: Path, poses, ctf, why: str) -> None:
    given = [n for n, v in (("--poses", poses), ("--ctf", ctf)) if v is not None]
    if given:
        raise InputError(path, " and ".join(given), f"no separate pose/CTF files ({why})", "given")


def write_particles(path: str | os.PathLike, ps: ParticleSet) -> None:
    """Atomically write particles as ``.star`` (RELION 3.1) or ``.cs`` (cryoSPARC)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".star":
        write_star(path, ps)
    elif suffix == ".cs":
        write_cs(path, ps)
    else:
        raise InputError(path, "output type", "a .star or .cs file name", suffix or "no extension")
