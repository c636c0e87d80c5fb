"""The training loop every stage shares.

It owns what is the same for the consensus and the heterogeneous models: batches read ahead
from memory-mapped stacks by a background thread (a bounded queue: memory does not grow with the
stack), seeded shuffling, the device, mixed precision (:mod:`precision`), data-parallel training
over several processes (:mod:`distributed`), progress events, cancellation between steps, atomic
checkpoints (every epoch and every few minutes) and resuming a killed run from its last
checkpoint at the exact step it reached.
"""

from __future__ import annotations

import math
import pickle
import queue
import re
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cryospire_core.errors import (
    InputError,
    ResultError,
    is_out_of_memory,
    out_of_memory,
    require_finite,
)
from cryospire_core.imaging.precision import autocast, grad_scaler
from cryospire_core.io.atomic import atomic_path
from cryospire_core.io.particles import ParticleSet
from cryospire_core.models.distributed import Distributed
from cryospire_core.progress import ProgressCallback, ProgressEvent

CHECKPOINT_VERSION = 1


@dataclass
class Batch:
    """One batch on the training device.

    index: (B,) int64 particle indices; images: (B, D, D) float32 (dark-particle convention);
    rotations: (B, 3, 3) float32 pose matrices A; shifts: (B, 2) float32 Å (RELION origins);
    ctf: (B, 9) float32 rows of ``ctf.CTF_COLUMNS``; optics_group: (B,) int64 optics group
    numbers as the particles hold them (the data term's noise weights are per group), or None
    (a batch made without particles: one group).
    """

    index: torch.Tensor
    images: torch.Tensor
    rotations: torch.Tensor
    shifts: torch.Tensor
    ctf: torch.Tensor
    optics_group: torch.Tensor | None = None


def read_batch(particles: ParticleSet, idx: np.ndarray, device: torch.device) -> Batch:
    """Read the particles ``idx`` (in that order) into a :class:`Batch` on ``device``."""
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)  # noqa: E731
    return Batch(
        index=torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(device),
        images=torch.from_numpy(particles.images(idx)).to(device),
        rotations=as_t(particles.rotations[idx]),
        shifts=as_t(particles.shifts[idx]),
        ctf=as_t(particles.ctf[idx]),
        optics_group=torch.from_numpy(np.asarray(particles.optics_group[idx], dtype=np.int64)).to(device),
    )


def iterate_batches(
    particles: ParticleSet, order: np.ndarray, batch_size: int, device: torch.device, prefetch: int = 2
) -> Iterator[Batch]:
    """Yield batches of ``order`` while a thread reads the next ``prefetch`` batches from disk."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return iterate_chunks(particles, chunks, device, prefetch)


def iterate_chunks(
    particles: ParticleSet, chunks: list[np.ndarray], device: torch.device, prefetch: int = 2
) -> Iterator[Batch]:
    """Yield one batch per index array of ``chunks`` (possibly empty) while a thread reads the
    next ``prefetch`` batches from disk into a bounded queue.

    Reading a memory-mapped stack releases the GIL for the copy, so the disk and the
    computation overlap even on a 2-core machine; at most ``prefetch + 2`` batches are in memory.
    """
    if prefetch <= 0:
        for c in chunks:
            yield read_batch(particles, c, device)
        return
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def reader() -> None:
        try:
            for c in chunks:
                if stop.is_set():
                    return
                q.put(read_batch(particles, c, torch.device("cpu")))
            q.put(None)
        except BaseException as exc:  # surfaced in the training thread
            q.put(exc)

    thread = threading.Thread(target=reader, name="cryospire-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            if device.type != "cpu":
                item = Batch(*(t.to(device, non_blocking=True) for t in (item.index, item.images, item.rotations,
                                                                          item.shifts, item.ctf, item.optics_group)))
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class Trainable(Protocol):
    """A model the loop can train: an ``nn.Module`` with a per-batch loss."""

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> object: ...


@dataclass
class LoopConfig:
    """How long and how a stage trains. epochs, batch_size in images (the global batch of all
    processes together), seed for shuffling, checkpoint_minutes between time-based checkpoints,
    prefetch in batches, precision a resolved :mod:`precision` name (fp32, bf16 or fp16)."""

    epochs: int
    batch_size: int = 64
    seed: int = 0
    checkpoint_minutes: float = 5.0
    prefetch: int = 2
    precision: str = "fp32"

    @classmethod
    def for_stage(cls, stage_cfg, checkpoint_minutes: float = 5.0, precision: str = "fp32") -> LoopConfig:
        """The loop of a stage config holding ``epochs``, ``batch_size`` and ``seed``."""
        return cls(epochs=stage_cfg.epochs, batch_size=stage_cfg.batch_size, seed=stage_cfg.seed,
                   checkpoint_minutes=checkpoint_minutes, precision=precision)


@dataclass
class LoopResult:
    """status: ``finished`` or ``cancelled``; epoch/step: where the loop stopped;
    history: mean loss of each finished epoch."""

    status: str
    epoch: int
    step: int
    history: list[float] = field(default_factory=list)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled particle order of one epoch: a pure function of (seed, epoch) so a resumed
    run sees exactly the batches the killed one would have seen."""
    return np.random.default_rng([seed, epoch]).permutation(n)


