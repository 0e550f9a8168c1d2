"""Geometry regularisers on a render, each with a weight that may ramp over training."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from guidance.schedules import Ramp
from nerf.field import RadianceField
from nerf.renderer import RenderOutput

VOLUME_POINTS = 8192  # the points a step at which occupied_volume reads the field


@dataclass
class RegularizerSpec:
    """Weights (0 disables): sparsity (mean sqrt(opacity^2 + 0.01), fewer occupied pixels), opacity
    (binary entropy of the opacity: crisp silhouettes), orientation (normals facing away from the
    camera; needs normals), z_variance (spread of the weights along the ray, where opaque) and
    volume (the field's occupied volume, ``occupied_volume``: density no view needs)."""

    sparsity: Ramp = field(default_factory=lambda: Ramp(0.0))
    opacity: Ramp = field(default_factory=lambda: Ramp(0.0))
    orientation: Ramp = field(default_factory=lambda: Ramp(0.0))
    z_variance: Ramp = field(default_factory=lambda: Ramp(0.0))
    volume: Ramp = field(default_factory=lambda: Ramp(0.0))

    def needs_normals(self) -> bool:
        return self.orientation.start > 0 or (self.orientation.end or 0.0) > 0


def sparsity(render: RenderOutput) -> torch.Tensor:
    return (render.opacity**2 + 0.01).sqrt().mean()


def opacity_entropy(render: RenderOutput) -> torch.Tensor:
    opacity = render.opacity.clamp(1e-5, 1 - 1e-5)
    return -(opacity * opacity.log() + (1 - opacity) * (1 - opacity).log()).mean()


def orientation(render: RenderOutput) -> torch.Tensor:
    return render.orientation.sum() / (render.opacity > 0).sum().clamp_min(1)


def z_variance(render: RenderOutput) -> torch.Tensor:
    opaque = (render.opacity > 0.5).float()
    return (render.z_variance * opaque).sum() / opaque.sum().clamp_min(1.0)


def occupied_volume(field: RadianceField, generator: torch.Generator, n_points: int = VOLUME_POINTS) -> torch.Tensor:
    """Plenoxels' Cauchy sparsity: mean log(1 + density^2) at ``n_points`` points drawn uniformly in the
    field's box. The render-based regularisers reach only what a view sees: behind an opaque surface of one
    colour, removing density changes no pixel, so nothing asks for it, and a surface the teacher wants gone
    (the torus's lid) is painted the background's colour rather than removed. This penalty lowers every
    density that no view defends; what a view needs, the guidance keeps. On the exponential activation its
    gradient on the raw density is about 2 wherever the density is well above 1, so it eats a constant amount
    a step instead of stalling where the density is large."""
    points = (torch.rand(n_points, 3, generator=generator, device=generator.device) * 2 - 1) * field.spec.radius
    return torch.log1p(field.density(points) ** 2).mean()


REGULARIZERS = {"sparsity": sparsity, "opacity": opacity_entropy, "orientation": orientation, "z_variance": z_variance}


def regularizer_losses(render: RenderOutput, spec: RegularizerSpec, step: int) -> dict[str, torch.Tensor]:
    """The weighted losses of the regularisers whose weight is not zero at ``step``."""
    losses = {}
    for name, loss_fn in REGULARIZERS.items():
        weight = getattr(spec, name).at(step)
        if weight > 0:
            losses[name] = weight * loss_fn(render)
    return losses
