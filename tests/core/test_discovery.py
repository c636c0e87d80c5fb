"""Stage 1 (part discovery): starts as its seed, trains every part it should, separates the
latents of a two-state hinge, and resumes exactly through engine.run_loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from sklearn.cluster import KMeans

from cryospire_core.imaging.ctf import make_ctf_params
from cryospire_core.imaging.geometry import random_rotations
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.precision import autocast
from cryospire_core.imaging.render import project, rasterize
from cryospire_core.models.discovery import (
    DiscoveryConfig,
    PairMLP,
    PartDiscoveryModel,
    SkinnedMotion,
    coarsen,
    feature_total_variation,
    image_variance,
    neighbour_pairs,
)
from cryospire_core.models.engine import Batch, LoopConfig, run_loop

from .model_checks import assert_every_parameter_gets_gradient, assert_resume_is_exact

BOX, APIX = 32, 12.0
LATTICE = Lattice(BOX, APIX)


def tiny_mixture(g: int = 60, seed: int = 0) -> dict:
    """A seed mixture like a consensus export: centres in a ball, widths 1.2-2 px."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(g, 3)) * 4.0 * APIX
    return {"centres": centres.astype(np.float32), "widths": rng.uniform(1.2, 2.0, g).astype(np.float32) * APIX,
            "amplitudes": rng.uniform(0.5, 1.5, g).astype(np.float32), "box": np.int64(BOX), "apix": np.float64(APIX)}


def random_batch(index, seed: int = 0) -> Batch:
    """A batch with random poses, shifts and CTFs and random images (B, BOX, BOX)."""
    rng = np.random.default_rng(seed)
    b = len(index)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return Batch(index=torch.as_tensor(index, dtype=torch.int64), images=t(rng.normal(size=(b, BOX, BOX))),
                 rotations=t(random_rotations(b, rng)), shifts=t(rng.uniform(-10, 10, (b, 2))),
                 ctf=t(make_ctf_params(b, rng.uniform(1e4, 2e4, b), rng.uniform(1e4, 2e4, b), rng.uniform(0, 180, b))))


def seed_images(g: dict, batch: Batch) -> torch.Tensor:
    t = lambda k: torch.as_tensor(g[k], dtype=torch.float32)  # noqa: E731
    return project(t("centres"), t("widths"), t("amplitudes"), batch.rotations, batch.shifts, LATTICE, ctf=batch.ctf)


@pytest.mark.parametrize(("form", "handles"), [("dense", 0), ("lowrank", 0), ("dense", 4)])
def test_initial_model_reproduces_its_seed_for_any_latent(form, handles):
    g = tiny_mixture()
    model = PartDiscoveryModel.from_consensus(g, 20, DiscoveryConfig(n_gaussians=100, mlp_form=form, handles=handles))
    batch = random_batch(np.arange(6))
    want = seed_images(g, batch)
    scale = want.abs().max()
    for z in (None, torch.randn(6, 4) * 3.0):
        got = model.render_images(batch, z).detach()
        assert (got - want).abs().max() < 1e-4 * scale
    z = torch.randn(3, 4)
    assert model.shifts(z).abs().max() == 0
    torch.testing.assert_close(model.gates(z), torch.full((3, 60), 1 / (1 + np.exp(-3.0))))
    assert model.features().shape == (60, 24)


def test_coarsen_keeps_mass_and_shape():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(600, 3)) * 5 * APIX
    widths = np.full(600, 1.0 * APIX)
    amps = rng.uniform(0.5, 1.5, 600)
    c, s, m = coarsen(centres, widths, amps, 150)
    assert c.shape == (150, 3) and s.shape == (150,) and m.shape == (150,)
    np.testing.assert_allclose(np.sum(m * s**3), np.sum(amps * widths**3), rtol=1e-6)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    fine = rasterize(t(centres), t(widths), t(amps), LATTICE).numpy().ravel()
    coarse = rasterize(t(c), t(s), t(m), LATTICE).numpy().ravel()
    assert np.corrcoef(fine, coarse)[0, 1] > 0.95
    same = coarsen(centres[:40], widths[:40], amps[:40], 150)
    np.testing.assert_array_equal(same[0], centres[:40])


def test_pair_mlp_forms_split_the_first_layer():
    g = torch.Generator().manual_seed(0)
    z, f = torch.randn(5, 4, generator=g), torch.randn(7, 24, generator=g)
    for form in ("dense", "lowrank"):
        mlp = PairMLP(4, 24, 3, hidden=16, depth=2, form=form, rank=4, generator=g)
        torch.nn.init.normal_(mlp.head.weight if form == "dense" else mlp.u_head.weight, generator=g)
        out = mlp(z, f)
        assert out.shape == (5, 7, 3)
        # Image 2's outputs do not depend on the rest of the batch.
        torch.testing.assert_close(mlp(z[2:3], f)[0], out[2])
    with pytest.raises(ValueError):
        PairMLP(4, 24, 3, 16, 1, form="sparse", generator=g)


