"""The hash-grid NeRF as a representation: a radiance field, its background, and volume rendering
through its occupancy grid (``nerf/``), with the geometry regularisers of ``threed.regularizers``."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import trimesh

from nerf.background import Background, BackgroundSpec
from nerf.field import FieldSpec, RadianceField
from nerf.renderer import RenderOutput, RenderSpec, render_rays, render_rays_chunked
from nerf.shading import Lighting, sample_shading_mode
from threed.cameras import CameraBatch
from threed.config import OptimSpec
from threed.export import ExportSpec, extract_mesh, query_field
from threed.regularizers import RegularizerSpec, occupied_volume, regularizer_losses
from threed.representation import RenderedViews, Representation


@dataclasses.dataclass
class NeRFViews(RenderedViews):
    rays: RenderOutput  # the same render per ray ([B * H * W, ...]): what the regularisers read


class NeRFRepresentation(Representation):
    def __init__(self, geometry: FieldSpec, background: BackgroundSpec, render: RenderSpec,
                 regularizers: RegularizerSpec, optim: OptimSpec):
        super().__init__()
        self.field = RadianceField(geometry)
        self.background = Background(background)
        self.render_spec = dataclasses.replace(render, normals=render.normals or regularizers.needs_normals())
        self.background_color = background.color
        self.regularizers, self.optim = regularizers, optim

    def prepare_step(self, step: int, generator: torch.Generator) -> None:
        """Refreshes the occupancy grid every ``occupancy.update_every`` steps."""
        occupancy = self.field.occupancy
        if occupancy is not None and step % occupancy.spec.update_every == 0:
            occupancy.update(self.field.density, generator)

    def render(self, cameras: CameraBatch, generator: torch.Generator, shading: str | None = None) -> NeRFViews:
        rays = cameras.rays()
        mode = shading or sample_shading_mode(self.render_spec.shading, generator)
        pixels = cameras.height * cameras.width
        lighting = None if mode == "albedo" else Lighting(cameras.light_positions.repeat_interleave(pixels, dim=0), mode)
        background = self.background(rays.directions, len(cameras), generator)
        per_ray = render_rays(self.field, rays, self.render_spec, generator, self.field.occupancy, lighting, background)
        images = per_ray.as_images(len(cameras), cameras.height, cameras.width)
        return NeRFViews(images.rgb, images.opacity[..., 0], per_ray)

    def regularizer_losses(self, views: NeRFViews, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The render's regularisers, and the field's occupied volume at points ``generator`` draws."""
        losses = regularizer_losses(views.rays, self.regularizers, step)
        if (volume_weight := self.regularizers.volume.at(step)) > 0:
            losses["volume"] = volume_weight * occupied_volume(self.field, generator)
        return losses

    def parameter_groups(self) -> list[dict]:
        """The hash grid at ``optim.lr_encoding``; the field's and the background's networks at ``optim.lr_networks``."""
        networks = [p for name, p in self.field.named_parameters() if not name.startswith("encoding.")]
        return [{"params": list(self.field.encoding.parameters()), "lr": self.optim.lr_encoding},
                {"params": networks + list(self.background.parameters()), "lr": self.optim.lr_networks}]

    @torch.no_grad()
    def render_images(self, cameras: CameraBatch) -> np.ndarray:
        """Albedo over the solid background colour, one view at a time in ray chunks."""
        views = []
        for index in range(len(cameras)):
            rays = cameras[index].rays()
            background = torch.tensor(self.background_color, device=rays.origins.device).expand(len(rays), 3)
            rgb = render_rays_chunked(self.field, rays, self.render_spec, self.field.occupancy, background).rgb
            rgb = rgb.reshape(cameras.height, cameras.width, 3)
            views.append((rgb.clamp(0, 1) * 255).round().byte().cpu().numpy())
        return np.stack(views)

    @torch.no_grad()
    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return query_field(self.field, points)[1]

    def extract_mesh(self, spec: ExportSpec) -> trimesh.Trimesh:
        return extract_mesh(self.field, spec)
