"""Volume rendering of a radiance field along rays, with nerfacc's transmittance and compositing."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from nerfacc import render_weight_from_density

from nerf.field import RadianceField
from nerf.occupancy import OccupancyGrid
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


def packed_weights(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, ray_indices: torch.Tensor,
                   n_rays: int) -> torch.Tensor:
    """Compositing weights w_i = T_i (1 - exp(-sigma_i delta_i)) of packed samples [M], sorted by ray.

    nerfacc's CUDA kernels on CUDA; on the CPU the same quantity in PyTorch: the transmittance's
    exclusive prefix sum of sigma * delta is a global cumulative sum (float64) minus its value where
    each ray's run of samples begins.
    """
    if sigmas.is_cuda:
        return render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n_rays)[0]
    optical_depth = sigmas * (t_ends - t_starts)
    inclusive = torch.cumsum(optical_depth.double(), dim=0)
    exclusive = inclusive - optical_depth.double()
    run_start = torch.searchsorted(ray_indices, ray_indices)  # first sample of each sample's ray
    transmittance = torch.exp(-(exclusive - exclusive[run_start])).to(sigmas.dtype)
    return transmittance * (1.0 - torch.exp(-optical_depth))


def render_rays(field: RadianceField, rays: Rays, spec: RenderSpec, generator: torch.Generator | None = None,
                occupancy: OccupancyGrid | None = None) -> RenderOutput:
    """Renders all rays at once (differentiably). ``generator`` jitters the samples (None: fixed bins).

    With an occupancy grid, samples in empty cells are skipped: the field is evaluated only at the
    others, which are rendered packed. Without one every sample is kept; the result is the same
    as dense rendering.
    """
    near, far = intersect_box(rays, field.spec.radius)
    t_starts, t_ends = stratified_samples(near, far, spec.samples_per_ray, generator)
    t_mids = 0.5 * (t_starts + t_ends)
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * t_mids[..., None]  # [N, S, 3]
    keep = t_ends > t_starts
    if occupancy is not None:
        keep &= occupancy.is_occupied(points)
    ray_indices, _ = keep.nonzero(as_tuple=True)  # row-major: sorted by ray
    density, albedo = field(points[keep])
    weights = packed_weights(t_starts[keep], t_ends[keep], density, ray_indices, len(rays))

    def accumulate(values: torch.Tensor) -> torch.Tensor:
        """[M, C] per-sample values -> [N, C] weighted sums per ray."""
        total = torch.zeros(len(rays), values.shape[-1], device=values.device, dtype=values.dtype)
        return total.index_add(0, ray_indices, weights[:, None] * values)

    opacity = accumulate(torch.ones_like(weights[:, None]))
    depth = accumulate(t_mids[keep][:, None])
    color = accumulate(albedo)
    background = torch.tensor(spec.background_color, device=color.device, dtype=color.dtype)
    dense_weights = torch.zeros_like(t_starts).masked_scatter(keep, weights)
    return RenderOutput(rgb=color + (1.0 - opacity) * background, opacity=opacity, depth=depth, weights=dense_weights)


@torch.no_grad()
def render_rays_chunked(field: RadianceField, rays: Rays, spec: RenderSpec,
                        occupancy: OccupancyGrid | None = None) -> RenderOutput:
    """Renders many rays without gradients, ``spec.chunk_rays`` at a time, for large views."""
    chunks = [render_rays(field, rays[i : i + spec.chunk_rays], spec, occupancy=occupancy)
              for i in range(0, len(rays), spec.chunk_rays)]
    return RenderOutput(*(torch.cat(parts) for parts in zip(*((c.rgb, c.opacity, c.depth, c.weights) for c in chunks))))