def test_initialisation_depends_on_the_seed_alone():
    g = tiny_mixture()
    state = torch.get_rng_state()
    a, b = (PartDiscoveryModel.from_consensus(g, 20, DiscoveryConfig(n_gaussians=100, seed=3)) for _ in range(2))
    other = PartDiscoveryModel.from_consensus(g, 20, DiscoveryConfig(n_gaussians=100, seed=4))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is neither seeded nor drawn from
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    assert not torch.equal(a.feature, other.feature) and not torch.equal(a.latents.weight, other.latents.weight)
    assert not torch.equal(a.shift_mlp.z_in.weight, other.shift_mlp.z_in.weight)
    # torch's default spreads: Kaiming-uniform weights in +-1/sqrt(fan_in), N(0, std) codes
    assert a.shift_mlp.z_in.weight.abs().max() <= 0.5 and a.shift_mlp.z_in.weight.abs().max() > 0.4
    assert 0.05 < float(a.latents.numpy().std()) < 0.2


@pytest.mark.parametrize(("form", "handles"), [("dense", 0), ("lowrank", 0), ("dense", 4)])
def test_gradients_reach_latents_features_and_mlps(form, handles):
    g = tiny_mixture()
    model = PartDiscoveryModel.from_consensus(g, 40, DiscoveryConfig(mlp_form=form, handles=handles))
    opt = model.make_optimizer()
    before = model.latents.numpy()
    batch = random_batch(np.arange(10, 18))
    for _ in range(3):  # the zero-initialised last layers open the way after one step
        opt.zero_grad(set_to_none=True)
        loss, metrics = model.loss(batch)
        loss.backward()
        opt.step()
    assert set(metrics) == {"data", "prior"}
    moved = np.flatnonzero(np.abs(model.latents.numpy() - before).max(1) > 0)
    assert moved.tolist() == list(range(10, 18))
    assert_every_parameter_gets_gradient(model, opt, batch)


def test_skinned_motion_moves_each_handle_rigidly_and_blends_between():
    rng = np.random.default_rng(2)
    centres = np.concatenate([rng.normal(size=(40, 3)) * 5 + [-30, 0, 0], rng.normal(size=(40, 3)) * 5 + [30, 0, 0]])
    motion = SkinnedMotion(centres, np.ones(80), zdim=4, handles=2, hidden=8, depth=1, apix=2.0, seed=0,
                           generator=torch.Generator().manual_seed(0))
    pivots = motion.pivots.numpy().astype(np.float64)
    near = np.argmin(((centres[:, None] - pivots[None]) ** 2).sum(-1), 1)
    assert sorted(np.bincount(near)) == [40, 40]  # k-means put one pivot on each blob
    assert motion.weights().detach().numpy()[np.arange(80), near].min() > 0.5  # soft patches around the pivots
    c = torch.as_tensor(centres, dtype=torch.float32)
    assert motion(torch.randn(3, 4), c).abs().max() == 0  # starts at rest
    rotvec, trans_px = np.array([0.0, 0.0, 0.3]), np.array([1.0, -2.0, 0.5])
    with torch.no_grad():
        motion.mlp[-1].bias[:6] = torch.as_tensor(np.concatenate([rotvec, trans_px]), dtype=torch.float32)
        motion.logits.copy_(torch.as_tensor(np.where(np.eye(2)[near] > 0, 0.0, -50.0)))
    got = motion(torch.randn(2, 4), c).detach().numpy()
    moving = near == 0
    want = (Rotation.from_rotvec(rotvec).as_matrix() - np.eye(3)) @ (centres[moving] - pivots[0]).T
    np.testing.assert_allclose(got[:, moving], np.broadcast_to(want.T + trans_px * 2.0, got[:, moving].shape), atol=1e-4)
    assert np.abs(got[:, ~moving]).max() < 1e-6
    with torch.no_grad():
        motion.logits.zero_()  # every Gaussian half on each handle: half the motion
    np.testing.assert_allclose(motion(torch.randn(1, 4), c).detach().numpy()[0, moving], 0.5 * (want.T + trans_px * 2.0), atol=1e-4)


def test_neighbour_pairs_link_each_gaussian_to_its_nearest_others_once():
    centres = np.array([[0, 0, 0], [1, 0, 0], [10, 0, 0], [11, 0, 0], [30, 0, 0]], np.float32)
    assert neighbour_pairs(centres, k=1).tolist() == [[0, 1], [2, 3], [3, 4]]
    pairs = neighbour_pairs(tiny_mixture(g=40)["centres"])
    assert len(pairs) == len(np.unique(pairs.numpy(), axis=0)) and bool((pairs[:, 0] < pairs[:, 1]).all())
    assert len(neighbour_pairs(centres[:1])) == 0


