"""Latents for particles a trained model has not seen (the model has no encoder).

The model is frozen; each new image gets a latent z that minimises the same loss training
minimised (data term + latent prior). Gradient descent alone can stall in a poor basin of a
curved latent space, so every image first starts from the best of ``candidates`` latents: the
k-means centres of the training latents, each scored on the image (forward passes only). Then
``epochs`` passes of SparseAdam refine the latents, exactly as in training but with every
model parameter fixed. The refinement runs in :func:`engine.run_loop`, so it checkpoints,
resumes and can be cancelled like a training stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from cryospire_core.io.particles import ParticleSet
from cryospire_core.models.engine import LoopConfig, iterate_batches, run_loop
from cryospire_core.models.latents import LatentTable
from cryospire_core.progress import ProgressCallback, ProgressEvent


@dataclass
class InferConfig:
    """candidates: starting latents tried per image (k-means centres of the training latents);
    epochs: refinement passes; batch_size: images per step; lr_latent: SparseAdam rate (training's
    default); seed: of the k-means and the image order."""

    candidates: int = 16
    epochs: int = 10
    batch_size: int = 64
    lr_latent: float = 0.1
    seed: int = 0


def candidate_latents(train_latents: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(k', zdim) float32 starting points: k-means centres of the training latents (k' <= k)."""
    z = np.asarray(train_latents, dtype=np.float64)
    k = max(1, min(int(k), len(np.unique(z, axis=0))))
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit(z).cluster_centers_.astype(np.float32)


def best_candidates(model: torch.nn.Module, particles: ParticleSet, candidates: np.ndarray, batch_size: int,
                    device: torch.device, progress: ProgressCallback | None = None,
                    should_stop: Callable[[], bool] | None = None) -> np.ndarray | None:
    """(N, zdim) for every image the candidate with the lowest squared error (None if stopped)."""
    cand = torch.as_tensor(candidates, device=device)
    best = np.empty((len(particles), cand.shape[1]), dtype=np.float32)
    order = np.arange(len(particles))
    done = 0
    with torch.no_grad():
        for batch in iterate_batches(particles, order, batch_size, device):
            if should_stop is not None and should_stop():
                return None
            err = torch.stack([(model.render_images(batch, c.expand(len(batch.index), -1)) - batch.images)
                               .pow(2).mean((1, 2)) for c in cand], 1)  # (B, candidates)
            best[batch.index.cpu().numpy()] = candidates[err.argmin(1).cpu().numpy()]
            done += len(batch.index)
            if progress is not None:
                progress(ProgressEvent("infer: starting latents", done, len(particles)))
    return best


def infer_latents(model: torch.nn.Module, particles: ParticleSet, cfg: InferConfig, checkpoint: Path,
                  device: torch.device, progress: ProgressCallback | None = None,
                  should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray | None, str]:
    """Optimise latents of ``particles`` under the frozen ``model`` (a trained stage-1 or stage-2
    model, on ``device``). Returns ((N, zdim) float32 latents, ``finished``) or (None,
    ``cancelled``); ``checkpoint`` lets a cancelled or killed inference resume. The model's own
    latent table is replaced by the new particles'."""
    for p in model.parameters():
        p.requires_grad_(False)
    checkpoint = Path(checkpoint)
    train_latents = model.latents.numpy()
    start = np.zeros((len(particles), train_latents.shape[1]), np.float32)
    if not checkpoint.exists():  # a resumed run restores its latents from the checkpoint
        start = best_candidates(model, particles, candidate_latents(train_latents, cfg.candidates, cfg.seed),
                                cfg.batch_size, device, progress, should_stop)
        if start is None:
            return None, "cancelled"
    model.latents = LatentTable(len(particles), start.shape[1], init=start).to(device)
    optimizer = torch.optim.SparseAdam([model.latents.weight], lr=cfg.lr_latent)
    loop = LoopConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
    result = run_loop(model, optimizer, particles, loop, checkpoint, "infer: refining latents", device, progress,
                      should_stop)
    if result.status != "finished":
        return None, result.status
    return model.latents.numpy(), "finished"
