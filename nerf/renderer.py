"""Volume rendering of a radiance field along rays, with nerfacc's transmittance and compositing."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from nerfacc import accumulate_along_rays, render_weight_from_density

from nerf.field import RadianceField
from nerf.rays import Rays, intersect_box


@dataclass
class RenderSpec:
    samples_per_ray: int = field(default=64, metadata={"range": (2, 4096)})
    background_color: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    chunk_rays: int = field(default=16384, metadata={"range": (1, None)})

    def __post_init__(self):
        if len(self.background_color) != 3:
            raise ValueError(f"background_color needs 3 values (r, g, b), got {list(self.background_color)}")


@dataclass
class RenderOutput:
    """Per-ray results; reshape with ``as_images`` for whole views."""

    rgb: torch.Tensor  # [N, 3], composited over the background
    opacity: torch.Tensor  # [N, 1]
    depth: torch.Tensor  # [N, 1], expected distance along the ray (0 where empty)
    weights: torch.Tensor  # [N, S], the samples' compositing weights

    def as_images(self, batch: int, height: int, width: int) -> "RenderOutput":
        return RenderOutput(*(t.reshape(batch, height, width, -1) for t in (self.rgb, self.opacity, self.depth, self.weights)))


def stratified_samples(near: torch.Tensor, far: torch.Tensor, n_samples: int, generator: torch.Generator | None):
    """Interval bounds [N, S] between near and far; jittered within each bin when a generator is given."""
    bins = torch.linspace(0.0, 1.0, n_samples + 1, device=near.device, dtype=near.dtype)
    bounds = near[:, None] + (far - near)[:, None] * bins  # [N, S + 1]
    if generator is not None:
        jitter = torch.rand(bounds.shape[0], 1, generator=generator, device=near.device, dtype=near.dtype)
        shift = (bounds[:, 1:] - bounds[:, :-1]) * (jitter - 0.5)
        bounds = torch.cat([bounds[:, :1], bounds[:, 1:-1] + shift[:, 1:], bounds[:, -1:]], dim=1)
    return bounds[:, :-1], bounds[:, 1:]


def render_rays(field: RadianceField, rays: Rays, spec: RenderSpec, generator: torch.Generator | None = None) -> RenderOutput:
    """Renders all rays at once (differentiably). ``generator`` jitters the samples; None gives fixed bins."""
    near, far = intersect_box(rays, field.spec.radius)
    t_starts, t_ends = stratified_samples(near, far, spec.samples_per_ray, generator)
    t_mids = 0.5 * (t_starts + t_ends)
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * t_mids[..., None]  # [N, S, 3]
    density, albedo = field(points.reshape(-1, 3))
    weights, _, _ = render_weight_from_density(t_starts, t_ends, density.reshape(t_starts.shape))
    opacity = accumulate_along_rays(weights, None)
    depth = accumulate_along_rays(weights, t_mids[..., None])
    color = accumulate_along_rays(weights, albedo.reshape(*t_starts.shape, 3))
    background = torch.tensor(spec.background_color, device=color.device, dtype=color.dtype)
    return RenderOutput(rgb=color + (1.0 - opacity) * background, opacity=opacity, depth=depth, weights=weights)


@torch.no_grad()
def render_rays_chunked(field: RadianceField, rays: Rays, spec: RenderSpec) -> RenderOutput:
    """Renders many rays without gradients, ``spec.chunk_rays`` at a time, for large views."""
    chunks = [render_rays(field, rays[i : i + spec.chunk_rays], spec) for i in range(0, len(rays), spec.chunk_rays)]
    return RenderOutput(*(torch.cat(parts) for parts in zip(*((c.rgb, c.opacity, c.depth, c.weights) for c in chunks))))
