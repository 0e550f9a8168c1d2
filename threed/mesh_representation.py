"""The DMTet mesh as a representation (issue 23's geometry stage): DMTet's surface (``mesh.dmtet``),
coloured by a radiance field's albedo at the surface points and rasterized (``mesh.rasterize``), with
the surface's normal-consistency and Laplacian regularisers.

A stage starts from a finished NeRF run (``mesh.start_from``): the surface from its field's density at
``export.threshold``, the colour from its field. Renders are unshaded albedo over the solid background
colour, as the ShapeWorld teacher's images are; rows run top to bottom as the NeRF's do.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from guidance.schedules import Ramp
from mesh.dmtet import DMTetGeometry, DMTetSpec, laplacian_smoothness, normal_consistency
from mesh.rasterize import antialias, clip_positions, interpolate, rasterize
from nerf.field import FieldSpec, RadianceField
from threed.cameras import CameraBatch
from threed.export import EmptyMeshError, ExportSpec, without_small_components
from threed.representation import RenderedViews, Representation

LEARNING_RATE = (0.0, 1.0)


@dataclass
class MeshStageSpec:
    grid: DMTetSpec = dataclasses.field(default_factory=DMTetSpec)
    start_from: str = ""  # a finished NeRF run's folder: its field starts the surface and the colour
    lr_sdf: float = dataclasses.field(default=0.01, metadata={"range": LEARNING_RATE})
    lr_deformation: float = dataclasses.field(default=0.01, metadata={"range": LEARNING_RATE})
    lr_colour: float = dataclasses.field(default=0.01, metadata={"range": LEARNING_RATE})
    normal_consistency: Ramp = dataclasses.field(default_factory=lambda: Ramp(1.0))
    laplacian: Ramp = dataclasses.field(default_factory=lambda: Ramp(0.0))


@dataclasses.dataclass
class MeshViews(RenderedViews):
    surface: tuple[torch.Tensor, torch.Tensor]  # the rendered surface: vertices [M, 3], triangles [F, 3]


class MeshRepresentation(Representation):
    def __init__(self, spec: MeshStageSpec, colour: FieldSpec, background_color: list[float]):
        super().__init__()
        self.spec = spec
        self.geometry = DMTetGeometry(spec.grid)
        self.colour = RadianceField(colour)
        self.register_buffer("background_color", torch.tensor(background_color, dtype=torch.float32))

    @torch.no_grad()
    def initialize_from(self, field: RadianceField, threshold: float) -> None:
        """The surface where ``field``'s density crosses ``threshold`` (the NeRF's exported one), its colours."""
        self.geometry.initialize_from_density(field.density, threshold)
        self.colour.load_state_dict(field.state_dict())

    def _render_view(self, points: torch.Tensor, faces: torch.Tensor, cameras: CameraBatch, index: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One view's albedo over the background [H, W, 3] and coverage [H, W], antialiased, rows top to bottom."""
        height, width = cameras.height, cameras.width
        clip = clip_positions(points, cameras.c2w[index], cameras.fovy[index], aspect=width / height)
        raster = rasterize(clip, faces, height, width)
        covered = raster.triangle >= 0
        albedo = self.background_color.expand(height, width, 3).clone()
        if covered.any():
            surface_points = interpolate(points, raster, faces)[covered]
            albedo = albedo.index_put((covered,), self.colour(surface_points)[1])
        with_coverage = torch.cat([albedo, covered[..., None].to(albedo.dtype)], dim=-1)
        blended = antialias(with_coverage, raster, clip, faces).flip(0)
        return blended[..., :3], blended[..., 3]

    def render(self, cameras: CameraBatch, generator: torch.Generator, shading: str | None = None) -> MeshViews:
        """Unshaded albedo (the mesh stage's only shading); ``generator`` draws nothing."""
        points, faces = self.geometry.surface()
        views = [self._render_view(points, faces, cameras, index) for index in range(len(cameras))]
        images, coverage = (torch.stack(parts) for parts in zip(*views))
        return MeshViews(images, coverage, (points, faces))

    def regularizer_losses(self, views: MeshViews, step: int) -> dict[str, torch.Tensor]:
        points, faces = views.surface
        weights = {"normal_consistency": self.spec.normal_consistency.at(step), "laplacian": self.spec.laplacian.at(step)}
        losses = {"normal_consistency": normal_consistency, "laplacian": laplacian_smoothness}
        return {name: weights[name] * losses[name](points, faces) for name in losses if weights[name] > 0}

    def parameter_groups(self) -> list[dict]:
        return [{"params": [self.geometry.sdf], "lr": self.spec.lr_sdf},
                {"params": [self.geometry.deformation], "lr": self.spec.lr_deformation},
                {"params": list(self.colour.parameters()), "lr": self.spec.lr_colour}]

    @torch.no_grad()
    def render_images(self, cameras: CameraBatch) -> np.ndarray:
        points, faces = self.geometry.surface()
        images = [self._render_view(points, faces, cameras, index)[0] for index in range(len(cameras))]
        return (torch.stack(images).clamp(0, 1) * 255).round().byte().cpu().numpy()

    @torch.no_grad()
    def extract_mesh(self, spec: ExportSpec) -> trimesh.Trimesh:
        """The marching-tetrahedra surface itself, with the colour field's albedo as vertex colours."""
        points, faces = self.geometry.surface()
        if len(faces) == 0:
            raise EmptyMeshError("the DMTet surface is empty: every grid vertex is on one side. Start the stage from a "
                                 "run whose mesh exported, or lower the stage's learning rates (mesh.lr_sdf)")
        albedo = self.colour(points)[1]
        colours = (albedo.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        mesh = trimesh.Trimesh(points.cpu().numpy(), faces.cpu().numpy(), vertex_colors=colours, process=False)
        return without_small_components(mesh, spec.min_component_fraction) if spec.min_component_fraction > 0 else mesh
