"""Stage 2 of a run on a particle selection (the paper's junk removal between the stages).

Before the run's stage 2 starts, the selection applies to the run itself
(:func:`apply_selection`, as ``cryospire train --resume --select`` does); once stage 2 has
started its particles are fixed, and a new run folder reuses the run's consensus, stage-1 and
parts outputs and trains stage 2 on the selection (:func:`branch_run`). Either way
``cryospire train PARTICLES --out FOLDER --resume`` (:func:`train_command`) then trains only
stage 2. ``cryospire branch`` and the explorer dock's Continue training call these functions.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from cryospire_core.errors import InputError
from cryospire_core.io.atomic import TEMP_GLOB, write_json
from cryospire_core.io.outputs import check_new_outputs, check_writable_folder, describe
from cryospire_core.pipeline.config import INPUTS, InputPath
from cryospire_core.pipeline.runfolder import CHECKPOINT, RunFolder
from cryospire_core.services.select import write_indices

#: The stages a branch copies: everything before stage 2.
SHARED_STAGES = ("consensus", "discovery", "parts")

#: The options of a run's ``train_command`` that say how its particles are read.
PARTICLE_OPTIONS = ("poses", "ctf", "datadir", "invert", "apix")


def check_new_run_folder(dest: str | os.PathLike) -> None:
    """InputError unless ``dest`` is a new or empty real folder we can write into (a branch's)."""
    dst = Path(dest)
    if dst.is_symlink() or (os.path.lexists(dst) and not dst.is_dir()):
        raise InputError(dst, "new run folder", "an empty or new folder", describe(dst))
    if dst.exists() and any(dst.iterdir()):
        raise InputError(dst, "new run folder", "an empty or new folder", "a folder with files")
    check_writable_folder(dst, "new run folder")


def branch_run(source: str | os.PathLike, dest: str | os.PathLike, select: str | os.PathLike,
               particles: str | os.PathLike | None = None) -> Path:
    """A new run folder ``dest`` that reuses ``source``'s consensus, stage-1 and parts outputs
    (without their checkpoints) and will train stage 2 on the particles listed in ``select``:
    its config is ``source``'s with ``train.select`` (absolute), ``branched_from`` and
    ``inputs`` set, the latter recorded for ``dest`` from where ``source``'s input files are
    found (``particles``: the particle file instead of the run's). For a run whose stage 2 has
    started, where :func:`apply_selection` is refused. Returns dest."""
    src, dst = RunFolder(source), RunFolder(dest)
    check_new_run_folder(dst.root)
    for stage in SHARED_STAGES:
        if not src.stage_done(stage):
            raise InputError(src.finished_path(stage), "stage output", "a run whose part discovery is finished",
                             "no such file")
    dst.root.mkdir(parents=True, exist_ok=True)
    for stage in SHARED_STAGES:
        shutil.copytree(src.stage_path(stage), dst.stage_path(stage),
                        ignore=shutil.ignore_patterns(CHECKPOINT, TEMP_GLOB))
    saved = src.config()
    saved["train"]["select"] = str(Path(select).resolve())
    saved["branched_from"] = str(src.root.resolve())
    saved["inputs"] = _inputs_for(src, dst.root, particles)
    write_json(dst.config_path, saved)
    dst.config()  # the copy is a valid run
    return dst.root


def _inputs_for(src: RunFolder, root: Path, particles: str | os.PathLike | None) -> dict[str, dict[str, str]]:
    """config.json ``inputs`` of a run folder ``root`` reading ``src``'s input files: where
    they are found now (``particles`` instead of the particle file), else where ``src``
    recorded them."""
    recorded = src.inputs()
    inputs = {}
    for name in INPUTS:
        path = particles if name == "particles" and particles is not None else src.input_path(name)
        if path is None and name in recorded:
            path = recorded[name].absolute
        if path is not None:
            inputs[name] = dataclasses.asdict(InputPath.of(path, root))
    return inputs


def apply_selection(run: str | os.PathLike, select: str | os.PathLike) -> Path:
    """Make stage 2 of ``run`` train on the particles listed in ``select`` (0-based indices, or a
    .star/.cs subset of the run's particles), as ``cryospire train --resume --select`` does:
    ``train.select`` (absolute) in its config, and a RUN/selection.npy an earlier selection
    left dropped (stage 2 reads the selection once, when it starts:
    :func:`~cryospire_core.pipeline.train.stage2_selection`). Holds the run's lock meanwhile.
    InputError once stage 2 has started (:func:`branch_run` then). Returns the run folder."""
    folder = RunFolder(run)
    with folder:
        if folder.stage2_started():
            raise InputError(folder.stage_path("hierarchical"), "selection", "a run whose stage 2 has not started "
                             "(branch it into a new run folder instead)", "a stage-2 model already started")
        cfg = folder.train_config()
        cfg.select = str(Path(select).resolve())
        folder.selection_path.unlink(missing_ok=True)
        folder.update_config(train=cfg)
    return folder.root


def continue_with_selection(run: str | os.PathLike, rows: np.ndarray,
                            particles: str | os.PathLike | None = None) -> Path:
    """The run folder whose stage 2 will train on the particles ``rows`` (0-based indices into
    the run's particle file), made ready: before stage 2 starts the run itself (index file
    RUN/explorer_selection.txt, :func:`apply_selection`); after, a new folder
    ``<run>_subset<M>`` beside it with its index file ``<run>_subset<M>_indices.txt``
    (:func:`branch_run`, reading ``particles`` when given; both refused, before either is
    written, when they exist)."""
    root, folder = Path(run), RunFolder(run)
    if not folder.stage2_started():
        index = folder.explorer_selection_path
        write_indices(index, rows)
        return apply_selection(root, index)
    out = root.parent / f"{root.name}_subset{len(rows)}"
    index = root.parent / f"{out.name}_indices.txt"
    # Both land beside the run, among the user's files: refuse before writing either.
    check_new_run_folder(out)
    check_new_outputs([index], False, "selection file", remedy="removing the old branch first")
    write_indices(index, rows)
    return branch_run(root, out, index, particles)


def selection_size(run: str | os.PathLike, select: str | os.PathLike,
                   particles: str | os.PathLike | None = None) -> int | None:
    """How many of the run's particles (``particles``: the particle file instead of the run's)
    ``select`` lists, read as stage 2 will read it (InputError naming ``select`` for an
    unreadable, empty or out-of-range one); None when the run's particle file is not found here
    (stage 2 checks it when it starts)."""
    from cryospire_core.io.selection import read_selection

    folder = RunFolder(run)
    if particles is None and folder.particles_path() is None:
        return None
    # The rows are all a selection needs: the contrast is not detected (a pass over the images).
    source = dataclasses.replace(folder.particle_source(particles), invert=False)
    return len(read_selection(select, source.load(), datadir=source.datadir))


def train_command(run: str | os.PathLike) -> list[str]:
    """The ``cryospire train`` command line that continues ``run`` (its particle file, poses,
    CTF and data folder found as the explorer finds them, else as recorded, and the other
    particle options its training was given)."""
    folder = RunFolder(run)
    command = folder.config().get("train_command") or {}
    particles = folder.particles_path() or command.get("particles") or "PARTICLES"
    argv = ["cryospire", "train", str(particles), "--out", str(folder.root), "--resume"]
    for option in PARTICLE_OPTIONS:
        value = (folder.input_path(option) if option in INPUTS else None) or command.get(option)
        if value is not None and not (option == "invert" and value == "auto"):
            argv += [f"--{option}", str(value)]
    return argv
