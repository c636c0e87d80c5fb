"""`infer`: latents for particles the model has not seen, with the model frozen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryospire_core.models.discovery import (
    DiscoveryConfig,
    PartDiscoveryModel,
    image_variance,
)
from cryospire_core.models.engine import LoopConfig, iterate_batches, run_loop
from cryospire_core.models.infer import (
    InferConfig,
    best_candidates,
    candidate_latents,
    infer_latents,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def held_out(hinge_two_states, tmp_path_factory):
    """A stage-1 model trained on 800 images of the two hinge states; the other 200 held out."""
    ps, labels, seed = hinge_two_states
    train, test = np.arange(800), np.arange(800, len(ps))
    cfg = DiscoveryConfig(image_var=image_variance(ps), epochs=6)
    model = PartDiscoveryModel.from_consensus(seed, len(train), cfg)
    run_loop(model, model.make_optimizer(), ps.subset(train), LoopConfig(epochs=cfg.epochs),
             tmp_path_factory.mktemp("infer") / "ck.pt", "discovery", CPU)
    return model, ps.subset(test), labels[train], labels[test]


def _state_accuracy(z_train, labels_train, z, labels) -> float:
    """Accuracy of the state of the nearest training-state mean latent."""
    means = np.stack([z_train[labels_train == k].mean(0) for k in (0, 1)])
    guess = np.argmin(((z[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    return float(np.mean(guess == labels))


def test_inferred_latents_find_the_state_of_unseen_images(held_out, tmp_path):
    model, test_ps, train_labels, test_labels = held_out
    z_train = model.latents.numpy()
    assert _state_accuracy(z_train, train_labels, z_train, train_labels) > 0.9
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("latents")}
    z, status = infer_latents(model, test_ps, InferConfig(epochs=3), tmp_path / "ck.pt", CPU)
    assert status == "finished" and z.shape == (len(test_ps), z_train.shape[1]) and np.isfinite(z).all()
    assert _state_accuracy(z_train, train_labels, z, test_labels) > 0.9
    for k, v in model.state_dict().items():  # the model itself did not move
        if k in frozen:
            torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)
    # Refinement lowers the unseen images' error below that of their best starting candidates.
    start = best_candidates(model, test_ps, candidate_latents(z_train, 16), 64, CPU)
    assert _mean_error(model, test_ps, z) < _mean_error(model, test_ps, start)


def _mean_error(model, ps, z) -> float:
    with torch.no_grad():
        return float(np.mean([(model.render_images(b, torch.as_tensor(z[b.index.numpy()])) - b.images).pow(2).mean()
                              for b in iterate_batches(ps, np.arange(len(ps)), 64, CPU)]))


def test_cancelled_inference_resumes(held_out, tmp_path):
    model, test_ps, *_ = held_out
    refining = []

    def progress(event) -> None:
        if event.stage.startswith("infer: refining") and event.done > 0:
            refining.append(event.done)

    z, status = infer_latents(model, test_ps, InferConfig(epochs=2), tmp_path / "ck.pt", CPU, progress=progress,
                              should_stop=lambda: bool(refining))
    assert z is None and status == "cancelled" and (tmp_path / "ck.pt").exists()
    z, status = infer_latents(model, test_ps, InferConfig(epochs=2), tmp_path / "ck.pt", CPU)
    assert status == "finished" and np.isfinite(z).all()