def test_feature_total_variation_is_the_mean_step_between_neighbours():
    pairs = torch.tensor([[0, 1], [1, 2], [2, 3]])
    flat = torch.ones(4, 5)
    steps = torch.tensor([[0.0, 0], [0, 0], [3, 4], [3, 4]])  # one step of length 5 between two patches
    assert float(feature_total_variation(flat, pairs)) == pytest.approx(0.0, abs=1e-5)
    assert float(feature_total_variation(steps, pairs)) == pytest.approx(5 / 3, rel=1e-5)
    # a step costs the same split into two half steps: total variation does not favour blurring it
    ramp = torch.tensor([[0.0, 0], [0, 0], [1.5, 2], [3, 4]])
    assert float(feature_total_variation(ramp, pairs)) == pytest.approx(5 / 3, rel=1e-5)
    flat.requires_grad_(True)
    feature_total_variation(flat, pairs).backward()
    assert torch.isfinite(flat.grad).all()  # equal neighbours: no NaN from the norm's kink


def test_feature_tv_joins_the_loss_only_when_weighted():
    g = tiny_mixture()
    batch = random_batch(np.arange(4))
    plain = PartDiscoveryModel.from_consensus(g, 10, DiscoveryConfig(n_gaussians=100))
    tv = PartDiscoveryModel.from_consensus(g, 10, DiscoveryConfig(n_gaussians=100, feature_tv=0.01))
    (a, ma), (b, mb) = plain.loss(batch), tv.loss(batch)
    assert set(ma) == {"data", "prior"} and set(mb) == {"data", "prior", "feature_tv"}
    want = 0.01 * float(feature_total_variation(tv.feature.detach(), tv.tv_pairs))
    assert float(b.detach() - a.detach()) == pytest.approx(want, rel=1e-4)
    b.backward()
    assert tv.feature.grad is not None and float(tv.feature.grad.abs().sum()) > 0
    assert "tv_pairs" not in tv.state_dict()  # checkpoints keep their keys


def test_latents_of_two_hinge_states_separate(hinge_two_states, tmp_path):
    ps, labels, seed = hinge_two_states
    cfg = DiscoveryConfig(image_var=image_variance(ps), epochs=6)
    model = PartDiscoveryModel.from_consensus(seed, len(ps), cfg)
    result = run_loop(model, model.make_optimizer(), ps, LoopConfig(epochs=cfg.epochs), tmp_path / "ck.pt", "discovery",
                      torch.device("cpu"))
    assert result.history[-1] < 0.6 * result.history[0]
    z = model.latents.numpy()
    found = KMeans(2, n_init=4, random_state=0).fit_predict(z)
    accuracy = max(np.mean(found == labels), np.mean(found != labels))
    assert accuracy > 0.9, accuracy
    # Decoding without images: one volume per latent, gates in [0, 1].
    vol = model.volume(torch.as_tensor(z[0]))
    assert vol.shape == (32, 32, 32)
    gates = model.gates(torch.as_tensor(z[:5]))
    assert gates.min() >= 0 and gates.max() <= 1


def _train(seed, ps, epochs, ckpt):
    model = PartDiscoveryModel.from_consensus(seed, len(ps), DiscoveryConfig(mlp_form="lowrank"))
    run_loop(model, model.make_optimizer(), ps, LoopConfig(epochs=epochs, batch_size=32), ckpt, "discovery", torch.device("cpu"))
    return model


def test_checkpoint_resume_gives_identical_parameters(hinge_two_states, tmp_path):
    ps, _, seed = hinge_two_states
    ps = ps.subset(np.arange(128))
    assert_resume_is_exact(lambda epochs, ckpt: _train(seed, ps, epochs, ckpt), tmp_path)


def test_improved_map_seeds_parts_the_representative_conformation_lacks():
    g = tiny_mixture()
    model = PartDiscoveryModel.from_consensus(g, 20, DiscoveryConfig(n_gaussians=100))
    with torch.no_grad():
        model.gate_mlp.head.bias.fill_(-30.0)  # every Gaussian decodes as absent at every latent
    latents = torch.randn(20, 4)
    gates_sample = torch.ones(100, 60)
    gates_sample[10:, :10] = 0.0  # Gaussians 0-9 are present in only 10% of the sampled images
    with torch.no_grad():
        assert model.volume(latents[0]).abs().max() < 1e-6
        got = model.improved_map(latents, gates_sample)
        # Fully present: the seed amplitudes over the initial gate.
        want = rasterize(torch.as_tensor(g["centres"]), torch.as_tensor(g["widths"]),
                         torch.as_tensor(g["amplitudes"]) / torch.sigmoid(torch.tensor(3.0)), LATTICE)
    torch.testing.assert_close(got, want, atol=1e-4 * float(want.abs().max()), rtol=0)


def test_skinned_motion_blends_in_float32_under_autocast():
    centres = np.random.default_rng(0).normal(size=(100, 3)) * 30
    motion = SkinnedMotion(centres, np.ones(100), zdim=4, handles=4, hidden=16, depth=1, apix=2.0, seed=0,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        motion.mlp[-1].bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        c, z = torch.as_tensor(centres, dtype=torch.float32), torch.randn(3, 4)
        ref = motion(z, c)
        with autocast(torch.device("cpu"), "bf16"):
            low = motion(z, c)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 1e-2 * ref.abs().max()  # only the MLP ran in bf16
