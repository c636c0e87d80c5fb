"""Data-parallel training over the processes ``torchrun`` starts (one per GPU, or several CPUs).

Every process (rank) holds a full replica of the model. The global batch order is a function of
the seed alone (:func:`engine.epoch_order`); particle i belongs to rank ``i * K // N`` (K ranks,
N particles: contiguous blocks, so each rank reads its own part of the stacks), and each rank
trains on the particles of each global batch that it owns. A rank's loss is weighted by its
share of the batch, ``b_r / B``, and the dense gradients are summed over the ranks, so their sum
is exactly the gradient of the one-process loss on the whole batch (every model's loss is a
mean of per-image terms plus terms that do not depend on the images). Adam then makes the same
step on every rank, and a K-process run follows the one-process trajectory up to the order of
floating-point sums.

The per-image latents are sharded by the same ownership: a rank steps only its own particles'
codes (their sparse gradients are never communicated), and :meth:`Distributed.gather_latents`
assembles the whole table (and its SparseAdam moments) on every rank before a checkpoint or an
output is written. Rank 0 alone writes files; the others wait at a barrier.

The backend is nccl on CUDA and gloo on CPUs. Multi-node runs need the run folder and the
particles on a file system every node sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from cryospire_core.models.device import resolve_device
from cryospire_core.models.latents import LatentTable

#: Environment variables torchrun (and torch.distributed.launch) set in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run: rank in [0, world_size), local_rank on its
    node (the GPU it uses). The default is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    # -- data -------------------------------------------------------------------------------

    def owners(self, index: np.ndarray, n: int) -> np.ndarray:
        """Rank owning each particle of ``index`` (any shape) among n particles."""
        return (np.asarray(index, dtype=np.int64) * self.world_size) // max(n, 1)

    def share(self, chunk: np.ndarray, n: int) -> np.ndarray:
        """This rank's particles of a global batch ``chunk`` (indices among n), in batch order."""
        if not self.active:
            return chunk
        return chunk[self.owners(chunk, n) == self.rank]

    # -- parameters -------------------------------------------------------------------------

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (replicas start identical even if a
        seeding step was not bit-reproducible on some device)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)

    def all_reduce_step(self, model: torch.nn.Module, loss: torch.Tensor,
                        flags: tuple[bool, ...] = ()) -> tuple[float, tuple[bool, ...]]:
        """Sum the dense gradients of ``model`` and ``loss`` (this rank's weighted loss, a 0-d
        tensor) over the ranks in one all-reduce; OR each flag (e.g. stop, save) over the ranks.

        A dense parameter gets a gradient only if some rank produced one (as Adam skips
        parameters without one). Latent tables keep their local sparse gradients; a rank whose
        share of the batch was empty gets an empty one, so SparseAdam counts the step on every
        rank as the one-process run does. Returns (global loss, flags)."""
        latent = {id(m.weight) for m in model.modules() if isinstance(m, LatentTable)}
        dense = [p for p in model.parameters() if p.requires_grad and id(p) not in latent]
        device = loss.device
        grads = [torch.zeros(p.numel(), device=device) if p.grad is None else p.grad.detach().reshape(-1).float()
                 for p in dense]
        has = [float(p.grad is not None) for p in dense]
        tail = torch.tensor(has + [float(f) for f in flags], device=device)
        flat = torch.cat(grads + [tail, loss.detach().reshape(1).float()])
        if self.active:
            dist.all_reduce(flat)
        summed = torch.split(flat, [g.numel() for g in grads] + [len(has), len(flags), 1])
        for p, g, got in zip(dense, summed, summed[len(dense)].tolist()):
            p.grad = g.view_as(p).to(p.dtype) if got > 0 else None
        for m in model.modules():
            if isinstance(m, LatentTable) and m.weight.grad is None:
                w = m.weight
                m.weight.grad = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long, device=w.device),
                                                        torch.zeros(0, w.shape[1], device=w.device, dtype=w.dtype),
                                                        tuple(w.shape))
        return float(summed[-1]), tuple(v > 0 for v in summed[-2].tolist())

    def sync_scaler(self, scaler: torch.amp.GradScaler, device: torch.device) -> None:
        """Give every rank the smallest fp16 loss scale: the ranks' latent gradients differ, so
        their overflow checks (and hence their scales) can, while the dense gradients they sum
        must be scaled alike."""
        if self.active and scaler.is_enabled():
            s = torch.tensor([scaler.get_scale()], device=device)
            dist.all_reduce(s, op=dist.ReduceOp.MIN)
            scaler.update(new_scale=float(s))

    def gather_latents(self, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
        """Assemble every latent table of ``model`` (and the matching rows of its optimiser
        states) from the ranks owning the rows, on every rank."""
        if not self.active:
            return
        for m in model.modules():
            if not isinstance(m, LatentTable):
                continue
            w = m.weight
            mine = torch.as_tensor(self.owners(np.arange(len(w)), len(w)) == self.rank, device=w.device)[:, None]
            tensors = [w.data]
            for opt in optimizers:
                state = opt.state.get(w, {})
                tensors += [v for v in state.values() if torch.is_tensor(v) and v.shape == w.shape]
            with torch.no_grad():
                for t in tensors:
                    t.mul_(mine.to(t.dtype))
                    dist.all_reduce(t)


def from_environment(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """The run this process belongs to, and its device.

    Without torchrun's variables (or with WORLD_SIZE 1): the single-process run on
    ``resolve_device(device_name)``. Under torchrun: joins the process group (nccl on CUDA, gloo
    on CPUs; torchrun's MASTER_ADDR/MASTER_PORT rendezvous) and uses GPU ``LOCAL_RANK`` when the
    device is CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not all(v in os.environ for v in TORCHRUN_VARIABLES):
        return Distributed(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Distributed(rank, world, local), device


def shutdown(ctx: Distributed) -> None:
    """Leave the process group (after the last collective call)."""
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
