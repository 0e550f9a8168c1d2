"""Geometry regularisers on a render, each with a weight that may ramp over training."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from guidance.schedules import Ramp
from nerf.renderer import RenderOutput


@dataclass
class RegularizerSpec:
    """Weights (0 disables): sparsity (mean sqrt(opacity^2 + 0.01), fewer occupied pixels), opacity
    (binary entropy of the opacity: crisp silhouettes), orientation (normals facing away from the
    camera; needs normals) and z_variance (spread of the weights along the ray, where opaque)."""

    sparsity: Ramp = field(default_factory=lambda: Ramp(0.0))
    opacity: Ramp = field(default_factory=lambda: Ramp(0.0))
    orientation: Ramp = field(default_factory=lambda: Ramp(0.0))
    z_variance: Ramp = field(default_factory=lambda: Ramp(0.0))

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


REGULARIZERS = {"sparsity": sparsity, "opacity": opacity_entropy, "orientation": orientation, "z_variance": z_variance}


def regularizer_losses(render: RenderOutput, spec: RegularizerSpec, step: int) -> dict[str, torch.Tensor]:
    """The weighted losses of the regularisers whose weight is not zero at ``step``."""
    losses = {}
    for name, loss_fn in REGULARIZERS.items():
        weight = getattr(spec, name).at(step)
        if weight > 0:
            losses[name] = weight * loss_fn(render)
    return losses
