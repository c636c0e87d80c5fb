"""The ChimeraX scripts written beside exported map series and part masks: each opens exactly the
files in its folder, by names relative to it (the folder can move), a series at napari's
molecule/solvent level, and masks in the colours napari gives the parts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cryospire_core.colours import PALETTE, part_hex
from cryospire_core.errors import InputError
from cryospire_core.io import chimerax
from cryospire_core.models.consensus import density_threshold
from cryospire_core.services import traverse


def opened(script: Path) -> list[list[str]]:
    """For each ``open`` command of ``script``, the names in the script's folder that its file
    argument (a name or a glob, relative to the folder as ChimeraX runs a .cxc) matches."""
    out = []
    for line in script.read_text().splitlines():
        if line.startswith("open "):
            name = line.split()[1]
            assert not Path(name).is_absolute() and "/" not in name, line  # relative: the folder can move
            out.append(sorted(p.name for p in script.parent.glob(name)))
    return out


def volume_settings(script: Path) -> dict[int, dict[str, str]]:
    """Model number -> the options of its ``volume #N ...`` command (``{"level": "0.5", ...}``)."""
    out = {}
    for line in script.read_text().splitlines():
        m = re.fullmatch(r"volume #(\d+) (.*)", line)
        if m:
            words = m.group(2).split()
            out[int(m.group(1))] = dict(zip(words[::2], words[1::2])) if len(words) > 1 else {words[0]: ""}
    return out


def test_series_script_opens_the_written_maps_at_the_otsu_level(tmp_path):
    rng = np.random.default_rng(0)
    vols = [(rng.random((16, 16, 16)) - 0.3 + i).astype(np.float32) for i in range(3)]
    paths = traverse.write_map_series(tmp_path / "tr", vols, 2.5)
    script = tmp_path / "tr" / chimerax.SCRIPT_NAME
    # Moved with its folder, the script still names exactly the maps (and only them).
    moved = Path(shutil.move(tmp_path / "tr", tmp_path / "elsewhere"))
    assert opened(moved / script.name) == [[p.name for p in paths]]
    text = (moved / script.name).read_text()
    assert "open vol_*.mrc vseries true" in text and "vseries play #1" in text
    level = float(volume_settings(moved / script.name)[1]["level"])
    assert level == pytest.approx(density_threshold(vols[1]), rel=1e-5)  # the middle map's
    assert level != pytest.approx(density_threshold(vols[0]), rel=1e-3)


def test_series_script_is_refused_like_the_maps(tmp_path):
    (tmp_path / "tr").mkdir()
    (tmp_path / "tr" / chimerax.SCRIPT_NAME).write_text("the user's own")
    vols = [np.ones((8, 8, 8), np.float32)] * 2
    with pytest.raises(InputError, match="open_in_chimerax.cxc: map series: expected a file name not in use"):
        traverse.write_map_series(tmp_path / "tr", vols, 1.0)
    assert not (tmp_path / "tr" / "vol_000.mrc").exists()


def test_masks_script_colours_each_mask_with_the_palette(tmp_path):
    names = [f"mask_part_{k:02d}.mrc" for k in range(1, 23)]  # more parts than the palette has colours
    for name in ["part_labels.mrc", *names]:
        (tmp_path / name).write_bytes(b"")
    script = chimerax.write_script(tmp_path, chimerax.masks_script("part_labels.mrc", names, part_hex(len(names))))
    assert opened(script) == [["part_labels.mrc"]] + [[n] for n in names]
    settings = volume_settings(script)
    assert settings[1] == {"hide": ""}
    assert [settings[k + 2]["color"] for k in range(len(names))] == [f"#{PALETTE[k % 20]}" for k in range(22)]
    assert {settings[k + 2]["level"] for k in range(len(names))} == {"0.5"}
    assert {settings[k + 2]["transparency"] for k in range(len(names))} == {"0.5"}
    with pytest.raises(ValueError, match="2 masks but 1 colours"):
        chimerax.masks_script("part_labels.mrc", names[:2], part_hex(1))
