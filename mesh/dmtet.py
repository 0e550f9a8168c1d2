"""DMTet's geometry: a signed distance and a bounded deformation at every vertex of a tetrahedral grid,
turned into a triangle mesh by marching tetrahedra, and the regularisers of its surface.

The mesh's vertices are differentiable in both parameters, so a loss on renders of the mesh (through
``mesh.rasterize``) moves the surface. A finished NeRF starts it: the signed distance is the density's
distance below the export threshold, so the first surface is the NeRF's exported one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mesh.cavities import inside_cavities
from mesh.rasterize import face_neighbours
from mesh.tetrahedra import marching_tetrahedra, tetrahedral_grid, unique_pairs


@dataclass
class DMTetSpec:
    resolution: int = dataclasses.field(default=64, metadata={"range": (32, 256)})  # grid cells a side
    half_size: float = dataclasses.field(default=0.6, metadata={"range": (0.01, None)})  # the grid spans [-h, h]^3
    # A vertex moves at most this fraction of a cell along each axis (tanh-bounded), so tetrahedra never flip.
    max_deformation: float = dataclasses.field(default=0.45, metadata={"range": (0.0, 0.5)})


class DMTetGeometry(nn.Module):
    """The grid (buffers), its signed distance [V] and deformation [V, 3] (parameters)."""

    def __init__(self, spec: DMTetSpec):
        super().__init__()
        self.spec = spec
        grid = tetrahedral_grid(spec.resolution, spec.half_size)
        self.register_buffer("grid_vertices", grid.vertices)
        self.register_buffer("tets", grid.tets)
        self.sdf = nn.Parameter(torch.zeros(len(grid.vertices)))
        self.deformation = nn.Parameter(torch.zeros(len(grid.vertices), 3))

    @property
    def cell_size(self) -> float:
        return 2 * self.spec.half_size / self.spec.resolution

    def vertex_positions(self) -> torch.Tensor:
        """The deformed grid [V, 3]."""
        return self.grid_vertices + self.spec.max_deformation * self.cell_size * torch.tanh(self.deformation)

    def surface(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero level set: vertices [M, 3] (differentiable in both parameters) and triangles [F, 3]."""
        return marching_tetrahedra(self.vertex_positions(), self.tets, self.sdf)

    @torch.no_grad()
    def initialize_from_density(self, density: Callable[[torch.Tensor], torch.Tensor], threshold: float,
                                fill_cavities: bool = True, cavity_closing: int = 0, chunk: int = 65536) -> None:
        """sdf = (threshold - density) / threshold at every grid vertex (``density``: points [N, 3] -> [N]), no
        deformation: marching tetrahedra then finds the surface where the density crosses ``threshold``
        (any positive scale keeps the linear interpolation's crossing), as a NeRF's export does. With
        ``fill_cavities``, vertices below the threshold that the grid's boundary cannot reach (a NeRF's
        hollow inside) count as inside, so the surface is the outer one alone, as the export's is; so do those
        it reaches only through openings narrower than about ``2 * cavity_closing`` grid cells."""
        if threshold <= 0:
            raise ValueError(f"the density threshold must be positive, got {threshold}")
        values = torch.cat([density(points) for points in self.grid_vertices.split(chunk)])
        self.sdf.copy_((threshold - values) / threshold)
        if fill_cavities:
            side = self.spec.resolution + 1  # the grid's vertices are a lattice, x slowest
            solid = (self.sdf < 0).view(side, side, side).cpu().numpy()
            cavity = torch.as_tensor(inside_cavities(solid, cavity_closing), device=self.sdf.device).view(-1)
            self.sdf[cavity] = -1.0
        self.deformation.zero_()


def face_normals(points: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[F, 3] unit normals of the triangles."""
    a, b, c = points[faces].unbind(dim=1)
    return torch.nn.functional.normalize(torch.linalg.cross(b - a, c - a), dim=-1)


def shared_edges(faces: torch.Tensor, neighbours: torch.Tensor | None = None) -> torch.Tensor:
    """[E, 2] pairs of triangles that share an edge, each pair once (``neighbours``: ``face_neighbours(faces)``
    [F, 3], when the caller has it)."""
    neighbours = face_neighbours(faces) if neighbours is None else neighbours
    owner = torch.arange(len(faces), device=faces.device)[:, None].expand_as(neighbours)
    once = neighbours > owner
    return torch.stack([owner[once], neighbours[once]], dim=-1)


def normal_consistency(points: torch.Tensor, faces: torch.Tensor, neighbours: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of 1 - cos(angle) between the normals of triangles sharing an edge: 0 for a flat surface."""
    normals = face_normals(points, faces)
    pairs = shared_edges(faces, neighbours)
    return (1 - (normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(dim=-1)).mean()


def laplacian_smoothness(points: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of every vertex from the mean of its neighbours (uniform weights)."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges, _ = unique_pairs(torch.cat([edges, edges.flip(1)]), len(points))  # both directions, once each
    total = torch.zeros_like(points).index_add(0, edges[:, 0], points[edges[:, 1]])
    degree = torch.zeros(len(points), device=points.device).index_add(0, edges[:, 0], torch.ones(len(edges), device=points.device))
    mean = total / degree.clamp_min(1)[:, None]
    return ((points - mean) ** 2).sum(dim=-1)[degree > 0].mean()
