"""npe2 readers: maps, particle stacks, particle metadata and run folders.

Each ``get_*_reader(path)`` answers quickly, from the name (and for folders config.json), whether
the path is ours: it returns None otherwise so napari can try another plugin. The returned
function does the reading; a broken file raises :class:`cryospire_core.errors.InputError`, which
napari reports as a ``ReaderPluginError`` whose message ends with the InputError text
("Original error from plugin "cryospire-napari": InputError: <file>: <field>: expected ...").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ._layers import LayerDataTuple, is_run_folder, read_mrc_layer, read_particles_layer, read_stack_layer, run_layers

ReaderFunction = Callable[[str | list[str]], list[LayerDataTuple]]


def _single(path: str | list[str]) -> Path | None:
    """The one path napari asks about, or None for a multi-file stack (not supported)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(os.fspath(path))


def _reader(path: str | list[str], suffixes: tuple[str, ...], make: Callable[[Path], list[LayerDataTuple]]) -> ReaderFunction | None:
    p = _single(path)
    if p is None or p.suffix.lower() not in suffixes or p.is_dir():
        return None

    def read(_path: str | list[str]) -> list[LayerDataTuple]:
        return make(p)

    return read


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
    """A cryospire run folder (config.json with ``format_version``): every finished artefact."""
    p = _single(path)
    if p is None or not p.is_dir() or not is_run_folder(p):
        return None

    def read(_path: str | list[str]) -> list[LayerDataTuple]:
        return run_layers(p)

    return read
