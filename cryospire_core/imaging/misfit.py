"""The data term of every stage: how far rendered images are from the observed ones.

The residual r = predicted - observed (B, D, D) is seen through the soft window W
(:func:`~cryospire_core.imaging.window.soft_window`), so the corners, where neighbouring
particles, carbon and ice edges live, count little or nothing; then, with noise weighting, each
frequency k of the windowed residual is weighted by w_g(k) = 1 / PSD_g(|k|) of the image's
optics group g (:func:`~cryospire_core.imaging.noise.whitening_weights`: mean 1 over the
spectrum), which whitens coloured noise. Per image:

    e = sum_k w(k) |FFT(W r)(k)|^2 / D^4 / mean(W^2)

(the mean over pixels of (W r)^2, by Parseval, when every w is 1). Dividing by mean(W^2) keeps
the scale of the plain mean squared error: pure noise of variance v gives v whether or not the
images are windowed, so the stages' ``image_var`` and prior weights keep their meaning. The loss
is the mean of e over the batch; without window and weights it is exactly
``(predicted - observed).pow(2).mean()``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cryospire_core.imaging.noise import rfft_multiplicity


class ImageMisfit(nn.Module):
    """The data term (see the module docstring).

    window: (D, D) or None (no window); weights: (G, D, D // 2 + 1) half-spectrum weights of G
    optics groups, or None (no noise weighting); groups: the optics group number (as the
    particles number them) of each row of ``weights``. The arrays are non-persistent buffers:
    they move with the model and stay out of its state dict and checkpoints (the run's config
    and RUN/noise_psd.npz rebuild them).
    """

    def __init__(self, window: np.ndarray | None = None, weights: np.ndarray | None = None,
                 groups: np.ndarray | None = None) -> None:
        super().__init__()
        self.register_buffer("window", None if window is None else torch.as_tensor(window, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("weights", None if weights is None else torch.as_tensor(weights, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("multiplicity", None, persistent=False)
        self.register_buffer("rows", None, persistent=False)
        self.window_power = 1.0 if window is None else float(np.mean(np.square(window, dtype=np.float64)))
        if weights is not None:
            groups = np.arange(1, len(weights) + 1) if groups is None else np.asarray(groups, dtype=np.int64)
            if len(groups) != len(weights) or groups.min() < 0:
                raise ValueError(f"one optics group number >= 0 per row of weights, got {groups}")
            rows = torch.full((int(groups.max()) + 1,), -1, dtype=torch.int64)
            rows[torch.as_tensor(groups)] = torch.arange(len(groups))
            self.rows = rows
            self.multiplicity = rfft_multiplicity(self.weights.shape[-2])

    @property
    def box(self) -> int | None:
        """The image size the window or weights were made for (None: any)."""
        for t in (self.window, self.weights):
            if t is not None:
                return int(t.shape[-2])
        return None

    def forward(self, predicted: torch.Tensor, observed: torch.Tensor,
                optics_group: torch.Tensor | None = None) -> torch.Tensor:
        """The mean data term (a scalar) of ``predicted`` and ``observed`` (B, D, D) images;
        optics_group (B,) int64, needed with noise weights of several groups."""
        r = predicted - observed
        if self.window is None and self.weights is None:
            return r.pow(2).mean()
        if self.box != r.shape[-1]:
            raise ValueError(f"the data term was made for {self.box} px images, got {r.shape[-1]} px")
        if self.window is not None:
            r = r * self.window
        if self.weights is None:
            return r.pow(2).mean() / self.window_power
        if len(self.weights) == 1:
            w = self.weights
        elif optics_group is None:
            raise ValueError("noise weights of several optics groups need each image's optics group")
        else:
            row = self.rows[optics_group.clamp(0, len(self.rows) - 1)]
            if bool((row < 0).any()) or bool((optics_group >= len(self.rows)).any()):
                raise ValueError("an image's optics group has no measured noise spectrum")
            w = self.weights[row]
        box = r.shape[-1]
        power = torch.fft.rfft2(r).abs().square()
        return (power * (w * self.multiplicity)).sum((1, 2)).mean() / (box**4 * self.window_power)
