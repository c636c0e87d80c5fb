"""compute_ctf against an independent numpy evaluation of the CONVENTIONS.md formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryospire_core.imaging.ctf import compute_ctf, electron_wavelength, make_ctf_params


def _reference_ctf(sx, sy, dfu, dfv, ang_deg, kv, cs_mm, w, phase_deg, bfac=0.0, scale=1.0):
    """The formula written out once more in float64 numpy, term by term."""
    volts = kv * 1000.0
    lam = 12.2639 / np.sqrt(volts + 0.97845e-6 * volts**2)
    s2 = sx**2 + sy**2
    theta = np.arctan2(sy, sx)
    df = 0.5 * (dfu + dfv + (dfu - dfv) * np.cos(2.0 * (theta - np.radians(ang_deg))))
    gamma = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * cs_mm * 1e7 * lam**3 * s2**2) - np.radians(phase_deg)
    return scale * (np.sqrt(1 - w**2) * np.sin(gamma) - w * np.cos(gamma)) * np.exp(-bfac * s2 / 4)


def test_wavelength_300kv():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, abs=2e-6)  # tabulated value, Å


@pytest.mark.parametrize(
    "dfu, dfv, ang, phase, bfac",
    [(15000.0, 15000.0, 0.0, 0.0, 0.0), (21000.0, 18500.0, 37.0, 0.0, 0.0), (12000.0, 11200.0, 121.0, 90.0, 50.0)],
)
def test_compute_ctf_matches_reference(dfu, dfv, ang, phase, bfac):
    rng = np.random.default_rng(0)
    s = rng.uniform(-0.2, 0.2, size=(5, 7, 2))  # 1/Å, with both signs on both axes
    params = make_ctf_params(1, dfu, dfv, ang, 300.0, 2.7, 0.07, phase, bfac, 0.9)
    got = compute_ctf(torch.tensor(s, dtype=torch.float64), torch.tensor(params))[0].numpy()
    want = _reference_ctf(s[..., 0], s[..., 1], dfu, dfv, ang, 300.0, 2.7, 0.07, phase, bfac, 0.9)
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_astigmatism_axes():
    # Along the angle of U the defocus is U, 90 degrees away it is V: compare with the
    # unastigmatic CTF of those defoci.
    ang = 30.0
    r = np.linspace(0.01, 0.15, 40)
    dirs = {ang: 20000.0, ang + 90.0: 17000.0}
    for phi, df in dirs.items():
        s = np.stack([r * np.cos(np.radians(phi)), r * np.sin(np.radians(phi))], -1)[None]
        astig = compute_ctf(torch.tensor(s), torch.tensor(make_ctf_params(1, 20000.0, 17000.0, ang)))[0]
        plain = compute_ctf(torch.tensor(s), torch.tensor(make_ctf_params(1, df, df, 0.0)))[0]
        np.testing.assert_allclose(astig.numpy(), plain.numpy(), atol=1e-9)


def test_zero_frequency_is_minus_w():
    params = torch.tensor(make_ctf_params(3, [10000.0, 20000.0, 30000.0], [9000.0, 19000.0, 30000.0], 45.0,
                                          amplitude_contrast=[0.1, 0.07, 0.2]))
    got = compute_ctf(torch.zeros(1, 1, 2, dtype=torch.float64), params)[:, 0, 0].numpy()
    np.testing.assert_allclose(got, [-0.1, -0.07, -0.2], atol=1e-12)


@pytest.mark.parametrize("df, w", [(10000.0, 0.1), (25000.0, 0.07)])
def test_first_zero(df, w):
    # CTF = sin(gamma - asin(w)); gamma starts at 0 and falls with underfocus, so the first zero
    # is at gamma = asin(w) - pi: a quadratic in s^2 with the Cs term.
    lam = electron_wavelength(300.0)
    cs = 2.7e7
    a, b, c = 0.5 * np.pi * cs * lam**3, -np.pi * df * lam, np.pi - np.arcsin(w)
    s_zero = np.sqrt((-b - np.sqrt(b * b - 4 * a * c)) / (2 * a))
    s = np.linspace(0.0, 1.5 * s_zero, 200001)
    freqs = torch.tensor(np.stack([s, np.zeros_like(s)], -1)[None])
    ctf = compute_ctf(freqs, torch.tensor(make_ctf_params(1, df, df, 0.0, amplitude_contrast=w)))[0, 0].numpy()
    first = np.nonzero(np.diff(np.sign(ctf)) != 0)[0][0]
    assert s[first] == pytest.approx(s_zero, rel=1e-4)
    assert np.all(ctf[: first - 1] < 0)  # dark at low frequency all the way to the zero
