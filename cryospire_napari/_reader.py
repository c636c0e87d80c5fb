"""npe2 readers: maps, particle stacks, particle metadata and run folders.

Each ``get_*_reader(path)`` answers quickly, from the name alone, whether the path is ours: it
returns None otherwise so napari can try another plugin. The returned function does the reading.

A broken file is reported here, as one notification whose first line is ours (``<file>:
<field>: expected ..., found ...``, see :mod:`._notify`), and the function returns npe2's "read,
no layers" value ``[(None,)]``. Raising instead would reach the user wrapped in napari's
``ReaderPluginError`` ("Tried to read ... with plugin cryospire-napari, because ...") with our
sentence at its end, and the File > Open path would offer other plugins in a dialog.

A run folder opens through its ``config.json`` (File > Open, drag and drop, or
``viewer.open(RUN/config.json)``), and a run *folder* dropped on a viewer where the plugin has
run opens the same way (:mod:`._run_tracking`). There is no folder reader: npe2 0.10 offers a
folder to every reader with ``accepts_directories`` whatever its ``filename_patterns``
(``_ContributionsIndex.iter_compatible_readers``: for a directory it yields the readers indexed
under the pattern ""; npe2 issue #155, open), napari's own reader accepts folders, and
napari 0.9 raises ``MultipleReaderError`` for two readers without a saved preference
(``ViewerModel._open_or_raise_error``), which File > Open and drag and drop answer with the
modal "Choose reader" dialog (``QtViewer._qt_open`` -> ``handle_gui_reading``), for every
folder anyone opens, run or not. Without a folder reader napari's own reader alone is asked
about a folder, as if the plugin were not installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from cryospire_core.pipeline.runfolder import RunFolder

from ._layers import (
    LayerDataTuple,
    read_mrc_layer,
    read_particles_layer,
    read_stack_layer,
    run_layers,
)
from ._notify import notify_error

ReaderFunction = Callable[[str | list[str]], list[LayerDataTuple]]


def _single(path: str | list[str]) -> Path | None:
    """The one path napari asks about, or None for a multi-file stack (not supported)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return Path(os.fsdecode(path))
    except TypeError:  # not a path at all
        return None


def _is_dir(p: Path) -> bool:
    """``p.is_dir()``, False where the system refuses the name (too long, ...): the reader
    function then reports that in our words."""
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


#: What a reader function returns after reporting a broken file: npe2's "read, but no layers".
NO_LAYERS: list = [(None,)]


def _reporting(p: Path, make: Callable[[Path], list[LayerDataTuple]]) -> ReaderFunction:
    """The reader function for ``p``: ``make(p)``, or a notification and :data:`NO_LAYERS`."""

    def read(_path: str | list[str]) -> list[LayerDataTuple]:
        try:
            return make(p)
        except Exception as exc:  # reported in our words (see the module docstring)
            notify_error(exc, f"opening {p}")
            return NO_LAYERS

    return read


def _reader(path: str | list[str], suffixes: tuple[str, ...], make: Callable[[Path], list[LayerDataTuple]]) -> ReaderFunction | None:
    p = _single(path)
    if p is None or p.suffix.lower() not in suffixes or _is_dir(p):
        return None
    return _reporting(p, make)


def get_map_reader(path: str | list[str]) -> ReaderFunction | None:
    """``.mrc`` / ``.map``: a volume Image layer (float32, scale = voxel size Å, iso rendering);
    an .mrc whose header declares an image stack opens as a lazy stack instead."""
    return _reader(path, (".mrc", ".map"), lambda p: [read_mrc_layer(p)])


def get_stack_reader(path: str | list[str]) -> ReaderFunction | None:
    """``.mrcs``: the image stack (N, D, D) as a lazy, memory-mapped Image layer."""
    return _reader(path, (".mrcs",), lambda p: [read_stack_layer(p)])


def get_particles_reader(path: str | list[str]) -> ReaderFunction | None:
    """``.star`` / ``.cs``: the particle images as a lazy stack (stored contrast), with N, box,
    apix and optics groups in the layer's metadata."""
    return _reader(path, (".star", ".cs"), lambda p: [read_particles_layer(p)])


def get_run_reader(path: str | list[str]) -> ReaderFunction | None:
    """A run folder's ``config.json``: the run's map, parts and Gaussians
    (:func:`._layers.run_layers`), shown as :mod:`._run_tracking` shows a run in napari's current
    viewer. Every file of that name is taken (napari has no other reader for it): one that is
    not a cryospire run's is reported as such (its ``format_version``)."""
    p = _single(path)
    if p is None or p.name != "config.json" or _is_dir(p):
        return None

    def read(config: Path) -> list[LayerDataTuple]:
        import napari

        from ._run_tracking import attach

        layers = run_layers(config.parent)
        attach(napari.current_viewer())  # before napari adds the layers: it shows the molecule
        return layers

    return _reporting(p, read)


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a cryospire run's ``config.json`` (one with a
    ``format_version``); read quickly, any problem is a no."""
    config = RunFolder(path).config_path
    try:
        return Path(path).is_dir() and config.is_file() and "format_version" in json.loads(config.read_text())
    except (OSError, ValueError, TypeError):
        return False
