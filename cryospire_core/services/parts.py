"""Editing a run's parts: re-cluster, merge, split, and export the part label map and masks;
called alike by ``cryospire parts`` and the napari Parts dock.

:func:`load_parts` reads RUN/parts/clustering.npz over the stage-1 Gaussians (the trained ones
when stage 1 has finished, else its seed) and renders the part label map. Every edit returns new
parts with the label map recomputed and, while stage 2 has not been seeded from the clustering,
writes the edited clustering back atomically to RUN/parts/clustering.npz under the run's lock
(refused while a training holds it), so that ``cryospire train --resume`` or the train dock's
"Continue to stage 2" trains on it, and an edit made on the command line shows in the dock and
the other way round. Parts are numbered from 0 here; messages number them from 1, as the table
and the dock do.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import cryospire_core.models.parts as part_model
from cryospire_core.analysis.latentspace import PartMapFiles, write_part_maps
from cryospire_core.colours import part_hex
from cryospire_core.errors import InputError
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io import chimerax
from cryospire_core.io.mixture import mixture_lattice
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.models.parts import PartClustering
from cryospire_core.pipeline.runfolder import RunFolder


@dataclass(frozen=True)
class RunParts:
    """The parts of one run.

    root: run folder; clustering: the current (possibly edited) clustering; widths: (G,) Å and
    amplitudes: (G,) of the stage-1 Gaussians (their centres are ``clustering.inputs.centres``);
    lattice: the map lattice of the stage-1 seed; labels: (D, D, D) int32 part map (0 solvent, k + 1
    part k); saved: whether edits go back to RUN/parts/clustering.npz (False once stage 2 has
    been seeded from it).
    """

    root: Path
    clustering: PartClustering
    widths: np.ndarray
    amplitudes: np.ndarray
    lattice: Lattice
    labels: np.ndarray
    saved: bool

    @property
    def n_parts(self) -> int:
        return self.clustering.n_parts

    @property
    def clustering_path(self) -> Path:
        return RunFolder(self.root).clustering_path

    def counts(self) -> np.ndarray:
        """(K,) Gaussians per part."""
        return np.bincount(self.clustering.part_index, minlength=self.n_parts)

    def volume_fractions(self) -> np.ndarray:
        """(K,) each part's share of the label map's non-solvent voxels (all 0 without any)."""
        voxels = np.bincount(self.labels.ravel(), minlength=self.n_parts + 1)[1:self.n_parts + 1]
        total = voxels.sum()
        return voxels / total if total else np.zeros(self.n_parts)


def load_parts(root: str | os.PathLike) -> RunParts:
    """The parts of the run folder ``root``; InputError naming the file when part discovery has
    not run yet, or a file does not fit the run."""
    run = RunFolder(root)
    run.config()  # a run from a newer cryospire is refused here, clearly
    clustering = run.clustering()
    if clustering is None:
        raise InputError(run.clustering_path, "part clustering", "a run whose part discovery has finished",
                         "no such file")
    seed = run.gaussians("discovery")
    lattice = mixture_lattice(seed)
    widths, amplitudes = _stage1_gaussians(run, seed)
    if len(widths) != len(clustering.part_index):
        raise InputError(run.clustering_path, "part_index", f"one part per stage-1 Gaussian ({len(widths)})",
                         len(clustering.part_index))
    labels = _label_volume(clustering, widths, amplitudes, lattice)
    return RunParts(run.root, clustering, widths, amplitudes, lattice, labels, not run.stage2_started())


def _stage1_gaussians(run: RunFolder, seed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(widths (G,) Å, amplitudes (G,)) of the trained stage-1 Gaussians (RUN/discovery/model.pt),
    else of the stage-1 seed ``seed``."""
    if run.stage_done("discovery"):
        g = run.model("discovery").base.export()
        return g["widths"], g["amplitudes"]
    return np.asarray(seed["widths"], np.float32), np.asarray(seed["amplitudes"], np.float32)


def _label_volume(clustering: PartClustering, widths: np.ndarray, amplitudes: np.ndarray,
                  lattice: Lattice) -> np.ndarray:
    """(D, D, D) int32 part map of ``clustering`` over the stage-1 Gaussians."""
    return part_model.part_label_volume(clustering.inputs.centres, widths, amplitudes, clustering.part_index,
                                        lattice)


# -- edits ------------------------------------------------------------------------------------------


def recluster(parts: RunParts, level1: str | int = "auto", level2: str | int | None = "auto") -> RunParts:
    """Both clustering levels re-run on the saved inputs (no retraining): ``level1`` clusters
    and ``level2`` spatial pieces per cluster, each ``auto`` or a count (level2 None: no level
    2; :func:`cryospire_core.models.parts.recluster`)."""
    G = len(parts.clustering.part_index)
    for what, n in (("level-1 clusters", level1), ("level-2 splits", level2)):
        if n is not None and n != "auto" and not (isinstance(n, int) and 1 <= n <= G):
            raise InputError(parts.clustering_path, what, f"auto or a count in 1..{G} (the stage-1 Gaussians)", n)
    return _edited(parts, part_model.recluster(parts.clustering.inputs, level1, level2))


