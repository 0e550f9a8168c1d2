"""The radiance field: a hash-grid encoding followed by small density and albedo MLPs."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nerf.hashgrid import HashGridEncoding, HashGridSpec
from nerf.occupancy import OccupancyGrid, OccupancySpec

DENSITY_ACTIVATIONS = {"softplus": F.softplus, "exp": torch.exp}


@dataclass
class FieldSpec:
    """The field's size and initial shape. ``radius`` is the half-side of its bounding box."""

    radius: float = field(default=1.0, metadata={"range": (0.01, None)})
    grid: HashGridSpec = field(default_factory=HashGridSpec)
    hidden_dim: int = field(default=64, metadata={"range": (1, None)})
    hidden_layers: int = field(default=1, metadata={"range": (0, None)})
    density_activation: str = field(default="softplus", metadata={"choices": tuple(DENSITY_ACTIVATIONS)})
    blob_density: float = 10.0
    blob_radius: float = field(default=0.5, metadata={"range": (0.01, None)})
    occupancy: OccupancySpec = field(default_factory=OccupancySpec)


def mlp(in_dim: int, out_dim: int, hidden_dim: int, hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True)]
        in_dim = hidden_dim
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class RadianceField(nn.Module):
    """Maps world points to density and albedo.

    The raw density is offset by Magic3D's blob, ``blob_density * (1 - |x| / blob_radius)``, so
    that optimisation starts from a small solid ball at the centre. Its occupancy grid (a buffer,
    saved with the field) tells the renderer where the density is negligible.
    """

    def __init__(self, spec: FieldSpec):
        super().__init__()
        self.spec = spec
        self.encoding = HashGridEncoding(spec.grid)
        self.density_net = mlp(self.encoding.n_output_dims, 1, spec.hidden_dim, spec.hidden_layers)
        self.albedo_net = mlp(self.encoding.n_output_dims, 3, spec.hidden_dim, spec.hidden_layers)
        self.occupancy = OccupancyGrid(spec.occupancy, spec.radius) if spec.occupancy.enabled else None

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points: [N, 3] world coordinates -> (density [N], albedo [N, 3] in [0, 1])."""
        features = self._features(points)
        return self._density(points, features), torch.sigmoid(self.albedo_net(features))

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points: [N, 3] -> density [N], without computing the albedo."""
        return self._density(points, self._features(points))

    def _features(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoding((points / (2 * self.spec.radius) + 0.5).clamp(0.0, 1.0))

    def _density(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        raw_density = self.density_net(features)[:, 0] + self._blob(points)
        return DENSITY_ACTIVATIONS[self.spec.density_activation](raw_density)

    def _blob(self, points: torch.Tensor) -> torch.Tensor:
        return self.spec.blob_density * (1.0 - points.norm(dim=-1) / self.spec.blob_radius)
