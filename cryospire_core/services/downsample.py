"""A particle stack downsampled on disk: what ``cryospire downsample`` writes.

Training reads images Fourier-cropped as they are read (:meth:`ParticleSet.at_box`); this
writes the same images once, as a new stack, for users who want a smaller stack on disk (to
copy to a laptop, or for another program). The output folder holds ``particles.mrcs`` (float32,
voxel size the new pixel size, the input's contrast: white particles stay white, as RELION's and
cryoSPARC's downsampling leave them), ``particles.star`` (RELION 3.1, origins in Å) and, for a
cryoSPARC input, ``particles.cs`` (shifts in pixels of the new pixel size). The metadata keep
the input's rows (every column or field the writers keep: optics groups, defocus, classes,
uids, ...) with the image references, pixel size and box of the new stack.

Images are read, cropped and appended ``chunk`` at a time into a stack written beside its final
name, so memory stays bounded whatever the stack's length (a million 256 px images need 256 GB
at full size). Every file appears under its name only when complete, the metadata last: a run
that is killed leaves no ``particles.star`` or ``.cs`` pointing at a stack that is not there
(or not finished).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.io.cryosparc import write_cs
from cryospire_core.io.mrc import StackWriter
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.io.particles import ImageSource, ParticleSet
from cryospire_core.io.star import write_star
from cryospire_core.progress import ProgressCallback, ProgressEvent

#: Bytes of full-size float32 images read per chunk (the cropping's transforms need about three
#: times as much again): 512 images of 256 px, 2,048 of 128 px.
CHUNK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class DownsampleOutputs:
    """The files written into the output folder: the stack, the STAR file, and the ``.cs`` file
    (None unless the particles came from a ``.cs``)."""

    stack: Path
    star: Path
    cs: Path | None

    @classmethod
    def in_folder(cls, folder: str | os.PathLike, particles: str | os.PathLike) -> DownsampleOutputs:
        """The outputs in ``folder`` for the particle file ``particles`` (its suffix says
        whether a ``.cs`` is written too)."""
        folder = Path(folder)
        cs = folder / "particles.cs" if Path(particles).suffix.lower() == ".cs" else None
        return cls(folder / "particles.mrcs", folder / "particles.star", cs)

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.stack, self.star, self.cs) if p is not None]


def check_outputs(folder: str | os.PathLike, particles: str | os.PathLike, overwrite: bool,
                  option: str = "--out") -> DownsampleOutputs:
    """The outputs :func:`downsample_particles` writes into ``folder``, checked before anything
    is read (InputError naming ``option`` for a file already there unless ``overwrite``, a
    folder that cannot be written, ...; see :func:`check_new_outputs`)."""
    outputs = DownsampleOutputs.in_folder(folder, particles)
    check_new_outputs(outputs.files, overwrite, option, under=folder)
    return outputs


def check_box(ps: ParticleSet, box: int, option: str = "--box") -> ParticleSet:
    """``ps`` read at ``box`` pixels (:meth:`ParticleSet.at_box`); InputError naming ``option``
    unless ``box`` is even and smaller than the stack's box (the same box is nothing to do)."""
    stack_box = ps.source.box
    stack = ps.source.files[int(ps.source.file_index[0])]
    if stack_box % 2:
        raise InputError(stack, "box size", "an even box to crop from (a centred transform)", f"{stack_box} px")
    if box % 2 or not 2 <= box < stack_box:
        raise InputError(None, option, f"an even box smaller than the stack's {stack_box} px (of {stack.name})",
                         f"{box} px")
    return ps.at_box(box)


def downsample_particles(ps: ParticleSet, box: int, outputs: DownsampleOutputs, chunk: int | None = None,
                         progress: ProgressCallback | None = None) -> ParticleSet:
    """Write ``ps`` Fourier-cropped to ``box`` pixels as :class:`DownsampleOutputs`; return the
    particles as written (read back from ``outputs.star`` they are the same).

    ps: the particles as read (any format, at the stack's box); box: even, below the stack's box
    (:func:`check_box`); outputs: checked by :func:`check_outputs`, and none of them one of the
    input's files (InputError naming ``--out``); chunk: images read and written at a time
    (default: :data:`CHUNK_BYTES` of full-size images); progress: one event per chunk.
    Existing outputs (allowed by ``--overwrite``) lose their metadata files first, so a
    killed run never leaves an old ``particles.star`` naming the new stack.
    """
    cropped = check_box(ps, box)
    _refuse_inputs(ps, outputs)
    n, stack_box = len(ps), ps.source.box
    if chunk is None:
        chunk = max(1, CHUNK_BYTES // (4 * stack_box * stack_box))
    # The images as the stack holds them: images() multiplies in the contrast that makes
    # particles dark, which a stack on disk must not get.
    as_stored = replace(cropped, contrast=1.0)
    for old in (outputs.star, outputs.cs):
        if old is not None:
            old.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with StackWriter(outputs.stack, box, cropped.apix) as writer:
        for start in range(0, n, chunk):
            writer.append(as_stored.images(slice(start, min(start + chunk, n))))
            if progress is not None:
                progress(ProgressEvent("downsample", writer.count, n, elapsed=time.perf_counter() - t0))
    written = replace(cropped, crop_box=None,
                      source=ImageSource([outputs.stack], np.zeros(n, np.int64), np.arange(n, dtype=np.int64), box))
    if outputs.cs is not None:
        write_cs(outputs.cs, written, restacked=True)
    write_star(outputs.star, written)
    return written


def _refuse_inputs(ps: ParticleSet, outputs: DownsampleOutputs) -> None:
    """InputError naming ``--out`` when an output would replace one of the files ``ps`` is
    read from (its metadata, passthrough or stacks): the output folder is the input's."""
    passthrough = ps.provenance.extra.get("passthrough")
    inputs = [ps.provenance.path, *ps.source.files, *([passthrough] if passthrough is not None else [])]
    for out in outputs.files:
        for used in inputs:
            if out.exists() and Path(used).exists() and os.path.samefile(out, used):
                raise InputError(out, "--out", "a folder other than the input particles' (an output would "
                                 "replace an input file)", f"the input file {used}")
