"""The training loop: prefetching reads the same batches, cancellation checkpoints the exact
step, and a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cryospire_core.errors import ResultError
from cryospire_core.io.load import load_particles
from cryospire_core.models.engine import (
    Batch,
    LoopConfig,
    epoch_order,
    iterate_batches,
    load_loop_state,
    run_loop,
    save_checkpoint,
)
from cryospire_core.progress import ProgressEvent


class TemplateModel(nn.Module):
    """images ~ template, one learnable (D, D) image: a minimal Trainable."""

    def __init__(self, box: int) -> None:
        super().__init__()
        self.template = nn.Parameter(torch.zeros(box, box))

    def loss(self, batch: Batch):
        mse = (batch.images - self.template).pow(2).mean()
        return mse, {"mse": float(mse)}


def test_prefetched_batches_equal_direct_reads(homogeneous_32):
    ps = load_particles(homogeneous_32 / "particles.star")
    order = epoch_order(len(ps), seed=1, epoch=0)[:300]
    cpu = torch.device("cpu")
    direct = list(iterate_batches(ps, order, 64, cpu, prefetch=0))
    ahead = list(iterate_batches(ps, order, 64, cpu, prefetch=2))
    assert len(direct) == len(ahead) == 5
    for a, b in zip(direct, ahead):
        assert torch.equal(a.index, b.index) and torch.equal(a.images, b.images) and torch.equal(a.ctf, b.ctf)
    np.testing.assert_array_equal(torch.cat([b.index for b in ahead]).numpy(), order)


def _train(ps, ckpt, stop_after=None, events=None):
    torch.manual_seed(0)
    model = TemplateModel(ps.box)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return stop_after is not None and calls["n"] > stop_after

    res = run_loop(model, opt, ps, LoopConfig(epochs=2, batch_size=128, seed=4), ckpt, "test", torch.device("cpu"),
                   progress=events.append if events is not None else None, should_stop=should_stop)
    return res, model


def test_cancel_then_resume_matches_uninterrupted(homogeneous_32, tmp_path):
    ps = load_particles(homogeneous_32 / "particles.star")
    events: list[ProgressEvent] = []
    ref, ref_model = _train(ps, tmp_path / "ref.pt", events=events)
    assert ref.status == "finished" and len(ref.history) == 2
    assert events[-1].done == events[-1].total == 2 * 16 and events[-1].epoch == 2

    cancelled, _ = _train(ps, tmp_path / "run.pt", stop_after=20)
    assert cancelled.status == "cancelled" and (cancelled.epoch, cancelled.step) == (1, 4)
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 4)

    resumed, model = _train(ps, tmp_path / "run.pt")
    assert resumed.status == "finished"
    torch.testing.assert_close(model.template, ref_model.template, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resumed.history, ref.history, rtol=1e-5)


def test_a_diverging_stage_stops_with_a_clear_error_and_keeps_its_last_checkpoint(homogeneous_32, tmp_path):
    """A loss that turns NaN (e.g. a learning rate far too high) ends the loop at that step with a
    ResultError naming the stage and what to change; the last checkpoint is the sound one before."""

    class Diverging(TemplateModel):
        diverged = False

        def loss(self, batch):
            mse, metrics = super().loss(batch)
            return (mse * float("nan"), metrics) if self.diverged else (mse, metrics)

    ps = load_particles(homogeneous_32 / "particles.star")
    ckpt = tmp_path / "ckpt.pt"
    model = Diverging(ps.box)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    run_loop(model, opt, ps, LoopConfig(epochs=1, batch_size=500, seed=4), ckpt, "stage 9", torch.device("cpu"))
    sound = load_loop_state(ckpt)
    model.diverged = True
    with pytest.raises(ResultError, match=r"ckpt\.pt: stage 9 loss: expected finite values, found nan at epoch 2, "
                                          r"step 1: the stage diverged: lower the learning rate"):
        run_loop(model, opt, ps, LoopConfig(epochs=2, batch_size=500, seed=4), ckpt, "stage 9", torch.device("cpu"))
    assert load_loop_state(ckpt)["epoch"] == sound["epoch"] == 1
    assert torch.equal(load_loop_state(ckpt)["model"]["template"], sound["model"]["template"])
    with torch.no_grad():
        model.template[0, 0] = float("nan")
    with pytest.raises(ResultError, match=r"weights: expected finite numbers, found 1 NaN/Inf values, not written "
                                          r"\(stage 9 diverged"):
        save_checkpoint(ckpt, {"model": model.state_dict()}, "stage 9")
    assert torch.equal(load_loop_state(ckpt)["model"]["template"], sound["model"]["template"])
