"""The parts' colours: one palette for every place a part is drawn (napari's Labels colormap,
points, table swatches, scatter and readout plot, through
:func:`cryospire_napari._parts_widget.part_colours`) and for the ChimeraX scripts written beside
exported masks (:mod:`cryospire_core.io.chimerax`), so part k has the same colour everywhere."""

from __future__ import annotations

#: matplotlib's tab10 then the light shades of tab20, as "rrggbb" (not imported from matplotlib:
#: its import alone stalls the viewer ~0.2 s).
PALETTE = ("1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "7f7f7f", "bcbd22", "17becf",
           "aec7e8", "ffbb78", "98df8a", "ff9896", "c5b0d5", "c49c94", "f7b6d2", "c7c7c7", "dbdb8d", "9edae5")


def part_hex(n: int) -> list[str]:
    """The colours of parts 0..n-1 as ``#rrggbb`` (lower case), cycling through :data:`PALETTE`
    (distinct for n <= 20)."""
    return [f"#{PALETTE[k % len(PALETTE)]}" for k in range(n)]

