"""Traversals of a trained run's latent space, and their export as a map series.

A traversal is a path of latents (T, zdim) with the part readout at each step
(:meth:`~cryospire_core.analysis.explorer.Explorer.traversal`, which the explorer session calls
too): along PC1 or PC2 (5th to 95th percentile of the particles, the other components at the
mean), or from an end A to an end B, straight or through the data (the shortest path in the
particles' 10-nearest-neighbour graph, resampled evenly). The ends are latents: a point picked in
the explorer, a particle's (:func:`particle_latent`) or a k-means state centre
(:func:`state_centres`); these check the user's numbers, naming the option. :func:`export_traversal`
writes the maps as ``vol_000.mrc ...`` for ChimeraX ``vseries``, with ``latents.npy``,
``parts.csv`` and a ChimeraX script that opens them (``open_in_chimerax.cxc``).
``cryospire traverse`` and the explorer dock's Export buttons call these functions;
:func:`write_movie` writes the dock's movie of the viewer's canvas (mp4 or GIF).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryospire_core.analysis.explorer import Explorer, PartReadout, Traversal
from cryospire_core.errors import InputError
from cryospire_core.io import chimerax
from cryospire_core.io.atomic import atomic_path, write_npy, write_text
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.pipeline.runfolder import RunFolder


def particle_latent(explorer: Explorer, index: int, field: str = "particle") -> np.ndarray:
    """The latent (zdim,) of particle ``index``: 0-based, into the run's particle file (what an
    index file written by :func:`cryospire_core.services.select.write_selection` lists). For a
    stage-2 run trained on a selection, only the particles it kept have one; InputError naming
    ``field`` for any other index."""
    row = explorer.row_of(index)
    if row is not None:
        return explorer.latents[row]
    if explorer.selection is None:
        raise InputError(None, field, f"a particle index in 0..{explorer.n_particles - 1}", int(index))
    where = None if explorer.root is None else RunFolder(explorer.root).selection_path
    raise InputError(where, field, f"a particle stage 2 kept ({explorer.n_particles} of them, listed in "
                     "RUN/selection.npy)", f"particle {int(index)}, which it did not keep")


def state_centres(explorer: Explorer, k: int, seed: int = 0, field: str = "k") -> np.ndarray:
    """(k, zdim) float32 centres of the k-means states of the run's latents
    (:meth:`~cryospire_core.analysis.explorer.Explorer.state_centres`: the states the explorer
    colours and selects, and ``cryospire analyze --ksample k`` writes; same seed, same numbering).
    InputError naming ``field`` when the run has fewer than ``k`` particles."""
    if not 1 <= k <= explorer.n_particles:
        raise InputError(None, field, f"1 to {explorer.n_particles} states (the run's particles)", k)
    return explorer.state_centres(k, seed)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def check_map_series(folder: str | os.PathLike, n: int, latents: bool = False, readouts: bool = False,
                     overwrite: bool = False, remedy: str = "--overwrite") -> list[Path]:
    """Every file :func:`write_map_series` writes for ``n`` maps (the ``n`` maps first, then
    latents.npy and parts.csv when asked for, then README.txt and the ChimeraX script
    open_in_chimerax.cxc), after refusing (InputError) to
    replace any existing one unless ``overwrite`` (``remedy``: what the message offers instead).
    Call it before computing the maps."""
    folder = Path(folder)
    extra = [name for name, wanted in (("latents.npy", latents), ("parts.csv", readouts)) if wanted]
    paths = [folder / f"vol_{i:03d}.mrc" for i in range(n)] + [folder / name for name in
                                                               (*extra, "README.txt", chimerax.SCRIPT_NAME)]
    check_new_outputs(paths, overwrite, "map series", remedy=remedy)
    return paths


def write_map_series(folder: str | os.PathLike, volumes: Sequence[np.ndarray], apix: float,
                     latents: np.ndarray | None = None, readouts: Sequence[PartReadout] | None = None,
                     overwrite: bool = False, remedy: str = "--overwrite") -> list[Path]:
    """Write maps as ``folder/vol_000.mrc, vol_001.mrc, ...`` (voxel size ``apix``, the header
    origin of every map cryospire writes, so ChimeraX puts them where the run's other maps are),
    plus ``latents.npy`` and ``parts.csv`` (step, part, angle, shift, presence) when given,
    ``README.txt`` with the ChimeraX command ``open folder/vol_*.mrc vseries true``, and
    ``open_in_chimerax.cxc``, a ChimeraX script opening the maps as a volume series with
    surfaces at the level napari's opening view uses (Otsu's molecule/solvent split,
    :func:`~cryospire_core.models.consensus.density_threshold`, of the middle map). Refuses
    (InputError, nothing written) to replace any existing file unless ``overwrite``. Returns
    the map paths."""
    from cryospire_core.io.mrc import write_map

    folder = Path(folder)
    paths = check_map_series(folder, len(volumes), latents is not None, bool(readouts), overwrite,
                             remedy)[:len(volumes)]
    folder.mkdir(parents=True, exist_ok=True)
    for path, vol in zip(paths, volumes):
        write_map(path, vol, apix)
    if latents is not None:
        write_npy(folder / "latents.npy", np.asarray(latents, np.float32))
    if readouts:
        lines = ["step,part,angle_deg,tx_A,ty_A,tz_A,shift_A,presence"]
        for s, r in enumerate(readouts):
            for k in range(len(r.angle_deg)):
                t = r.translation[k]
                lines.append(f"{s},{k + 1},{r.angle_deg[k]:.4f},{t[0]:.4f},{t[1]:.4f},{t[2]:.4f},"
                             f"{r.shift[k]:.4f},{r.presence[k]:.4f}")
        write_text(folder / "parts.csv", "\n".join(lines) + "\n")
    write_text(folder / "README.txt", f"{len(paths)} maps of a cryospire traversal. In ChimeraX:\n"
               f"  open {folder}/vol_*.mrc vseries true\n"
               f"or open {chimerax.SCRIPT_NAME} (the series at a molecule/solvent level, and how to play it).\n")
    chimerax.write_script(folder, chimerax.series_script("vol_*.mrc", len(paths), series_level(volumes)))
    return paths


def series_level(volumes: Sequence[np.ndarray]) -> float:
    """The surface level for a map series: Otsu's molecule/solvent split of its middle map
    (:func:`~cryospire_core.models.consensus.density_threshold`, the level napari's opening view
    gives a map), or half its maximum when it has almost no positive density."""
    from cryospire_core.models.consensus import density_threshold  # imports torch

    middle = np.asarray(volumes[len(volumes) // 2])
    try:
        return density_threshold(middle)
    except ValueError:
        return 0.5 * float(middle.max())


def export_traversal(explorer: Explorer, traversal: Traversal, folder: str | os.PathLike,
                     overwrite: bool = False, remedy: str = "--overwrite", box: int | None = None) -> list[Path]:
    """The map (float32, exact decode: never the live bfloat16 one) at every latent of
    ``traversal`` (of ``explorer``'s run), ``box`` samples per side
    (:meth:`~cryospire_core.analysis.explorer.Explorer.map_lattice`; None: the model's box),
    written by :func:`write_map_series` with its latents and readouts. Existing files are refused
    (InputError) before any map is computed unless ``overwrite``."""
    zs, rs = traversal.latents, traversal.readouts
    lattice = explorer.map_lattice(box)
    check_map_series(folder, len(zs), True, bool(rs), overwrite, remedy)
    volumes = [explorer.map_at(z, box) for z in zs]
    return write_map_series(folder, volumes, lattice.apix, latents=zs, readouts=rs, overwrite=overwrite,
                            remedy=remedy)


#: The movie formats :func:`write_movie` writes, by file suffix (the save dialog offers them in this order).
MOVIE_SUFFIXES = (".mp4", ".gif")


def check_movie_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path when :func:`write_movie` can write it (suffix .mp4 or .gif, any case);
    InputError naming the file otherwise. Call it before recording the frames."""
    path = Path(path)
    if path.suffix.lower() not in MOVIE_SUFFIXES:
        raise InputError(path, "movie", "a file name ending in .mp4 or .gif", path.suffix or "no suffix")
    return path


def write_movie(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 10.0) -> Path:
    """Write RGB(A) frames (H, W, 3|4) uint8 (screenshots of a traversal) as a movie at ``fps``
    frames per second, atomically: ``.mp4``, H.264 in yuv420p (what players, slides and journals
    take; ffmpeg from imageio-ffmpeg), or ``.gif`` (looping). Frames are padded with black at the
    bottom and right to the largest frame's size (the window may be resized while recording),
    rounded up to even for mp4 (yuv420p needs even sizes). Any other suffix is an InputError
    naming the file."""
    path = check_movie_path(path)
    suffix = path.suffix.lower()
    rgb = _padded([np.asarray(f)[..., :3] for f in frames], 2 if suffix == ".mp4" else 1)
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            import imageio.v3 as iio

            iio.imwrite(tmp, rgb, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            _write_mp4(tmp, rgb, fps)
    return path


def _padded(frames: Sequence[np.ndarray], multiple: int) -> np.ndarray:
    """(T, H, W, 3) uint8: the (h, w, 3) frames in black frames of the largest height and width,
    each rounded up to a multiple of ``multiple``."""
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    out = np.zeros((len(frames), -(-h // multiple) * multiple, -(-w // multiple) * multiple, 3), np.uint8)
    for o, f in zip(out, frames):
        o[:f.shape[0], :f.shape[1]] = f
    return out


def _write_mp4(path: Path, rgb: np.ndarray, fps: float) -> None:
    """(T, H, W, 3) uint8 frames, H and W even, as H.264 yuv420p through imageio-ffmpeg's ffmpeg."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), (rgb.shape[2], rgb.shape[1]), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=8,
                                         ffmpeg_log_level="error")
    writer.send(None)  # starts ffmpeg
    try:
        for frame in rgb:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
