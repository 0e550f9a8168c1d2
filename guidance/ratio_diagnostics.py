"""What the density ratio told the f-divergence weight during a run, summed up between two metrics records;
and the running means of h per band of t that may normalise it.

At each step with a discriminator the guidance reads, at its own noisy renders (its own t), the clamped
ratio r = exp(d), whether d or r sat at a clamp, and the weight h(r) of the configured divergence
(``RatioReading``). A ratio at its clamp carries no information (h is a constant there); ``RatioMonitor``
reports the fraction of views at either clamp and the mean and spread of h in bands of t.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class RatioReading:
    """One step's views, detached: t [B] integer timesteps, h [B] the divergence's weight h(r), and whether r
    sat at its lower or upper clamp [B] (with a ratio map: h's mean over the view, and the fraction of its
    locations at each clamp)."""

    t: torch.Tensor
    h: torch.Tensor
    at_low_clamp: torch.Tensor
    at_high_clamp: torch.Tensor


def t_bands(t: torch.Tensor, num_train_timesteps: int, bands: int) -> torch.Tensor:
    """t [B] integer timesteps -> [B] indices of the ``bands`` equal bands of [0, num_train_timesteps) they fall in."""
    return (t.long() * bands // num_train_timesteps).clamp(0, bands - 1)


def band_edges(num_train_timesteps: int, bands: int) -> list[tuple[int, int]]:
    """The [low, high) integer timesteps of each band, in order: exactly those ``t_bands`` assigns to it."""
    lows = [-(-band * num_train_timesteps // bands) for band in range(bands + 1)]  # ceil(band * n / bands)
    return list(zip(lows[:-1], lows[1:]))


class RatioMonitor:
    """Accumulates readings (on their device, no synchronisation) and sums them up at each metrics record."""

    def __init__(self, num_train_timesteps: int, bands: int = 4):
        self.num_train_timesteps, self.bands = num_train_timesteps, bands
        self.readings: list[RatioReading] = []

    def add(self, reading: RatioReading | None) -> None:
        if reading is not None:
            self.readings.append(reading)

    def summary(self) -> dict | None:
        """{"views", "at_low_clamp", "at_high_clamp", "off_clamps": fractions of the views, "h_by_t": {"lo-hi":
        {"views", "mean", "std"}} per band of t with views} of the readings since the last summary (then
        forgotten); None without any."""
        if not self.readings:
            return None
        t, h, low, high = (torch.cat([getattr(r, name) for r in self.readings]).detach().cpu().double()
                           for name in ("t", "h", "at_low_clamp", "at_high_clamp"))
        self.readings = []
        summary = {"views": len(t), "at_low_clamp": low.mean().item(), "at_high_clamp": high.mean().item(),
                   "off_clamps": 1.0 - (low + high).clamp(max=1).mean().item(), "h_by_t": {}}
        width = self.num_train_timesteps / self.bands
        band = t_bands(t, self.num_train_timesteps, self.bands)
        for index in range(self.bands):
            in_band = h[band == index]
            if len(in_band):
                name = f"{round(index * width)}-{round((index + 1) * width) - 1}"
                summary["h_by_t"][name] = {"views": len(in_band), "mean": in_band.mean().item(),
                                           "std": in_band.std(correction=0).item()}
        return summary


class RunningMeans(nn.Module):
    """A running mean of h in each of ``bands`` equal bands of t (f-distill normalises h by it): each step
    moves a band's mean toward the mean of its views' h by 1 - ``decay``; a band's first views set it."""

    def __init__(self, num_train_timesteps: int, bands: int, decay: float):
        super().__init__()
        self.num_train_timesteps, self.decay = num_train_timesteps, decay
        self.register_buffer("means", torch.ones(bands))
        self.register_buffer("seen", torch.zeros(bands, dtype=torch.bool))

    @torch.no_grad()
    def update(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Takes this step's h [B] at t [B] into the means; returns each view's band mean [B], this step's included."""
        bands = t_bands(t, self.num_train_timesteps, len(self.means)).to(self.means.device)
        h = h.detach().to(self.means)
        total = torch.zeros_like(self.means).index_add_(0, bands, h)
        count = torch.zeros_like(self.means).index_add_(0, bands, torch.ones_like(h))
        present = count > 0
        batch_mean = total / count.clamp_min(1)
        moved = torch.where(self.seen, self.decay * self.means + (1 - self.decay) * batch_mean, batch_mean)
        self.means.copy_(torch.where(present, moved, self.means))
        self.seen |= present
        return self.means[bands].clamp_min(1e-8)
