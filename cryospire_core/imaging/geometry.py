"""Rotations, following the RELION conventions (see the README's Conventions; the sampling
lattice is :mod:`cryospire_core.imaging.lattice`).

A pose matrix ``A`` (3, 3) maps model coordinates to the image frame: a point ``c`` of the map
projects to ``(A @ c)[:2]``; equivalently, the central slice of the map's 3D Fourier transform
seen by an image holds the 3D frequencies ``A.T @ (kx, ky, 0)``.
"""

from __future__ import annotations

import numpy as np


def _rz(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _ry(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def euler_to_matrix(rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """RELION Euler angles (degrees, ZYZ) to pose matrices.

    rot, tilt, psi: (N,) degrees. Returns A: (N, 3, 3) float64 with
    ``A = (Rz(rot) Ry(tilt) Rz(psi)).T``.
    """
    r, t, p = (np.deg2rad(np.asarray(x, dtype=np.float64)) for x in (rot, tilt, psi))
    m = _rz(r) @ _ry(t) @ _rz(p)
    return np.swapaxes(m, -1, -2)


def matrix_to_euler(A: np.ndarray) -> np.ndarray:
    """Pose matrices (N, 3, 3) to RELION Euler angles (N, 3): rot, tilt, psi in degrees.

    At tilt 0 or 180 only rot +- psi is defined; psi is then set to 0.
    """
    m = np.swapaxes(np.asarray(A, dtype=np.float64), -1, -2)  # Rz(rot) Ry(tilt) Rz(psi)
    tilt = np.arccos(np.clip(m[..., 2, 2], -1.0, 1.0))
    sin_t = np.sqrt(m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2)
    regular = sin_t > 1e-9
    rot = np.where(regular, np.arctan2(m[..., 1, 2], m[..., 0, 2]), 0.0)
    psi = np.where(regular, np.arctan2(m[..., 2, 1], -m[..., 2, 0]), 0.0)
    # Gimbal lock: m = Rz(rot +- psi) (with a flip at tilt 180); put everything into rot.
    rot_lock = np.where(m[..., 2, 2] > 0, np.arctan2(m[..., 1, 0], m[..., 0, 0]),
                        np.arctan2(-m[..., 1, 0], -m[..., 0, 0]))
    rot = np.where(regular, rot, rot_lock)
    return np.rad2deg(np.stack([rot, tilt, psi], -1))


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` rotation vectors (N, 3), radians, to pose matrices A.

    cryoSPARC stores the transpose of A as a rotation vector (Rodrigues).
    """
    v = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1, keepdims=True)
    safe = np.where(theta > 1e-12, theta, 1.0)
    k = v / safe
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    z = np.zeros_like(kx)
    K = np.stack([np.stack([z, -kz, ky], -1), np.stack([kz, z, -kx], -1), np.stack([-ky, kx, z], -1)], -2)
    th = theta[..., None]
    R = np.eye(3) + np.sin(th) * K + (1.0 - np.cos(th)) * (K @ K)
    return np.swapaxes(R, -1, -2)


def matrix_to_rotvec(A: np.ndarray) -> np.ndarray:
    """Pose matrices A (N, 3, 3) to cryoSPARC rotation vectors (N, 3), radians."""
    R = np.swapaxes(np.asarray(A, dtype=np.float64), -1, -2)
    # Through unit quaternions: stable for every angle including pi.
    q = _matrix_to_quaternion(R)
    w = np.clip(q[..., 0], -1.0, 1.0)
    xyz = q[..., 1:]
    s = np.linalg.norm(xyz, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s[..., 0], w)
    axis = xyz / np.where(s > 1e-12, s, 1.0)
    return axis * angle[..., None]


def _matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) to unit quaternions (..., 4) as (w, x, y, z), w >= 0."""
    m = R
    t = np.stack(
        [
            1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
        ],
        -1,
    )
    best = np.argmax(t, axis=-1)
    q = np.empty(m.shape[:-2] + (4,))
    for b in range(4):
        sel = best == b
        if not np.any(sel):
            continue
        mm = m[sel]
        s = 2.0 * np.sqrt(np.maximum(t[sel, b], 1e-300))
        if b == 0:
            qb = [0.25 * s, (mm[:, 2, 1] - mm[:, 1, 2]) / s, (mm[:, 0, 2] - mm[:, 2, 0]) / s, (mm[:, 1, 0] - mm[:, 0, 1]) / s]
        elif b == 1:
            qb = [(mm[:, 2, 1] - mm[:, 1, 2]) / s, 0.25 * s, (mm[:, 0, 1] + mm[:, 1, 0]) / s, (mm[:, 0, 2] + mm[:, 2, 0]) / s]
        elif b == 2:
            qb = [(mm[:, 0, 2] - mm[:, 2, 0]) / s, (mm[:, 0, 1] + mm[:, 1, 0]) / s, 0.25 * s, (mm[:, 1, 2] + mm[:, 2, 1]) / s]
        else:
            qb = [(mm[:, 1, 0] - mm[:, 0, 1]) / s, (mm[:, 0, 2] + mm[:, 2, 0]) / s, (mm[:, 1, 2] + mm[:, 2, 1]) / s, 0.25 * s]
        q[sel] = np.stack(qb, -1)
    q *= np.where(q[..., :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n pose matrices (n, 3, 3) drawn uniformly from SO(3) (normalised Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    return R
