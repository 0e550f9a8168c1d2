"""What rays see where the field is empty: a solid colour, a random colour per view, or a small
network of the ray direction (a neural environment map, trained with the field)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nerf.field import mlp


@dataclass
class BackgroundSpec:
    kind: str = field(default="solid", metadata={"choices": ("solid", "random", "neural")})
    color: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # solid, and random/neural in evaluation
    random_probability: float = field(default=0.5, metadata={"range": (0.0, 1.0)})  # neural: a random colour instead
    frequencies: int = field(default=4, metadata={"range": (0, 16)})  # neural: positional encoding of directions

    def __post_init__(self):
        if len(self.color) != 3:
            raise ValueError(f"background color needs 3 values (r, g, b), got {list(self.color)}")


class Background(nn.Module):
    def __init__(self, spec: BackgroundSpec):
        super().__init__()
        self.spec = spec
        self.network = mlp(3 + 6 * spec.frequencies, 3, 32, 2) if spec.kind == "neural" else None

    def forward(self, directions: torch.Tensor, views: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """directions: [views * rays_per_view, 3] unit -> colours [same, 3]. A generator marks training,
        where the random kinds draw one colour per view."""
        if self.spec.kind == "neural":
            colors = torch.sigmoid(self.network(self._encode(directions)))
        else:
            colors = torch.tensor(self.spec.color, device=directions.device, dtype=directions.dtype).expand_as(directions)
        if generator is None or self.spec.kind == "solid":
            return colors
        probability = 1.0 if self.spec.kind == "random" else self.spec.random_probability
        replace = torch.rand(views, 1, generator=generator, device=generator.device) < probability
        random_colors = torch.rand(views, 3, generator=generator, device=generator.device)
        rays_per_view = len(directions) // views
        return torch.where(replace.repeat_interleave(rays_per_view, dim=0),
                           random_colors.repeat_interleave(rays_per_view, dim=0), colors)

    def _encode(self, directions: torch.Tensor) -> torch.Tensor:
        bands = 2.0 ** torch.arange(self.spec.frequencies, device=directions.device) * torch.pi
        angles = directions[..., None] * bands  # [N, 3, F]
        return torch.cat([directions, torch.sin(angles).flatten(1), torch.cos(angles).flatten(1)], dim=-1)
