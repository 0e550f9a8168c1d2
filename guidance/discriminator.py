"""The discriminator: a small head on the fake-score U-Net's encoder bottleneck (its mid-block output).

Its logit ``d`` estimates ``log q_t / p_t`` (teacher over student) at the noisy input, so the
density ratio is ``r = exp(d)``. Trained with the vanilla BCE GAN loss: noised teacher samples
are real, noised renders fake.
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


class DiscriminatorHead(nn.Module):
    def __init__(self, in_channels: int, spec: DiscriminatorSpec):
        super().__init__()
        hidden = spec.hidden_channels
        # No normalisation layer: per-sample normalisation would discard the feature magnitudes that
        # the log-ratio depends on.
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """bottleneck: [B, C, h, w] -> logit d [B], the mean of the logit map."""
        return self.net(bottleneck).mean(dim=(1, 2, 3))


def discriminator_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """Vanilla GAN (binary cross-entropy) loss; logits [B]."""
    return F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()


def adversarial_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating term, softplus(-d) on renders."""
    return F.softplus(-fake_logit).mean()
