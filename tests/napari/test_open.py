"""`python -m cryospire_napari.open RUN --screenshot PNG`: the run with the docks, as the demo shows it."""

from __future__ import annotations

import subprocess
import sys

from skimage.io import imread

from cryospire_napari.open import main


def test_screenshot_of_a_run_with_its_parts(parts_run, tmp_path):
    png = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, "-m", "cryospire_napari.open", str(parts_run), "--screenshot", str(png)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    image = imread(png)
    assert image.shape[0] >= 800 and image.shape[1] >= 1200  # the whole window, not just the canvas
    canvas = image[100:-100, 400:-450, :3].astype(float)
    assert canvas.std() > 5  # something drawn


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err
