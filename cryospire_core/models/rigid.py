"""Rigid motions as torch tensors: what stage 1's skinned handles and stage 2's parts move by."""

from __future__ import annotations

import torch


def rotvec_to_rotation(v: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (..., 3) radians -> active rotation matrices (..., 3, 3) (Rodrigues).

    R = I + a(t) [v]x + b(t) [v]x^2 with t = |v|, a = sin t / t, b = (1 - cos t) / t^2; Taylor
    series near 0 keep the value and gradient finite at the identity.
    """
    t2 = v.pow(2).sum(-1)
    small = t2 < 1e-6
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    a = torch.where(small, 1.0 - t2 / 6.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24.0, (1.0 - torch.cos(t)) / torch.where(small, torch.ones_like(t2), t2))
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    K = torch.stack([torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)
