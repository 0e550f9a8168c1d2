"""Volume rendering of a radiance field along rays: stratified samples, empty-space skipping with an
occupancy grid, packed compositing (nerfacc's kernels on CUDA, the same in PyTorch on the CPU),
shading and background."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from nerfacc import render_weight_from_density

from nerf.field import RadianceField
from nerf.occupancy import OccupancyGrid
from nerf.rays import Rays, intersect_box
from nerf.shading import Lighting, ShadingSpec, shade


@dataclass
class RenderSpec:
    samples_per_ray: int = field(default=64, metadata={"range": (2, 4096)})
    chunk_rays: int = field(default=16384, metadata={"range": (1, None)})
    normals: bool = False  # composite normals (and the orientation penalty); diffuse shading computes them anyway
    shading: ShadingSpec = field(default_factory=ShadingSpec)


@dataclass
class RenderOutput:
    """Per-ray results; reshape with ``as_images`` for whole views. ``normal`` and ``orientation``
    are None unless normals were computed."""

    rgb: torch.Tensor  # [N, 3], composited over the background
    opacity: torch.Tensor  # [N, 1]
    depth: torch.Tensor  # [N, 1], expected distance along the ray (0 where empty)
    normal: torch.Tensor | None  # [N, 3], composited unit normals (not renormalised)
    weights: torch.Tensor  # [N, S], the samples' compositing weights
    z_variance: torch.Tensor  # [N, 1], variance of the sample distance under the weights
    orientation: torch.Tensor | None  # [N, 1], sum of w * max(0, n . d)^2: normals facing away from the camera

    def as_images(self, batch: int, height: int, width: int) -> "RenderOutput":
        return RenderOutput(**{f.name: None if (value := getattr(self, f.name)) is None
                               else value.reshape(batch, height, width, -1) for f in dataclasses.fields(self)})


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
                occupancy: OccupancyGrid | None = None, lighting: Lighting | None = None,
                background: torch.Tensor | None = None) -> RenderOutput:
    """Renders all rays at once (differentiably).

    generator: jitters the samples (None: fixed bins). occupancy: samples in its empty cells are
    skipped, never evaluated. lighting: a point light per ray and a shading mode (None: albedo).
    background: [N, 3] colours behind each ray (None: black).
    """
    near, far = intersect_box(rays, field.spec.radius)
    t_starts, t_ends = stratified_samples(near, far, spec.samples_per_ray, generator)
    t_mids = 0.5 * (t_starts + t_ends)
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * t_mids[..., None]  # [N, S, 3]
    keep = t_ends > t_starts
    if occupancy is not None:
        keep &= occupancy.is_occupied(points)
    ray_indices, _ = keep.nonzero(as_tuple=True)  # row-major: sorted by ray
    points, t_mids = points[keep], t_mids[keep]
    density, albedo = field(points)
    weights = packed_weights(t_starts[keep], t_ends[keep], density, ray_indices, len(rays))

    def accumulate(values: torch.Tensor) -> torch.Tensor:
        """[M, C] per-sample values -> [N, C] weighted sums per ray."""
        total = torch.zeros(len(rays), values.shape[-1], device=values.device, dtype=values.dtype)
        return total.index_add(0, ray_indices, weights[:, None] * values)

    mode = lighting.mode if lighting is not None else "albedo"
    normals = field.normals(points) if spec.normals or mode != "albedo" else None
    if mode != "albedo":
        albedo = shade(albedo, normals, points, lighting.positions[ray_indices], mode, spec.shading)
    opacity = accumulate(torch.ones_like(weights[:, None]))
    depth = accumulate(t_mids[:, None])
    mean_depth = (depth / opacity.clamp_min(1e-6))[ray_indices]
    rgb = accumulate(albedo) + ((1.0 - opacity) * background if background is not None else 0.0)
    return RenderOutput(
        rgb=rgb, opacity=opacity, depth=depth,
        normal=accumulate(normals) if normals is not None else None,
        weights=torch.zeros_like(t_starts).masked_scatter(keep, weights),
        z_variance=accumulate((t_mids[:, None] - mean_depth) ** 2) / opacity.clamp_min(1e-6),
        orientation=accumulate(((normals * rays.directions[ray_indices]).sum(-1, keepdim=True)).clamp_min(0.0) ** 2)
        if normals is not None else None,
    )


@torch.no_grad()
def render_rays_chunked(field: RadianceField, rays: Rays, spec: RenderSpec, occupancy: OccupancyGrid | None = None,
                        background: torch.Tensor | None = None) -> RenderOutput:
    """Renders many rays without gradients (albedo), ``spec.chunk_rays`` at a time, for large views."""
    chunks = []
    for start in range(0, len(rays), spec.chunk_rays):
        part = slice(start, start + spec.chunk_rays)
        chunks.append(render_rays(field, rays[part], spec, occupancy=occupancy,
                                  background=background[part] if background is not None else None))
    return RenderOutput(**{f.name: None if getattr(chunks[0], f.name) is None
                           else torch.cat([getattr(c, f.name) for c in chunks]) for f in dataclasses.fields(RenderOutput)})
