"""Checks shared by the stage-1 and stage-2 model tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def assert_resume_is_exact(train: Callable[[int, Path], torch.nn.Module], tmp_path: Path) -> None:
    """A run cut after one epoch and resumed from its checkpoint ends bit-identical to one trained
    straight through. train(epochs, checkpoint) -> the trained model (fresh each call, same seed)."""
    straight = train(2, tmp_path / "a.pt")
    train(1, tmp_path / "b.pt")
    resumed = train(2, tmp_path / "b.pt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def assert_every_parameter_gets_gradient(model: torch.nn.Module, opt, batch) -> None:
    """One backward pass of ``model.loss(batch)`` reaches the latents and every other parameter."""
    opt.zero_grad(set_to_none=True)
    model.loss(batch)[0].backward()
    assert model.latents.weight.grad is not None
    for name, p in model.named_parameters():
        if name != "latents.embedding.weight":
            assert p.grad is not None and p.grad.abs().max() > 0, name
