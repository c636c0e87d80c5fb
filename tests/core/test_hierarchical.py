"""Stage 2 (part-aware model): starts as its seed, moves parts rigidly about their anchors,
trains every part it should, and resumes exactly through engine.run_loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryospire_core.models.discovery import DiscoveryConfig, PartDiscoveryModel
from cryospire_core.models.engine import LoopConfig, run_loop
from cryospire_core.models.hierarchical import HierarchicalConfig, PartAwareModel
from cryospire_core.models.rigid import rotvec_to_rotation
from cryospire_core.models.stage import StageModel

from .model_checks import assert_every_parameter_gets_gradient, assert_resume_is_exact
from .test_discovery import random_batch, seed_images, tiny_mixture

K = 3


def _model(form: str = "dense", n: int = 30, g: dict | None = None) -> tuple[PartAwareModel, dict]:
    g = tiny_mixture() if g is None else g
    centres = np.asarray(g["centres"], dtype=np.float64)
    part = np.argsort(np.argsort(centres[:, 0])) * K // len(centres)  # three slabs along x
    anchors = np.stack([centres[part == k].mean(0) for k in range(K)])
    feats = np.random.default_rng(0).normal(size=(K, 24))
    latents = np.random.default_rng(1).normal(size=(n, 4)) * 0.3
    cfg = HierarchicalConfig(hidden=32, depth=2, mlp_form=form)
    return PartAwareModel.from_parts(g, part, anchors, feats, latents, cfg), g


@pytest.mark.parametrize("form", ["dense", "lowrank"])
def test_initial_model_reproduces_its_seed_for_any_latent(form):
    model, g = _model(form)
    batch = random_batch(np.arange(5))
    want = seed_images(g, batch)
    for z in (None, torch.randn(5, 4) * 3.0):
        assert (model.render_images(batch, z).detach() - want).abs().max() < 1e-4 * want.abs().max()
    rotvec, trans = model.part_motions(torch.randn(2, 4))
    assert rotvec.shape == trans.shape == (2, K, 3) and rotvec.abs().max() == 0 and trans.abs().max() == 0
    torch.testing.assert_close(model.part_presence(torch.randn(2, 4)), torch.full((2, K), 1 / (1 + np.exp(-3.0))))
    torch.testing.assert_close(model.features(), model.anchor_feature[model.part_index])


def test_both_stages_decode_to_one_interface():
    stage2, g = _model()
    stage1 = PartDiscoveryModel.from_consensus(g, 30, DiscoveryConfig(n_gaussians=100))
    G, z = len(g["centres"]), torch.randn(2, 4)
    for model, stage in ((stage1, "discovery"), (stage2, "hierarchical")):
        assert isinstance(model, StageModel) and model.stage == stage
        with torch.no_grad():
            d = model.decode(z)
        assert d.centres.shape == (2, G, 3) and d.amplitudes.shape == d.gates.shape == (2, G)
        # Initially every Gaussian sits at its rest centre, every gate at sigmoid(gate_bias).
        torch.testing.assert_close(d.centres, model.centres.detach().expand(2, G, 3), atol=1e-4, rtol=0)
        torch.testing.assert_close(d.gates, torch.full((2, G), 1 / (1 + np.exp(-3.0))))
        torch.testing.assert_close(d.amplitudes / d.gates, d.amplitudes[:1] / d.gates[:1].expand(2, G))
    assert stage1.decode(z).motions is None
    rotvec, trans = stage2.decode(z).motions
    assert rotvec.shape == trans.shape == (2, K, 3)


def test_initialisation_depends_on_the_seed_alone():
    state = torch.get_rng_state()
    a, b = _model()[0], _model()[0]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is neither seeded nor drawn from
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_rotvec_to_rotation_matches_scipy():
    v = torch.tensor([[0.0, 0.0, 0.0], [1e-5, -2e-5, 0.0], [0.3, -1.2, 0.5], [0.0, 3.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(rotvec_to_rotation(v).numpy(), Rotation.from_rotvec(v.numpy()).as_matrix(), atol=1e-12)
    v0 = torch.zeros(3, requires_grad=True)
    rotvec_to_rotation(v0)[0, 1].backward()
    assert torch.isfinite(v0.grad).all() and v0.grad.abs().sum() > 0


class _FixedMotion(torch.nn.Module):
    """Stands in for the anchor MLP: the same motions (K, 6) for every image."""

    def __init__(self, motions: torch.Tensor) -> None:
        super().__init__()
        self.motions = motions

    def forward(self, z, f):
        return self.motions[None].expand(z.shape[0], -1, -1)


def test_a_part_rotates_rigidly_about_its_anchor():
    model, g = _model()
    rotvec = torch.tensor([0.2, -0.5, 0.9])
    motions = torch.zeros(K, 6)
    motions[1, :3] = rotvec
    motions[2, 3:] = torch.tensor([1.0, 0.0, -2.0])  # pixels
    model.anchor_mlp = _FixedMotion(motions)
    decoded = model.decode(torch.randn(2, 4))
    centres, tr = decoded.centres.detach(), decoded.motions[1]
    rest = model.centres.detach()
    part = model.part_index
    R = torch.as_tensor(Rotation.from_rotvec(rotvec.numpy()).as_matrix(), dtype=torch.float32)
    anchor = model.anchor_centres[1]
    want = (rest[part == 1] - anchor) @ R.T + anchor
    torch.testing.assert_close(centres[0, part == 1], want, atol=1e-3, rtol=0)
    torch.testing.assert_close(centres[1, part == 0], rest[part == 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(centres[0, part == 2], rest[part == 2] + torch.tensor([1.0, 0.0, -2.0]) * model.lattice.apix,
                               atol=1e-3, rtol=0)
    # The anchor itself does not move under its part's rotation; distances inside the part are kept.
    d0 = torch.cdist(rest[part == 1], rest[part == 1])
    torch.testing.assert_close(torch.cdist(centres[0, part == 1], centres[0, part == 1]), d0, atol=1e-3, rtol=0)
    torch.testing.assert_close(tr[0, 2], torch.tensor([1.0, 0.0, -2.0]) * model.lattice.apix)


@pytest.mark.parametrize("form", ["dense", "lowrank"])
def test_gradients_reach_latents_features_and_mlps(form):
    model, _ = _model(form, n=40)
    opt = model.make_optimizer()
    before = model.latents.numpy()
    batch = random_batch(np.arange(20, 28))
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        loss, metrics = model.loss(batch)
        loss.backward()
        opt.step()
    assert set(metrics) == {"data", "prior", "offset"}
    assert np.flatnonzero(np.abs(model.latents.numpy() - before).max(1) > 0).tolist() == list(range(20, 28))
    assert model.feature_offset.abs().max() > 0
    assert_every_parameter_gets_gradient(model, opt, batch)


def test_bad_part_index_is_refused():
    g = tiny_mixture()
    with pytest.raises(ValueError, match="part_index"):
        PartAwareModel.from_parts(g, np.full(60, K), np.zeros((K, 3)), np.zeros((K, 24)), np.zeros((5, 4)),
                                  HierarchicalConfig())


def _train(g, ps, epochs, ckpt):
    model, _ = _model("lowrank", n=len(ps), g=g)
    run_loop(model, model.make_optimizer(), ps, LoopConfig(epochs=epochs, batch_size=32), ckpt, "hierarchical",
             torch.device("cpu"))
    return model


def test_checkpoint_resume_gives_identical_parameters(hinge_two_states, tmp_path):
    ps, _, seed = hinge_two_states
    ps = ps.subset(np.arange(128))
    assert_resume_is_exact(lambda epochs, ckpt: _train(seed, ps, epochs, ckpt), tmp_path)
