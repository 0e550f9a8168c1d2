"""The mesh stages as a representation: a triangle surface coloured by a radiance field's albedo at the
rasterized surface points (``mesh.rasterize``), as threestudio's DMTet stages are.

- The geometry stage (``representation: dmtet``) trains DMTet's surface (``mesh.dmtet``) and the colour,
  with the surface's normal-consistency and Laplacian regularisers. It starts from a finished NeRF run
  (``mesh.start_from``): the surface where its density crosses ``export.threshold``, the colour its field.
- The texture stage (``representation: texture``) trains the colour alone on a fixed surface: a finished
  geometry stage's (or a NeRF run's, through the same DMTet conversion), with that run's colour field.

Renders are unshaded albedo over the solid background colour, as the ShapeWorld teacher's images are;
rows run top to bottom as the NeRF's do.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import nn

from guidance.schedules import Ramp
from mesh.dmtet import DMTetGeometry, DMTetSpec, face_normals, laplacian_smoothness, normal_consistency
from mesh.rasterize import BACKENDS, antialias, clip_positions, face_neighbours, interpolate, rasterize
from nerf.field import FieldSpec, RadianceField
from threed.cameras import CameraBatch
from threed.export import EmptyMeshError, ExportSpec, without_small_components
from threed.representation import RenderedViews, Representation

LEARNING_RATE = (0.0, 1.0)


@dataclass
class MeshStageSpec:
    grid: DMTetSpec = dataclasses.field(default_factory=DMTetSpec)
    # The finished run the stage starts from: a NeRF run (either stage), or a mesh stage's run (texture stage).
    start_from: str = ""
    lr_sdf: float = dataclasses.field(default=0.01, metadata={"range": LEARNING_RATE})
    lr_deformation: float = dataclasses.field(default=0.01, metadata={"range": LEARNING_RATE})
    lr_colour: float = dataclasses.field(default=0.01, metadata={"range": LEARNING_RATE})
    # What the guidance sees: the colour field's albedo, or the surface's normal map (world normals as
    # (n + 1) / 2, as threestudio's geometry stage renders for Stable Diffusion). Previews show the albedo.
    shading: str = dataclasses.field(default="albedo", metadata={"choices": ("albedo", "normal")})
    # nvdiffrast's CUDA rasterizer where it can run (auto), always (nvdiffrast), or the PyTorch twin (torch).
    rasterizer: str = dataclasses.field(default="auto", metadata={"choices": BACKENDS})
    normal_consistency: Ramp = dataclasses.field(default_factory=lambda: Ramp(1.0))
    laplacian: Ramp = dataclasses.field(default_factory=lambda: Ramp(0.0))


@dataclasses.dataclass
class MeshViews(RenderedViews):
    surface: tuple[torch.Tensor, torch.Tensor]  # the rendered surface: vertices [M, 3], triangles [F, 3]
    neighbours: torch.Tensor  # [F, 3] the triangles' adjacency (mesh.rasterize.face_neighbours)


class FixedSurface(nn.Module):
    """A surface training does not move (the texture stage's): vertices [M, 3] and triangles [F, 3], as buffers.
    Built empty, it takes the size of the surface a checkpoint loads into it."""

    def __init__(self, vertices: torch.Tensor | None = None, faces: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("vertices", torch.zeros(0, 3) if vertices is None else vertices.detach().clone())
        self.register_buffer("faces", torch.zeros(0, 3, dtype=torch.long) if faces is None else faces.clone())

    def surface(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vertices, self.faces

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buffer in self._buffers.items():
            if prefix + name in state_dict:
                self._buffers[name] = buffer.new_empty(state_dict[prefix + name].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MeshRepresentation(Representation):
    """A surface (DMTet's, trained, or a fixed one) and its colour field."""

    def __init__(self, spec: MeshStageSpec, geometry: DMTetGeometry | FixedSurface, colour: RadianceField,
                 background_color: list[float]):
        super().__init__()
        self.spec = spec
        self.geometry = geometry
        self.colour = colour
        self.register_buffer("background_color", torch.tensor(background_color, dtype=torch.float32))

    @classmethod
    def for_checkpoint(cls, spec: MeshStageSpec, fixed: bool, colour: FieldSpec, background_color: list[float]
                       ) -> "MeshRepresentation":
        """The structure a checkpoint of a stage fills (its parameters and its surface), without its source run:
        DMTet's grid on ``spec.grid``, or an empty fixed surface, and a colour field of spec ``colour``."""
        return cls(spec, FixedSurface() if fixed else DMTetGeometry(spec.grid), RadianceField(colour), background_color)

    @classmethod
    def from_density(cls, spec: MeshStageSpec, field: RadianceField, threshold: float, background_color: list[float],
                     fixed: bool = False, fill_cavities: bool = True, cavity_closing: int = 0) -> "MeshRepresentation":
        """DMTet's surface where ``field``'s density crosses ``threshold`` (the NeRF's exported one, its hollows
        filled with ``fill_cavities`` and ``cavity_closing`` as the export fills them; trained, or ``fixed``),
        coloured by a copy of ``field``."""
        geometry = DMTetGeometry(spec.grid).to(next(field.parameters()).device)
        geometry.initialize_from_density(field.density, threshold, fill_cavities, cavity_closing)
        if not (geometry.sdf < 0).any() or not (geometry.sdf > 0).any():
            raise EmptyMeshError(f"the source field's density does not cross {threshold} on the stage's grid "
                                 f"({spec.grid.resolution} cells over [-{spec.grid.half_size}, {spec.grid.half_size}]^3): "
                                 "start from a run whose mesh exported, inside mesh.grid.half_size")
        return cls(spec, FixedSurface(*geometry.surface()) if fixed else geometry, copy.deepcopy(field), background_color)

    @classmethod
    def fixed_copy(cls, spec: MeshStageSpec, source: "MeshRepresentation") -> "MeshRepresentation":
        """``source``'s surface, fixed, and a copy of its colour field: a texture stage after a geometry stage."""
        with torch.no_grad():
            surface = FixedSurface(*source.geometry.surface())
        return cls(spec, surface, copy.deepcopy(source.colour), source.background_color.tolist())

    @property
    def trains_geometry(self) -> bool:
        return isinstance(self.geometry, DMTetGeometry)

    def _render_view(self, points: torch.Tensor, faces: torch.Tensor, neighbours: torch.Tensor, cameras: CameraBatch,
                     index: int, shading: str = "albedo") -> tuple[torch.Tensor, torch.Tensor]:
        """One view's ``shading`` ("albedo" or "normal") over the background [H, W, 3] and coverage [H, W],
        antialiased (``neighbours``: ``face_neighbours(faces)``), rows top to bottom."""
        height, width = cameras.height, cameras.width
        clip = clip_positions(points, cameras.c2w[index], cameras.fovy[index], aspect=width / height)
        raster = rasterize(clip, faces, height, width, self.spec.rasterizer)
        covered = raster.triangle >= 0
        image = self.background_color.expand(height, width, 3).clone()
        if covered.any():
            if shading == "normal":  # flat: each triangle's own normal
                shade = (face_normals(points, faces)[raster.triangle[covered]] + 1) / 2
            else:
                shade = self.colour(interpolate(points, raster, faces)[covered])[1]
            image = image.index_put((covered,), shade)
        with_coverage = torch.cat([image, covered[..., None].to(image.dtype)], dim=-1)
        blended = antialias(with_coverage, raster, clip, faces, neighbours).flip(0)
        return blended[..., :3], blended[..., 3]

    def render(self, cameras: CameraBatch, generator: torch.Generator, shading: str | None = None) -> MeshViews:
        """``mesh.shading``'s render (unless ``shading`` names one); ``generator`` draws nothing."""
        points, faces = self.geometry.surface()
        neighbours = face_neighbours(faces)
        views = [self._render_view(points, faces, neighbours, cameras, index, shading or self.spec.shading)
                 for index in range(len(cameras))]
        images, coverage = (torch.stack(parts) for parts in zip(*views))
        return MeshViews(images, coverage, (points, faces), neighbours)

    def regularizer_losses(self, views: MeshViews, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The surface's regularisers (none for a fixed surface)."""
        if not self.trains_geometry:
            return {}
        points, faces = views.surface
        weights = {"normal_consistency": self.spec.normal_consistency.at(step), "laplacian": self.spec.laplacian.at(step)}
        losses = {"normal_consistency": lambda: normal_consistency(points, faces, views.neighbours),
                  "laplacian": lambda: laplacian_smoothness(points, faces)}
        return {name: weights[name] * losses[name]() for name in losses if weights[name] > 0}

    def parameter_groups(self) -> list[dict]:
        groups = [{"params": list(self.colour.parameters()), "lr": self.spec.lr_colour}]
        if self.trains_geometry:
            groups += [{"params": [self.geometry.sdf], "lr": self.spec.lr_sdf},
                       {"params": [self.geometry.deformation], "lr": self.spec.lr_deformation}]
        return groups

    @torch.no_grad()
    def render_images(self, cameras: CameraBatch) -> np.ndarray:
        points, faces = self.geometry.surface()
        neighbours = face_neighbours(faces)
        images = [self._render_view(points, faces, neighbours, cameras, index)[0] for index in range(len(cameras))]
        return (torch.stack(images).clamp(0, 1) * 255).round().byte().cpu().numpy()

    @torch.no_grad()
    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.colour(points)[1]

    @torch.no_grad()
    def extract_mesh(self, spec: ExportSpec) -> trimesh.Trimesh:
        """The surface itself (marching tetrahedra's), with the colour field's albedo as vertex colours."""
        points, faces = self.geometry.surface()
        if len(faces) == 0:
            raise EmptyMeshError("the DMTet surface is empty: every grid vertex is on one side. Start the stage from a "
                                 "run whose mesh exported, or lower the stage's learning rates (mesh.lr_sdf)")
        albedo = self.colour(points)[1]
        colours = (albedo.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        mesh = trimesh.Trimesh(points.cpu().numpy(), faces.cpu().numpy(), vertex_colors=colours, process=False)
        return without_small_components(mesh, spec.min_component_fraction) if spec.min_component_fraction > 0 else mesh
