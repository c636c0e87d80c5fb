"""ChimeraX command scripts (``.cxc``) written beside exported maps, so that opening one
(``chimerax open_in_chimerax.cxc``, or File > Open in ChimeraX) shows them as cryospire does.

A script names its maps relative to its own folder (ChimeraX runs a ``.cxc`` from the folder it
is in), so the folder can be moved or copied as a whole. Models are numbered from #1: the
scripts are meant for a fresh ChimeraX session. Commands used: ``open NAME`` (``vseries true``
opens a glob of maps as one volume series), ``volume #N style surface level L color C
transparency T`` (transparency 0 opaque to 1 invisible) and ``volume #N hide``; ``vseries play``
is given as a comment, to run by hand.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryospire_core.io.atomic import write_text

#: The script's name in a folder of exported maps (one per folder).
SCRIPT_NAME = "open_in_chimerax.cxc"
#: The colour of a traversal's maps: napari shows them grey.
SERIES_COLOUR = "#b4b4b4"
#: Soft masks run from 0 (outside) to 1 (inside the part): their half-way surface.
MASK_LEVEL = 0.5
#: Each part's surface half transparent, so a part nested inside another shows.
MASK_TRANSPARENCY = 0.5


def series_script(pattern: str, n_maps: int, level: float) -> str:
    """The text of a script opening the maps matching ``pattern`` (a glob relative to the
    script's folder, e.g. ``vol_*.mrc``: ``n_maps`` of them) as one volume series, surfaces at
    ``level`` (map units), with the command that plays it back and forth as a comment."""
    return (f"# cryospire: a traversal of {n_maps} maps as a ChimeraX volume series (#1).\n"
            "# Open in a new ChimeraX session: chimerax " + SCRIPT_NAME + "\n"
            f"open {pattern} vseries true\n"
            f"volume #1 style surface level {level:.6g} color {SERIES_COLOUR}\n"
            "# play it (or drag the slider of the Volume Series tool):\n"
            "# vseries play #1 loop true direction oscillate\n")


def masks_script(labels: str, masks: Sequence[str], colours: Sequence[str]) -> str:
    """The text of a script opening the part label map ``labels`` (#1, hidden: value k is part
    k) and each soft mask ``masks[k]`` (#k+2) as a surface at :data:`MASK_LEVEL` in
    ``colours[k]`` (``#rrggbb``, the run's part colours), half transparent. File names are
    relative to the script's folder."""
    if len(masks) != len(colours):
        raise ValueError(f"{len(masks)} masks but {len(colours)} colours")
    lines = [(f"# cryospire: the part label map (#1, hidden) and {len(masks)} soft part masks "
              f"(#2-#{len(masks) + 1}) in the run's part colours."),
             "# Open in a new ChimeraX session: chimerax " + SCRIPT_NAME,
             f"open {labels}",
             "volume #1 hide"]
    for k, (mask, colour) in enumerate(zip(masks, colours)):
        lines += [f"open {mask}",
                  (f"volume #{k + 2} style surface level {MASK_LEVEL:g} color {colour} "
                   f"transparency {MASK_TRANSPARENCY:g}")]
    return "\n".join(lines) + "\n"


def write_script(folder: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as ``folder/open_in_chimerax.cxc`` (atomically); returns its path."""
    path = Path(folder) / SCRIPT_NAME
    write_text(path, text)
    return path
