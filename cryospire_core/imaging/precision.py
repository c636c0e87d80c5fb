"""Mixed precision: the MLPs under autocast, everything that sums many terms in float32.

``--precision auto`` is bf16 on a CUDA GPU that supports it (Ampere and later), fp16 with a
gradient scaler on older GPUs, fp32 on CPUs. Only the per-(image, Gaussian) MLPs benefit: they
are most of the arithmetic of stages 1 and 2 and tolerate 8-bit mantissas. The renderer (each
pixel a sum over thousands of Gaussians, then an FFT), the pose and part geometry and the loss
stay in float32: :func:`float32_region` turns autocast off and callers cast with ``.float()``.
"""

from __future__ import annotations

import torch

from cryospire_core.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_HALF = (torch.float16, torch.bfloat16)


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``--precision name`` on ``device``.

    fp16 needs CUDA (its gradient scaler is a GPU feature here); bf16 runs on CPUs too (slowly on
    most: useful for tests, not for speed)."""
    if name not in PRECISIONS:
        raise InputError(None, "--precision", " or ".join(PRECISIONS), name)
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise InputError(None, "--precision", "fp16 only on a CUDA device (use bf16 or fp32 here)", name)
    return name


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision (disabled for fp32)."""
    return torch.autocast(device.type, dtype=_DTYPES.get(precision, torch.bfloat16), enabled=precision in _DTYPES)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (bf16 has float32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def float32_region(device_type: str):
    """A context with autocast off on ``device_type`` (``cpu`` or ``cuda``)."""
    return torch.autocast(device_type, enabled=False)


def to_float32(x):
    """A half-precision tensor as float32; anything else (float32/64 tensors, numbers) unchanged."""
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in _HALF else x
