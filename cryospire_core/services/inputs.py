"""Pointing a run at its particle file after the run or its data moved (the explorer dock's
particle-file field; the commands take ``--particles`` for one call instead)."""

from __future__ import annotations

import dataclasses
import os

from cryospire_core.errors import InputError
from cryospire_core.pipeline.runfolder import RunFolder


def use_particle_file(run: str | os.PathLike, particles: str | os.PathLike) -> InputError | None:
    """Check that ``particles`` is the run's particle file (read as the run reads its particles,
    it holds the particle count the run was trained on; InputError naming it otherwise) and
    remember it in the run (config.json ``inputs.particles``,
    :meth:`~cryospire_core.pipeline.runfolder.RunFolder.record_input`). Returns None, or why it
    could not be remembered (a folder we may not write into, or one a training holds): the file
    is still good for this session."""
    folder = RunFolder(run)
    expected = folder.n_particles()
    # The rows are all that is compared: the contrast is not detected (a pass over the images).
    found = len(dataclasses.replace(folder.particle_source(particles), invert=False).load())
    if found != expected:
        raise InputError(particles, "particles", f"the {expected} particles the run was trained on", found)
    try:
        folder.record_input("particles", particles)
    except InputError as exc:  # refused by the run's lock: a folder we cannot write into, or one in use
        return exc
    return None
