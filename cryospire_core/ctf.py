"""Contrast transfer function (RELION / cryoDRGN model), batched in torch on any device.

CTF parameters travel as float arrays of shape (N, 9) whose columns are ``CTF_COLUMNS``:
defocus U and V (Å, positive = underfocus), astigmatism angle (degrees), voltage (kV),
spherical aberration Cs (mm), amplitude contrast w, phase shift (degrees), B-factor (Å²)
and scale. With this sign convention the CTF at zero frequency is ``-w``: positive density
images as a dark particle.
"""

from __future__ import annotations

import numpy as np
import torch

CTF_COLUMNS = (
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "voltage",
    "cs",
    "amplitude_contrast",
    "phase_shift",
    "bfactor",
    "scale",
)
N_CTF = len(CTF_COLUMNS)


def electron_wavelength(voltage_kv: torch.Tensor | float) -> torch.Tensor | float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    v = voltage_kv * 1e3
    if isinstance(v, torch.Tensor):
        return 12.2639 / torch.sqrt(v + 0.97845e-6 * v * v)
    return 12.2639 / np.sqrt(v + 0.97845e-6 * v * v)


def make_ctf_params(
    n: int,
    defocus_u,
    defocus_v,
    defocus_angle,
    voltage=300.0,
    cs=2.7,
    amplitude_contrast=0.1,
    phase_shift=0.0,
    bfactor=0.0,
    scale=1.0,
) -> np.ndarray:
    """Stack per-particle (or shared scalar) CTF values into an (n, 9) float64 array."""
    cols = [defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, phase_shift, bfactor, scale]
    return np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), (n,)) for c in cols], axis=1).copy()


def compute_ctf(freqs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """CTF values for a batch of images.

    freqs: (H, W, 2) spatial frequencies (sx, sy) in 1/Å (cycles/pixel divided by apix).
    params: (B, 9) rows of ``CTF_COLUMNS``.
    Returns (B, H, W) in the dtype of ``freqs``.
    """
    p = params.to(freqs.dtype)[:, :, None, None]  # (B, 9, 1, 1)
    dfu, dfv, dfang, kv, cs, w, phase, bfac, scale = p.unbind(1)
    sx, sy = freqs[..., 0], freqs[..., 1]
    s2 = sx * sx + sy * sy
    theta = torch.atan2(sy, sx)
    lam = electron_wavelength(kv)
    df = 0.5 * (dfu + dfv + (dfu - dfv) * torch.cos(2.0 * (theta - torch.deg2rad(dfang))))
    cs_a = cs * 1e7  # mm -> Å
    gamma = 2.0 * torch.pi * (-0.5 * df * lam * s2 + 0.25 * cs_a * lam**3 * s2 * s2) - torch.deg2rad(phase)
    ctf = torch.sqrt(1.0 - w * w) * torch.sin(gamma) - w * torch.cos(gamma)
    return scale * ctf * torch.exp(-0.25 * bfac * s2)