DIVERGED = "lower the learning rate, or check the particles for NaN/Inf pixels"
"""What to change when a stage's loss or weights become NaN or infinite."""


def save_checkpoint(path: Path, state: dict, stage: str = "the model") -> None:
    """Atomically write ``state``; a full disk raises ResourceError and keeps the old checkpoint.
    A state holding NaN or infinite numbers is refused (ResultError: ``stage`` diverged) and the
    old file kept."""
    require_finite(state, path, "weights", f"{stage} diverged: {DIVERGED}")
    # A Python file object makes a failed write surface as OSError(ENOSPC); torch.save given a
    # file name writes from C++ and reports only "unexpected pos".
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def read_weights(path: Path, field: str, expected: str):
    """``torch.load(path, weights_only=True)`` on the CPU: nothing in the file can run code. A
    file holding anything else, a corrupt or unreadable one raises InputError(path, field, expected)."""
    if not Path(path).is_file():
        raise InputError(path, field, expected, "no such file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 78": garbage, refused below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    # the weights-only unpickler meets damaged bytes with any of these (IndexError, KeyError and
    # struct.error included: about one random file in ten)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, IndexError, KeyError, TypeError,
            AttributeError, OverflowError, struct.error) as exc:
        raise InputError(path, field, expected, _unreadable(exc)) from exc


