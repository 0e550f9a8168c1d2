"""Mesh extraction (marching cubes on the density grid) and export with vertex colours."""
from __future__ import annotations

from pathlib import Path

import mcubes
import numpy as np
import torch
import trimesh

from nerf.field import RadianceField
from threed.errors import UserError


class EmptyMeshError(UserError):
    pass


@torch.no_grad()
def query_field(field: RadianceField, points: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """points: [N, 3] -> (density [N], albedo [N, 3]), evaluated ``chunk`` points at a time."""
    parts = [field(points[i : i + chunk]) for i in range(0, len(points), chunk)]
    return torch.cat([d for d, _ in parts]), torch.cat([a for _, a in parts])


@torch.no_grad()
def density_volume(field: RadianceField, resolution: int, chunk_points: int = 65536) -> torch.Tensor:
    """-> density [resolution ** 3] on a lattice over the field's box, x slowest. Only points in the
    occupancy grid's occupied cells are evaluated; the others, far below any surface threshold by
    the grid's construction, get zero."""
    radius = field.spec.radius
    device = next(field.parameters()).device
    axis = torch.linspace(-radius, radius, resolution, device=device)
    lattice = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    occupied = torch.ones(len(lattice), dtype=torch.bool, device=device)
    if field.occupancy is not None:
        occupied = field.occupancy.is_occupied(lattice)
    density = torch.zeros(len(lattice), device=device)
    density[occupied] = torch.cat([field.density(chunk) for chunk in lattice[occupied].split(chunk_points)])
    return density


def extract_mesh(field: RadianceField, resolution: int, threshold: float) -> trimesh.Trimesh:
    """The ``density == threshold`` surface inside the field's box, with albedo as vertex colours."""
    radius = field.spec.radius
    device = next(field.parameters()).device
    density = density_volume(field, resolution)
    volume = density.reshape(resolution, resolution, resolution).cpu().numpy().astype(np.float64)
    if not (volume.max() > threshold > volume.min()):
        raise EmptyMeshError(
            f"no surface at export.threshold={threshold}: the density lies in [{volume.min():.3g}, {volume.max():.3g}]. "
            f"Set export.threshold inside that range, or train longer"
        )
    vertices, faces = mcubes.marching_cubes(volume, threshold)
    vertices = vertices / (resolution - 1) * (2 * radius) - radius  # mcubes' faces already point to low density
    _, albedo = query_field(field, torch.as_tensor(vertices, dtype=torch.float32, device=device))
    colors = (albedo.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)


def save_mesh(mesh: trimesh.Trimesh, path: Path) -> None:
    """Writes OBJ, GLB or PLY by the file's suffix, via a temporary name so a file is never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    mesh.export(partial)
    partial.replace(path)
