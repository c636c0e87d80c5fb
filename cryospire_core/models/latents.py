"""Per-image latent codes optimised directly (auto-decoder), and the optimiser that trains them.

Every image n owns a code z_n; there is no encoder. Only the codes of the images in a batch
receive a gradient, so they are stored in a sparse embedding and stepped by ``SparseAdam``:
plain Adam would keep moving every other row through its momentum although those images were
not seen. :class:`MultiOptimizer` steps the dense parameters with Adam and the codes with
SparseAdam behind the one-optimizer interface ``engine.run_loop`` expects (zero_grad, step,
state_dict, load_state_dict; the states hold only tensors, numbers, lists and dicts so
checkpoints load with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init


class LatentTable(nn.Module):
    """n codes of dimension zdim: ``forward(index (B,) int64) -> (B, zdim)``.

    init_std: standard deviation of the random initial codes, drawn from ``generator`` (None:
    torch's global RNG); init: optional (n, zdim) array of starting codes (e.g. stage 1's latents
    for stage 2), which replaces the random ones (nothing is drawn).
    """

    def __init__(self, n: int, zdim: int, init_std: float = 0.1, init: np.ndarray | torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.embedding = skip_init(nn.Embedding, int(n), int(zdim), sparse=True)
        with torch.no_grad():
            if init is None:
                self.embedding.weight.normal_(0.0, init_std, generator=generator)
            else:
                init = torch.as_tensor(np.asarray(init), dtype=torch.float32)
                if tuple(init.shape) != (n, zdim):
                    raise ValueError(f"LatentTable: init must have shape {(n, zdim)}, got {tuple(init.shape)}")
                self.embedding.weight.copy_(init)

    @property
    def weight(self) -> torch.Tensor:
        """(n, zdim) all codes (the parameter itself)."""
        return self.embedding.weight

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.embedding(index)

    def numpy(self) -> np.ndarray:
        """(n, zdim) float32 copy of the codes."""
        return self.embedding.weight.detach().cpu().numpy().copy()


class MultiOptimizer:
    """Adam for dense parameters and SparseAdam for latent codes, seen as one optimiser."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer) -> None:
        self.dense, self.sparse = dense, sparse

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.dense, self.sparse

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def make_optimizer(dense_param_groups: Iterable[dict], latent_table: LatentTable, lr_latent: float) -> MultiOptimizer:
    """Adam over ``dense_param_groups`` (dicts with ``params`` and ``lr``, as torch.optim takes)
    and SparseAdam at ``lr_latent`` over the codes of ``latent_table``."""
    return MultiOptimizer(torch.optim.Adam(list(dense_param_groups)),
                          torch.optim.SparseAdam([latent_table.weight], lr=lr_latent))
