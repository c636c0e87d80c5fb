"""Contrast transfer function (RELION / cryoDRGN model), batched in torch on any device.

CTF parameters travel as float arrays of shape (N, 9) whose columns are ``CTF_COLUMNS``:
defocus U and V (Å, positive = underfocus), astigmatism angle (degrees), voltage (kV),
spherical aberration Cs (mm), amplitude contrast w, phase shift (degrees), B-factor (Å²)
and scale. With this sign convention the CTF at zero frequency is ``-w``: positive density
images as a dark particle. :func:`impossible_ctf` and :func:`unusual_ctf` say which values a
reader refuses and which it reads with a warning.
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

# Physical limits of the CTF parameters (readers refuse values outside them, see
# ParticleSet.validate). The largest microscopes ever built ran at 3 MV; objective lenses have
# |Cs| of a few mm (and corrected ones about 0), so 100 mm means a unit error (µm?); no microscope
# defocuses by a millimetre, and beyond that the CTF's phase is below float32 precision.
MAX_VOLTAGE_KV = 3000.0
MAX_CS_MM = 100.0
MAX_DEFOCUS_A = 1e7
#: Usual defocus (0.1-20 µm): values outside are read, with a warning (a unit error in nm or µm?).
USUAL_DEFOCUS_A = (1e3, 2e5)
# exp(x) overflows float32 beyond x = 88.7: bounds the negative B-factors the envelope can take.
_LOG_FLOAT32_MAX = 88.0


def impossible_ctf(params: np.ndarray, apix: float) -> list[tuple[int, np.ndarray, str]]:
    """What each CTF column must satisfy: (column, ok (N,) bool, what was expected), for all 9.

    params: (N, 9) rows of ``CTF_COLUMNS`` (NaN compares False, so is never ok where a bound
    applies); apix: Å/pixel of the images, which bounds the B-factor: exp(-B |s|^2 / 4) must stay
    within float32 up to the corner of the images' Fourier transform (|s|^2 = 1 / (2 apix^2)).
    The angles have no bound: the caller also requires every value to be finite in float32.
    """
    dfu, dfv, angle, kv, cs, w, phase, bfac, scale = np.asarray(params, dtype=np.float64).T
    min_bfac = -4.0 * _LOG_FLOAT32_MAX * 2.0 * apix**2
    defocus = f"a defocus in Å, |defocus| <= {MAX_DEFOCUS_A:g} (1 mm)"
    return [
        (0, np.abs(dfu) <= MAX_DEFOCUS_A, defocus),
        (1, np.abs(dfv) <= MAX_DEFOCUS_A, defocus),
        (2, np.isfinite(angle), "a finite astigmatism angle in degrees"),
        (3, (kv > 0) & (kv <= MAX_VOLTAGE_KV), f"a voltage in kV, > 0 and <= {MAX_VOLTAGE_KV:g}"),
        (4, np.abs(cs) <= MAX_CS_MM, f"a spherical aberration in mm, |Cs| <= {MAX_CS_MM:g}"),
        (5, (w >= 0) & (w < 1), "an amplitude contrast w with 0 <= w < 1"),
        (6, np.isfinite(phase), "a finite phase shift in degrees"),
        (7, bfac >= min_bfac, f"a B-factor in Å² >= {min_bfac:g} (larger envelopes overflow float32)"),
        (8, scale > 0, "a CTF scale factor > 0"),
    ]


def unusual_ctf(params: np.ndarray) -> list[tuple[int, np.ndarray, str]]:
    """Possible but unusual values, worth a warning: (column, usual (N,) bool, the usual range)."""
    lo, hi = USUAL_DEFOCUS_A
    usual = f"the usual defocus {lo:,.0f}-{hi:,.0f} Å (0.1-20 µm)"
    params = np.asarray(params, dtype=np.float64)
    return [(k, (params[:, k] >= lo) & (params[:, k] <= hi), usual) for k in (0, 1)]


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
