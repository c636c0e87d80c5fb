"""ImageSource reads the right frames from many stacks; contrast detection finds the sign."""

from __future__ import annotations

import numpy as np
import torch

from cryospire_core.imaging import fourier
from cryospire_core.imaging.ctf import compute_ctf, make_ctf_params
from cryospire_core.io.mrc import write_stack
from cryospire_core.io.particles import ImageSource, detect_contrast


def test_reads_across_more_stacks_than_may_stay_open(tmp_path):
    rng = np.random.default_rng(0)
    n_files, per_file, box = ImageSource.MAX_OPEN + 16, 3, 8
    stacks = rng.standard_normal((n_files, per_file, box, box)).astype(np.float32)
    files = []
    for k in range(n_files):
        files.append(tmp_path / f"s{k:03d}.mrcs")
        write_stack(files[-1], stacks[k], apix=1.0)
    file_index = np.repeat(np.arange(n_files), per_file)
    frames = np.tile(np.arange(per_file), n_files)
    src = ImageSource(files, file_index, frames, box)
    order = rng.permutation(len(src))
    got = src.read(order)
    np.testing.assert_array_equal(got, stacks.reshape(-1, box, box)[order])
    assert len(src._handles) <= ImageSource.MAX_OPEN
    src.close()


def _ctf_blobs(n: int, box: int, sign: float, snr: float, rng) -> np.ndarray:
    """Noisy CTF-modulated images of a positive Gaussian blob; sign=-1 makes white particles."""
    yy, xx = np.mgrid[:box, :box] - box // 2
    blob = torch.as_tensor(np.exp(-(xx**2 + yy**2) / (2 * (box / 8) ** 2)), dtype=torch.float32)
    apix = 3.0
    params = torch.as_tensor(make_ctf_params(n, rng.uniform(1e4, 3e4, n), rng.uniform(1e4, 3e4, n), 0.0))
    freqs = fourier.freq_grid_2d(box) / apix
    clean = fourier.ifft2_centered(fourier.fft2_centered(blob)[None] * compute_ctf(freqs, params)).numpy()
    noise = rng.standard_normal(clean.shape) * np.sqrt(clean.var() / snr)
    return (sign * clean + noise).astype(np.float32)


def test_detect_contrast_finds_dark_and_white_at_low_snr(tmp_path):
    rng = np.random.default_rng(1)
    for sign, expected in ((1.0, 1.0), (-1.0, -1.0)):
        path = tmp_path / f"sign{int(sign)}.mrcs"
        write_stack(path, _ctf_blobs(600, 32, sign, 0.01, rng), apix=3.0)
        src = ImageSource([path], np.zeros(600, int), np.arange(600), 32)
        assert detect_contrast(src) == expected
