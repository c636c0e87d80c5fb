"""geometry.py against scipy's Rotation (an independent implementation of the conventions)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryospire_core.imaging.geometry import (
    euler_to_matrix,
    matrix_to_euler,
    matrix_to_rotvec,
    random_rotations,
    rotvec_to_matrix,
)


def _angles(n, seed=0):
    rng = np.random.default_rng(seed)
    a = np.column_stack([rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)])
    # Gimbal-lock cases: tilt exactly 0 and 180 degrees.
    a[:5, 1] = 0.0
    a[5:10, 1] = 180.0
    return a


def test_euler_to_matrix_matches_scipy_zyz_transposed():
    a = _angles(300)
    A = euler_to_matrix(a[:, 0], a[:, 1], a[:, 2])
    ref = np.swapaxes(Rotation.from_euler("ZYZ", a, degrees=True).as_matrix(), 1, 2)
    np.testing.assert_allclose(A, ref, atol=1e-12)


def test_euler_round_trip_including_tilt_0_and_180():
    a = _angles(300, seed=1)
    A = euler_to_matrix(*a.T)
    back = matrix_to_euler(A)
    assert np.all((back[:, 1] >= 0) & (back[:, 1] <= 180))
    np.testing.assert_allclose(euler_to_matrix(*back.T), A, atol=1e-10)
    # Away from gimbal lock the angles themselves come back (modulo 360).
    d = (back[10:] - a[10:] + 180) % 360 - 180
    np.testing.assert_allclose(d, 0, atol=1e-8)
    # At lock, psi is put into rot.
    np.testing.assert_allclose(back[:10, 2], 0, atol=1e-12)


def test_matrix_to_euler_agrees_with_scipy_inverse():
    a = _angles(200, seed=2)[10:]
    A = euler_to_matrix(*a.T)
    ref = Rotation.from_matrix(np.swapaxes(A, 1, 2)).as_euler("ZYZ", degrees=True)
    d = (matrix_to_euler(A) - ref + 180) % 360 - 180
    np.testing.assert_allclose(d, 0, atol=1e-8)


def test_rotvec_matches_scipy_and_round_trips():
    rng = np.random.default_rng(3)
    axes = rng.standard_normal((300, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0, np.pi, 300)
    angles[:3] = [0.0, 1e-9, np.pi]  # identity, tiny, half turn
    v = axes * angles[:, None]
    A = rotvec_to_matrix(v)
    ref = np.swapaxes(Rotation.from_rotvec(v).as_matrix(), 1, 2)
    np.testing.assert_allclose(A, ref, atol=1e-12)
    back = matrix_to_rotvec(A)
    np.testing.assert_allclose(rotvec_to_matrix(back), A, atol=1e-10)
    # Below pi the rotation vector itself is unique.
    np.testing.assert_allclose(back[3:], v[3:], atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(back[2]), np.pi, atol=1e-8)


@pytest.mark.parametrize("n", [1, 500])
def test_random_rotations_are_proper(n):
    R = random_rotations(n, np.random.default_rng(4))
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), (n, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
