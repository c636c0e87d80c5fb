"""Mixed precision: the MLPs run in bf16 under autocast, the renderer and the loss in float32,
and the loss stays close to the float32 one."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from cryospire_core.cli import train as train_cli
from cryospire_core.errors import InputError
from cryospire_core.imaging.ctf import make_ctf_params
from cryospire_core.imaging.geometry import random_rotations
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.precision import autocast, resolve_precision
from cryospire_core.imaging.render import project
from cryospire_core.io.load import load_particles
from cryospire_core.models.engine import Batch, LoopConfig, run_loop
from cryospire_core.models.hierarchical import HierarchicalConfig, PartAwareModel
from cryospire_core.services.training import new_config
from cryospire_core.sim.simulate import simulate, write_simulation

BOX, APIX, G, PARTS = 32, 12.0, 256, 4


def _model() -> PartAwareModel:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(G, 3))
    centres = d / np.linalg.norm(d, axis=1, keepdims=True) * (0.3 * BOX * rng.uniform(0, 1, (G, 1)) ** (1 / 3)) * APIX
    g = {"centres": centres, "widths": rng.uniform(1, 2, G) * APIX, "amplitudes": rng.uniform(0.5, 1.5, G),
         "box": BOX, "apix": APIX}
    part = np.arange(G) % PARTS
    anchors = np.stack([centres[part == k].mean(0) for k in range(PARTS)])
    model = PartAwareModel.from_parts(g, part, anchors, rng.normal(size=(PARTS, 24)), rng.normal(size=(64, 4)) * 0.3,
                                      HierarchicalConfig(hidden=32, depth=2, n_gaussians=G))
    with torch.no_grad():  # non-zero last layers: the MLPs then move and gate the Gaussians
        for name, p in model.named_parameters():
            if name.endswith("head.weight"):
                p.normal_(0, 0.05)
    return model


def _batch(n: int = 16) -> Batch:
    rng = np.random.default_rng(1)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return Batch(torch.arange(n), t(rng.normal(size=(n, BOX, BOX))), t(random_rotations(n, rng)),
                 t(rng.uniform(-3, 3, (n, 2)) * APIX),
                 t(make_ctf_params(n, rng.uniform(1e4, 2e4, n), rng.uniform(1e4, 2e4, n), rng.uniform(0, 180, n))))


def test_bf16_autocast_runs_the_mlps_in_bf16_and_keeps_the_loss_close():
    model, batch = _model(), _batch()
    cpu = torch.device("cpu")
    dtypes = []
    model.residual_mlp.z_in.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.no_grad():
        ref, _ = model.loss(batch)
        with autocast(cpu, "bf16"):
            low, _ = model.loss(batch)
    assert dtypes == [torch.float32, torch.bfloat16]
    assert low.dtype == torch.float32
    rel = abs(float(low) - float(ref)) / float(ref)
    assert 0 < rel < 1e-2, rel  # bf16 changed something, and not much


def test_the_renderer_ignores_autocast():
    rng = np.random.default_rng(2)
    c = torch.as_tensor(rng.normal(size=(4, G, 3)) * 40, dtype=torch.float32)
    s = torch.full((G,), 15.0)
    m = torch.as_tensor(rng.uniform(0.5, 1.5, (4, G)), dtype=torch.float32)
    b = _batch(4)
    lattice = Lattice(BOX, APIX)
    ref = project(c, s, m, b.rotations, b.shifts, lattice, ctf=b.ctf)
    with autocast(torch.device("cpu"), "bf16"):
        low = project(c.bfloat16(), s, m, b.rotations, b.shifts, lattice, ctf=b.ctf)
        same = project(c, s, m, b.rotations, b.shifts, lattice, ctf=b.ctf)
    assert low.dtype == same.dtype == torch.float32
    torch.testing.assert_close(same, ref)  # float32 GEMMs and FFTs, not bf16 ones
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()  # only the centres were rounded


def test_training_in_bf16_lowers_the_loss(tmp_path):
    sim = simulate("homogeneous", BOX, 64, snr=10.0, seed=4, oversample=1)
    ps = load_particles(write_simulation(tmp_path / "d", sim) / "particles.star")
    model = _model()
    res = run_loop(model, model.make_optimizer(), ps, LoopConfig(3, batch_size=16, precision="bf16"),
                   tmp_path / "ckpt.pt", "bf16", torch.device("cpu"))
    assert res.status == "finished" and np.isfinite(res.history).all() and res.history[-1] < res.history[0]


def test_precision_choice_and_config():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(InputError, match="fp16"):
        resolve_precision("fp16", cpu)
    parser = argparse.ArgumentParser()
    train_cli.add_args(parser)
    args = parser.parse_args(["p.star", "--out", "r", "--precision", "bf16"])
    assert new_config(train_cli.options_from_args(args)).precision == "bf16"
    assert new_config(train_cli.options_from_args(parser.parse_args(["p.star", "--out", "r"]))).precision == "auto"
