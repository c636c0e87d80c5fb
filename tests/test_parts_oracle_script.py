"""benchmarks/parts_oracle.py's pieces on arrays made here: the true motion of Gaussians from a
simulation's beads, the fidelity numbers, the twist signature finding a rigid domain whose
Gaussians near the hinge hardly move (where the displacement signature cuts the domain by
how far each Gaussian moves), and the same read from a skinned stage 1's handles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryospire_core.imaging.lattice import Lattice
from cryospire_core.models.discovery import DiscoveryConfig, PartDiscoveryModel
from cryospire_core.models.parts import (
    adjusted_rand,
    discover_parts,
    dynamics_signature,
)

_PATH = Path(__file__).parents[1] / "benchmarks" / "parts_oracle.py"
_SPEC = importlib.util.spec_from_file_location("parts_oracle", _PATH)
parts_oracle = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(parts_oracle)


def hinged_pair(n_images: int = 60, seed: int = 0):
    """A static slab (x < 0) and an arm (x > 0) swinging +-25 degrees about the z axis through
    the origin, in Å: centres (G, 3), shifts (S, G, 3), domain of each Gaussian (G,)."""
    rng = np.random.default_rng(seed)
    core = rng.uniform([-30, -15, -15], [0, 15, 15], size=(400, 3))
    arm = rng.uniform([0, -8, -8], [40, 8, 8], size=(300, 3))
    centres = np.concatenate([core, arm])
    domain = np.repeat([0, 1], [400, 300])
    angles = rng.uniform(-25, 25, size=n_images)
    shifts = np.zeros((n_images, len(centres), 3))
    for s, a in enumerate(angles):
        R = Rotation.from_euler("z", a, degrees=True).as_matrix()
        shifts[s, domain == 1] = arm @ R.T - arm
    return centres, shifts, domain


def test_true_motion_is_the_nearest_beads_displacement_from_its_mean():
    beads = {"centres": np.array([[[0.0, 0, 0], [10, 0, 0]], [[0, 0, 0], [14, 0, 0]]]),
             "presence": np.array([[1.0, 1.0], [1.0, 0.0]]), "populations": np.array([3.0, 1.0])}
    shifts, presence = parts_oracle.true_motion(beads, np.array([0, 1, 1]), np.array([[11.0, 0, 0], [0.5, 0, 0]]))
    # bead 1's mean is at x = 11; state 0 puts it at 10, state 1 at 14 (and absent)
    np.testing.assert_allclose(shifts[:, 0, 0], [-1, 3, 3])
    np.testing.assert_allclose(shifts[:, 1], 0)
    np.testing.assert_allclose(presence, [[1, 1], [0, 1], [0, 1]])


def test_fidelity_reads_the_shrinkage_and_the_noise():
    centres, true, domain = hinged_pair()
    masses = np.ones(len(centres))
    exact = parts_oracle.fidelity(true, 0.5 * true, domain, centres, masses)
    assert exact[1][2] == pytest.approx(0.5, abs=1e-6) and exact[1][3] == pytest.approx(1.0, abs=1e-6)
    assert exact[1][1] == pytest.approx(0.5 * exact[1][0], rel=1e-6)
    noisy = 0.5 * true + np.random.default_rng(1).normal(scale=2.0, size=true.shape)
    raw = parts_oracle.fidelity(true, noisy, domain, centres, masses)[1]
    smoothed = parts_oracle.fidelity(true, noisy, domain, centres, masses, neighbours=16)[1]
    assert raw[3] < 0.8 and smoothed[3] > raw[3] + 0.1  # averaging neighbours removes independent noise


def test_twist_signature_keeps_a_swinging_arm_whole():
    centres, shifts, domain = hinged_pair()
    masses, gates = np.ones(len(centres)), np.ones(shifts.shape[:2])
    features = np.zeros((len(centres), 4), np.float32)

    def ari(signature):
        clustering = discover_parts(features, centres, masses, signature, n_level1=2, n_level2=None)
        return adjusted_rand(clustering.part_index, domain)

    twist = ari(parts_oracle.twist_signature(shifts, gates, centres, masses, apix=2.0))
    displacement = ari(dynamics_signature(shifts, gates, centres, masses, apix=2.0))
    assert twist > 0.9
    assert displacement < twist - 0.2  # the arm's Gaussians near the hinge look static


def test_skinned_twist_signature_reads_the_handles_motions():
    centres, _, domain = hinged_pair()
    masses = np.ones(len(centres))
    model = PartDiscoveryModel(centres, np.full(len(centres), 4.0), masses, 50, Lattice(32, 2.0),
                               DiscoveryConfig(n_gaussians=len(centres), handles=2))
    with torch.no_grad():  # handle 1 carries the arm alone and turns about z with the latent's first value
        model.skinned.logits.copy_(torch.as_tensor(np.where(np.eye(2)[domain] > 0, 0.0, -50.0)))
        model.skinned.mlp[-1].weight.zero_()
        model.skinned.mlp[-1].bias.zero_()
        model.skinned.mlp[0].weight.zero_()
        model.skinned.mlp[0].weight[0, 0] = 1.0
        model.skinned.mlp[0].bias.fill_(0.0)
        model.skinned.mlp[-1].weight[8, 0] = 0.3  # handle 1's rotvec z
    latents = np.random.default_rng(0).uniform(0, 2, size=(40, 4)).astype(np.float32)
    gates = np.ones((40, len(centres)))
    signature = parts_oracle.skinned_twist_signature(model, latents, gates, centres, masses, 2.0, neighbours=1)
    clustering = discover_parts(np.zeros((len(centres), 4), np.float32), centres, masses, signature, n_level1=2,
                                n_level2=None)
    assert adjusted_rand(clustering.part_index, domain) == 1.0