def _unreadable(exc: BaseException) -> str:
    """Why torch.load refused a file, in our words: torch's own message advises loading an
    unsafe file with ``weights_only=False``, which must never reach a user as advice."""
    text = " ".join(str(exc).split())
    if m := re.search(r"GLOBAL ([\w.]+)", text):
        return f"a pickled {m[1].rstrip('.')} (refused unread: a checkpoint holds only tensors, numbers and strings)"
    if "Unsupported operand" in text or "load key" in text:
        return "a damaged or truncated file (not one that torch.save wrote)"
    if "weights_only" in text.lower() or "weights only" in text.lower():
        return "objects other than tensors, numbers and strings (refused unread)"
    return f"a damaged or truncated file ({type(exc).__name__}: {text.split('. ')[0][:200] or 'no detail'})"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded on the CPU.

    weights_only: a checkpoint from elsewhere cannot run code when opened; one holding anything
    but tensors, numbers, strings and containers, a corrupt file, or one from a newer cryospire
    raises InputError naming the file.
    """
    state = read_weights(path, "checkpoint", "a cryospire checkpoint (tensors, numbers and strings only)")
    if not isinstance(state, dict) or not isinstance(state.get("version"), int):
        raise InputError(path, "checkpoint", "a cryospire checkpoint (a dict with a version)", type(state).__name__)
    if state["version"] > CHECKPOINT_VERSION:
        raise InputError(path, "checkpoint version", f"at most {CHECKPOINT_VERSION} (written by a newer cryospire)",
                         state["version"])
    return state


def load_loop_state(path: Path) -> dict:
    """A checkpoint :func:`run_loop` wrote (:func:`load_checkpoint`), with every field the loop
    resumes from checked: model and optimizer state dicts, epoch and step (whole numbers >= 0),
    the loss history and the running loss sum."""
    state = load_checkpoint(path)
    for key, kinds, what in _CHECKPOINT_FIELDS:
        value = state.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool) or (what.startswith("a whole") and value < 0):
            raise InputError(path, key, what, "missing" if value is None else type(value).__name__)
    return state


_CHECKPOINT_FIELDS = (("model", dict, "the model's state dict"), ("optimizer", dict, "the optimizer's state dict"),
                      ("epoch", int, "a whole number of finished epochs"), ("step", int, "a whole number of steps"),
                      ("history", list, "the loss of each finished epoch"), ("run_sum", (int, float), "a number"))


def run_loop(
    model: Trainable,
    optimizer: torch.optim.Optimizer,
    particles: ParticleSet,
    cfg: LoopConfig,
    checkpoint: Path,
    stage: str,
    device: torch.device,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    after_step: Callable[[int, int], None] | None = None,
    dist: Distributed = Distributed(),
) -> LoopResult:
    """Train ``model`` for ``cfg.epochs`` epochs over ``particles``, resuming from ``checkpoint``
    when it exists (the model and optimizer states, epoch, step and loss history are restored).

    should_stop is polled between steps; when it answers True a checkpoint is written and the
    loop returns with status ``cancelled``. after_step(epoch, step) runs after every step (e.g.
    to clamp parameters). Running out of memory in a step raises ResourceError (saying to lower
    the batch size) and leaves the last checkpoint as it was.

    dist: this process's place in a data-parallel run (see :mod:`distributed`): every rank calls
    run_loop with the same arguments, trains on its share of each global batch, and only rank 0
    writes the checkpoint; when the loop returns, every rank's model holds all the latents.
    """
    checkpoint = Path(checkpoint)
    n = len(particles)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    epoch, step, history, run_sum = 0, 0, [], 0.0
    if checkpoint.exists():
        state = load_loop_state(checkpoint)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:  # another model's or optimizer's state
            raise InputError(checkpoint, "model and optimizer", f"the state of this {stage} model (as the run's "
                             "config and seed describe it)", " ".join(str(exc).split())[:300]) from exc
        epoch, step, history, run_sum = state["epoch"], state["step"], list(state["history"]), state["run_sum"]
    dist.broadcast_model(model)
    scaler = grad_scaler(device, cfg.precision)
    optimizers = list(getattr(optimizer, "optimizers", (optimizer,)))

    def snapshot() -> None:
        dist.gather_latents(model, optimizers)
        if not dist.is_main:
            return
        save_checkpoint(
            checkpoint,
            stage=stage,
            state={
                "version": CHECKPOINT_VERSION,
                "stage": stage,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step": step,
                "history": history,
                "run_sum": run_sum,
            },
        )

    def optimizer_step() -> None:
        if not scaler.is_enabled():
            optimizer.step()
            return
        for opt in optimizers:
            scaler.step(opt)
        scaler.update()
        dist.sync_scaler(scaler, device)

    total_steps = cfg.epochs * steps_per_epoch
    start_done = epoch * steps_per_epoch + step
    t0 = time.monotonic()
    last_save = t0
    while epoch < cfg.epochs:
        order = epoch_order(n, cfg.seed, epoch)[step * cfg.batch_size :]
        chunks = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        local = [dist.share(c, n) for c in chunks]
        for chunk, batch in zip(chunks, iterate_chunks(particles, local, device, cfg.prefetch)):
            stop = should_stop is not None and should_stop()
            due = dist.is_main and time.monotonic() - last_save > 60.0 * cfg.checkpoint_minutes
            if stop and not dist.active:
                snapshot()
                return LoopResult("cancelled", epoch, step, history)
            optimizer.zero_grad(set_to_none=True)
            try:
                if len(batch.index):
                    with autocast(device, cfg.precision):
                        loss, _ = model.loss(batch)
                    if dist.active:  # this rank's share of the global batch's mean loss
                        loss = loss * (len(batch.index) / len(chunk))
                    scaler.scale(loss).backward()
                else:
                    loss = torch.zeros((), device=device)
                if dist.active:
                    value, (stop, due) = dist.all_reduce_step(model, loss, (stop, due))
                    if stop:
                        snapshot()
                        return LoopResult("cancelled", epoch, step, history)
                else:
                    value = float(loss.detach())
                if not math.isfinite(value):  # nothing of this step is saved: the last checkpoint stays sound
                    raise ResultError(checkpoint, f"{stage} loss", "finite values",
                                      f"{value} at epoch {epoch + 1}, step {step + 1}: the stage diverged: {DIVERGED}")
                optimizer_step()
            except (RuntimeError, MemoryError) as exc:
                # The last checkpoint stays as it was: nothing from this step is saved.
                if is_out_of_memory(exc):
                    raise out_of_memory(device, cfg.batch_size) from exc
                raise
            step += 1
            run_sum += value
            if after_step is not None:
                after_step(epoch, step)
            if progress is not None:
                done = epoch * steps_per_epoch + step
                elapsed = time.monotonic() - t0
                rate = (done - start_done) / max(elapsed, 1e-9)
                progress(ProgressEvent(stage, done, total_steps, epoch + 1, cfg.epochs, value,
                                       elapsed, (total_steps - done) / rate if rate > 0 else None))
            if due:
                snapshot()
                last_save = time.monotonic()
        history.append(run_sum / steps_per_epoch)
        epoch, step, run_sum = epoch + 1, 0, 0.0
        snapshot()
        last_save = time.monotonic()
    return LoopResult("finished", epoch, step, history)
