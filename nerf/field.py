"""The radiance field: a hash-grid encoding followed by small density and albedo MLPs."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nerf.hashgrid import HashGridEncoding, HashGridSpec
from nerf.occupancy import OccupancyGrid, OccupancySpec

class TruncatedExp(torch.autograd.Function):
    """exp(x) with its gradient computed at min(x, 15), so a large raw density cannot blow up the step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


DENSITY_ACTIVATIONS = {"softplus": F.softplus, "exp": torch.exp, "trunc_exp": TruncatedExp.apply}
BLOB_SHAPES = ("magic3d", "dreamfusion")
NORMAL_METHODS = ("finite_difference", "autograd")


@dataclass
class FieldSpec:
    """The field's size and initial shape. ``radius`` is the half-side of its bounding box."""

    radius: float = field(default=1.0, metadata={"range": (0.01, None)})
    grid: HashGridSpec = field(default_factory=HashGridSpec)
    hidden_dim: int = field(default=64, metadata={"range": (1, None)})
    hidden_layers: int = field(default=1, metadata={"range": (0, None)})
    density_activation: str = field(default="softplus", metadata={"choices": tuple(DENSITY_ACTIVATIONS)})
    blob_shape: str = field(default="magic3d", metadata={"choices": BLOB_SHAPES})
    blob_density: float = 10.0
    blob_radius: float = field(default=0.5, metadata={"range": (0.01, None)})  # magic3d's radius, dreamfusion's std
    # The blob's largest raw density (None: no cap). A flat top keeps the ball opaque while leaving the
    # field a small step to carve through it (a torus's hole), where an uncapped magic3d blob asks it to
    # undo blob_density at the centre.
    blob_cap: float | None = None
    normal_method: str = field(default="finite_difference", metadata={"choices": NORMAL_METHODS})
    normal_eps: float = field(default=0.01, metadata={"range": (1e-6, None)})  # finite-difference step
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

    The raw density is offset by a blob so that optimisation starts from a small solid ball at the
    centre: Magic3D's ``blob_density * (1 - |x| / blob_radius)`` or DreamFusion's
    ``blob_density * exp(-|x|^2 / (2 blob_radius^2))``. Its occupancy grid (a buffer,
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
        if self.spec.blob_shape == "magic3d":
            blob = self.spec.blob_density * (1.0 - points.norm(dim=-1) / self.spec.blob_radius)
        else:
            blob = self.spec.blob_density * torch.exp(-0.5 * (points**2).sum(-1) / self.spec.blob_radius**2)
        return blob if self.spec.blob_cap is None else blob.clamp(max=self.spec.blob_cap)

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        """points: [N, 3] -> unit normals [N, 3], the negated normalised density gradient (differentiable)."""
        if self.spec.normal_method == "autograd":
            with torch.enable_grad():
                points = points if points.requires_grad else points.detach().requires_grad_(True)
                (gradient,) = torch.autograd.grad(self.density(points).sum(), points, create_graph=True)
        else:
            offsets = self.spec.normal_eps * torch.eye(3, device=points.device, dtype=points.dtype)
            shifted = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # [N, 6, 3]
            density = self.density(shifted.reshape(-1, 3)).reshape(-1, 2, 3)
            gradient = (density[:, 0] - density[:, 1]) / (2 * self.spec.normal_eps)
        return -F.normalize(gradient, dim=-1)
