"""Reading a whole memory-mapped stack leaves the process's resident memory where it was."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cryospire_core.io.mrc import StackWriter
from cryospire_core.io.particles import ImageSource


def _file_backed_mb() -> float:
    return int(re.search(r"RssFile:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def test_reading_every_image_does_not_keep_the_stack_resident(tmp_path):
    n, box = 1000, 128  # 65 MB
    rng = np.random.default_rng(0)
    with StackWriter(tmp_path / "s.mrcs", box, 2.0) as w:
        for _ in range(n // 250):
            w.append(rng.standard_normal((250, box, box), dtype=np.float32))
    source = ImageSource([tmp_path / "s.mrcs"], np.zeros(n, dtype=np.int64), np.arange(n), box)
    before = _file_backed_mb()
    total = 0.0
    for idx in np.array_split(rng.permutation(n), 16):
        total += float(source.read(idx).sum())
    assert np.isfinite(total)
    assert _file_backed_mb() - before < 8  # a mapped stack that stayed resident would add 65 MB
    again = source.read(np.arange(3))  # dropped pages read back from the page cache
    assert again.shape == (3, box, box) and np.isfinite(again).all()
