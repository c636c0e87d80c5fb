"""Auto-decoder latents: only the batch's codes move, and the optimiser state survives a
weights-only checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryospire_core.models.latents import LatentTable, MultiOptimizer, make_optimizer


def _setup():
    torch.manual_seed(0)
    table = LatentTable(50, 4, init_std=0.1)
    layer = torch.nn.Linear(4, 1)
    opt = make_optimizer([{"params": layer.parameters(), "lr": 1e-2}], table, lr_latent=0.1)
    return table, layer, opt


def _step(table, layer, opt, index):
    opt.zero_grad(set_to_none=True)
    loss = (layer(table(torch.as_tensor(index))) - 1.0).pow(2).sum()
    loss.backward()
    opt.step()


def test_only_the_batch_rows_move_even_with_momentum():
    table, layer, opt = _setup()
    before = table.numpy()
    _step(table, layer, opt, [3, 7, 9])
    mid = table.numpy()
    moved = np.flatnonzero(np.abs(mid - before).max(1) > 0)
    assert moved.tolist() == [3, 7, 9]
    # A second step on other rows must not keep moving rows 3, 7, 9 (plain Adam would).
    _step(table, layer, opt, [0, 1])
    after = table.numpy()
    np.testing.assert_array_equal(after[[3, 7, 9]], mid[[3, 7, 9]])
    assert np.abs(after[[0, 1]] - mid[[0, 1]]).min() > 0


def test_init_and_shapes():
    init = np.arange(12, dtype=np.float32).reshape(6, 2)
    table = LatentTable(6, 2, init=init)
    np.testing.assert_array_equal(table(torch.tensor([5, 0])).detach().numpy(), init[[5, 0]])
    assert table.weight.shape == (6, 2)
    with pytest.raises(ValueError):
        LatentTable(5, 2, init=init)


def test_state_dict_round_trip_weights_only(tmp_path):
    table, layer, opt = _setup()
    for idx in ([1, 2], [3, 4], [1, 5]):
        _step(table, layer, opt, idx)
    torch.save({"opt": opt.state_dict(), "table": table.state_dict(), "layer": layer.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)

    table2, layer2, opt2 = _setup()
    table2.load_state_dict(state["table"])
    layer2.load_state_dict(state["layer"])
    opt2.load_state_dict(state["opt"])
    assert isinstance(opt2, MultiOptimizer)
    for t, l, o in ((table, layer, opt), (table2, layer2, opt2)):
        _step(t, l, o, [1, 6])
    np.testing.assert_array_equal(table.numpy(), table2.numpy())
    for a, b in zip(layer.parameters(), layer2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
