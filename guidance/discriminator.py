"""The discriminator: a small head on the fake-score U-Net's encoder bottleneck (its mid-block output).

Its logit ``d`` estimates ``log q_t / p_t`` (teacher over student) at the noisy input, so the
density ratio is ``r = exp(d)``. Trained with the vanilla BCE GAN loss: noised teacher samples
are real, noised renders fake.

By default ``d`` is one number per view, the mean of the head's map over the bottleneck's locations.
With ``logit_map`` the map itself is the logit (as in the official Uni-Instruct code, which reads a
spatial logit off the fake U-Net's bottleneck): each location is classified on its own (a patch
discriminator) and the guidance weights each latent pixel by the ratio of the location it lies in, a
heuristic: the f-divergence's ratio is one number per image.

``timesteps`` says at which t it is trained: ``uniform`` over the whole range, or ``guidance``, the
range the estimator draws its t from at that step (the official code trains it at the generator's
noise levels); the fake score's denoising loss shares that draw (one fake-U-Net call on the renders).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DiscriminatorSpec:
    hidden_channels: int = field(default=128, metadata={"range": (1, None)})
    lr: float = field(default=1e-4, metadata={"range": (0.0, None)})
    logit_map: bool = False  # one logit per bottleneck location, not their mean
    timesteps: str = field(default="uniform", metadata={"choices": ("uniform", "guidance")})


class DiscriminatorHead(nn.Module):
    def __init__(self, in_channels: int, spec: DiscriminatorSpec):
        super().__init__()
        hidden, self.logit_map = spec.hidden_channels, spec.logit_map
        # No normalisation layer: per-sample normalisation would discard the feature magnitudes that
        # the log-ratio depends on.
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """bottleneck: [B, C, h, w] -> logit d: the map [B, 1, h, w] with ``logit_map``, else its mean [B]."""
        logit_map = self.net(bottleneck)
        return logit_map if self.logit_map else logit_map.mean(dim=(1, 2, 3))


def discriminator_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """Vanilla GAN (binary cross-entropy) loss; logits [B] or maps [B, 1, h, w] (each location classified)."""
    return F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()


def adversarial_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating term, softplus(-d) on renders."""
    return F.softplus(-fake_logit).mean()
