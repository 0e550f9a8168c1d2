"""An occupancy grid over the field's box, for empty-space skipping (nerfacc's update rule, in PyTorch).

Each cell keeps an exponential moving maximum of the density seen at random points inside it;
cells above ``min(threshold, mean)`` are occupied, and so are their neighbours: a cell that one
random point per update saw as empty may still hold a sliver of surface next to an occupied one.
Samples in empty cells are never evaluated.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class OccupancySpec:
    enabled: bool = True
    resolution: int = field(default=32, metadata={"range": (2, 512)})
    update_every: int = field(default=16, metadata={"range": (1, None)})
    decay: float = field(default=0.95, metadata={"range": (0.0, 1.0)})
    threshold: float = field(default=0.01, metadata={"range": (0.0, None)})


class OccupancyGrid(nn.Module):
    def __init__(self, spec: OccupancySpec, radius: float):
        super().__init__()
        self.spec, self.radius = spec, radius
        shape = (spec.resolution,) * 3
        self.register_buffer("density", torch.full(shape, float("inf")))  # unseen cells count as occupied
        self.register_buffer("occupied", torch.ones(shape, dtype=torch.bool))

    def cell_indices(self, points: torch.Tensor) -> torch.Tensor:
        """points: [..., 3] in the box -> [..., 3] integer cell coordinates."""
        unit = (points / (2 * self.radius) + 0.5).clamp(0.0, 1.0 - 1e-6)
        return (unit * self.spec.resolution).long()

    def is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """points: [..., 3] -> bool [...]."""
        cells = self.cell_indices(points)
        return self.occupied[cells[..., 0], cells[..., 1], cells[..., 2]]

    @torch.no_grad()
    def update(self, density_fn: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator) -> None:
        """Evaluates the density at one random point in every cell and refreshes the occupancy."""
        resolution = self.spec.resolution
        axis = torch.arange(resolution, device=self.density.device)
        cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        jitter = torch.rand(cells.shape, generator=generator, device=generator.device).to(self.density.device)
        points = ((cells + jitter) / resolution - 0.5) * (2 * self.radius)
        seen = density_fn(points).reshape(self.density.shape)
        self.density = torch.where(torch.isinf(self.density), seen, torch.maximum(self.density * self.spec.decay, seen))
        self.occupied = self.occupied_cells(self.spec.threshold)

    def occupied_cells(self, threshold: float) -> torch.Tensor:
        """bool [R, R, R]: the cells whose density is above ``min(threshold, mean)``, and their neighbours."""
        dense_enough = self.density > torch.clamp(self.density.mean(), max=threshold)
        return F.max_pool3d(dense_enough[None, None].float(), 3, stride=1, padding=1)[0, 0].bool()

    @contextmanager
    def thresholded(self, threshold: float) -> Iterator[None]:
        """Within the block, cells are occupied by ``threshold`` instead of the spec's (the same densities)."""
        kept = self.occupied
        self.occupied = self.occupied_cells(threshold)
        try:
            yield
        finally:
            self.occupied = kept