def merge(parts: RunParts, a: int, b: int) -> RunParts:
    """Parts ``a`` and ``b`` (0-based) merged into one, which keeps the lower number; the parts
    above the higher one move down by one."""
    K = parts.n_parts
    if not (0 <= a < K and 0 <= b < K) or a == b:
        raise InputError(parts.clustering_path, "parts to merge", f"two different parts of 1..{K}",
                         f"{a + 1} and {b + 1}")
    a, b = sorted((int(a), int(b)))
    c = parts.clustering
    return _edited(parts, part_model.with_part_index(c, part_model.merge_parts(c.part_index, a, b)))


def split(parts: RunParts, k: int, into: int) -> RunParts:
    """Part ``k`` (0-based) cut into ``into`` spatial pieces (k-means on the centres, the
    clustering's seed): the piece holding its lowest Gaussian keeps ``k``, the others become the
    last parts."""
    K = parts.n_parts
    if not 0 <= k < K:
        raise InputError(parts.clustering_path, "part to split", f"a part of 1..{K}", k + 1)
    size = int(parts.counts()[k])
    if not 2 <= into <= size:
        raise InputError(parts.clustering_path, "pieces", f"2..{size} (part {k + 1} has {size} Gaussians)", into)
    c = parts.clustering
    index = part_model.split_part(c.part_index, c.inputs.centres, int(k), int(into), c.inputs.seed)
    return _edited(parts, part_model.with_part_index(c, index))


def _edited(parts: RunParts, clustering: PartClustering) -> RunParts:
    """New parts for an edited clustering: label map recomputed, written back when allowed."""
    labels = _label_volume(clustering, parts.widths, parts.amplitudes, parts.lattice)
    saved = parts.saved and _save(parts.root, clustering)
    return dataclasses.replace(parts, clustering=clustering, labels=labels, saved=saved)


def _save(root: Path, clustering: PartClustering) -> bool:
    """Write ``clustering`` to RUN/parts/clustering.npz under the run's lock (InputError while a
    training holds it); False, writing nothing, once stage 2 has been seeded from the parts."""
    run = RunFolder(root)
    with run:
        if run.stage2_started():
            return False
        clustering.to_npz(run.clustering_path)
    return True


def require_saved(parts: RunParts) -> None:
    """InputError unless edits of ``parts`` are saved to the run (its stage 2 not yet seeded)."""
    if not parts.saved:
        run = RunFolder(parts.root)
        raise InputError(run.seed_path("hierarchical"), "parts",
                         "a run whose stage 2 has not been seeded from its parts (edit a copy of the run's config.json "
                         "and consensus, discovery and parts folders, then train stage 2 there)",
                         "stage 2 seeded from the saved parts")


# -- outputs ----------------------------------------------------------------------------------------


def export_masks(parts: RunParts, folder: str | os.PathLike, overwrite: bool = False, option: str = "--out",
                 remedy: str = "--overwrite") -> PartMapFiles:
    """Write the part label map and one soft mask per part into ``folder`` (made if missing;
    :class:`~cryospire_core.analysis.latentspace.PartMapFiles` names them, as ``cryospire
    analyze`` does), and ``open_in_chimerax.cxc``, a ChimeraX script showing each mask in its
    part's colour (:func:`cryospire_core.colours.part_hex`, the colours napari shows).
    Files of those names already there are refused (InputError naming ``option``, offering
    ``remedy``) before anything is written, unless ``overwrite``."""
    files = check_mask_outputs(folder, parts.n_parts, overwrite, option, remedy)
    files.folder.mkdir(parents=True, exist_ok=True)
    write_part_maps(files, parts.labels, parts.lattice.apix)
    chimerax.write_script(files.folder, chimerax.masks_script(files.labels.name, [m.name for m in files.masks],
                                                              part_hex(parts.n_parts)))
    return files


def check_mask_outputs(folder: str | os.PathLike, n_parts: int, overwrite: bool = False, option: str = "--out",
                       remedy: str = "--overwrite") -> PartMapFiles:
    """The maps :func:`export_masks` writes for ``n_parts`` parts into ``folder``, after
    refusing (InputError naming ``option``) to replace any existing one, or the ChimeraX script,
    unless ``overwrite`` (:func:`~cryospire_core.io.outputs.check_new_outputs`)."""
    files = PartMapFiles(Path(folder), n_parts)
    check_new_outputs([*files.all(), files.folder / chimerax.SCRIPT_NAME], overwrite, option, remedy=remedy)
    return files


def parts_table(parts: RunParts) -> str:
    """The parts as text: how they were chosen, one line per part (its Gaussians and share of
    the label map's volume), and whether edits are saved."""
    counts, fractions = parts.counts(), parts.volume_fractions()
    lines = [f"{parts.clustering_path}: {parts.n_parts} parts ({parts.clustering.rule})",
             f"{'part':>4}  {'Gaussians':>9}  {'volume fraction':>15}"]
    lines += [f"{k + 1:>4}  {counts[k]:>9d}  {fractions[k]:>15.3f}" for k in range(parts.n_parts)]
    lines.append("edits are saved to the run" if parts.saved else
                 "stage 2 was seeded from these parts: edits are not saved")
    return "\n".join(lines)
