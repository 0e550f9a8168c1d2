"""Mesh extraction (marching cubes on the density grid) and export, +Y up as glTF requires: GLB and OBJ (+ MTL
+ PNG) with the colour field baked into a UV texture (``mesh.texture``), PLY with vertex colours."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mcubes
import numpy as np
import torch
import trimesh
from PIL import Image

from mesh.cavities import inside_cavities
from mesh.texture import bake, unwrap
from nerf.field import RadianceField
from threed.errors import UserError
from threed.files import atomic_path


class EmptyMeshError(UserError):
    pass


@dataclass
class ExportSpec:
    resolution: int = dataclasses.field(default=128, metadata={"range": (8, 1024)})
    threshold: float = dataclasses.field(default=5.0, metadata={"range": (0.0, None)})
    formats: list[str] = dataclasses.field(default_factory=lambda: ["obj", "glb", "ply"])
    # A NeRF is often hollow (only its shell is ever seen): pockets of low density that the outside
    # cannot reach count as inside, so the mesh is the outer surface alone.
    fill_cavities: bool = True
    # Pockets the outside reaches only through openings narrower than about twice this many voxels count
    # as inside too (a morphological closing of the solid before the fill): a field carved from a capped
    # blob (geometry.blob_cap) leaves tunnels in its unseen interior. 0: only sealed pockets.
    cavity_closing: int = dataclasses.field(default=0, metadata={"range": (0, 16)})
    # Pieces with fewer faces than this fraction of the largest piece's (floaters) are left out.
    min_component_fraction: float = dataclasses.field(default=0.0, metadata={"range": (0.0, 1.0)})
    # The GLB's and OBJ's texture: its side in texels, and the texels kept free around each UV chart.
    texture_size: int = dataclasses.field(default=1024, metadata={"range": (16, 8192)})
    texture_padding: int = dataclasses.field(default=4, metadata={"range": (0, 64)})


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


def extract_mesh(field: RadianceField, spec: ExportSpec) -> trimesh.Trimesh:
    """The ``density == spec.threshold`` surface inside the field's box, with albedo as vertex colours."""
    radius = field.spec.radius
    device = next(field.parameters()).device
    density = density_volume(field, spec.resolution)
    volume = density.reshape((spec.resolution,) * 3).cpu().numpy().astype(np.float64)
    if not (volume.max() > spec.threshold > volume.min()):
        raise EmptyMeshError(
            f"no surface at export.threshold={spec.threshold}: the density lies in [{volume.min():.3g}, {volume.max():.3g}]. "
            f"Set export.threshold inside that range, or train longer"
        )
    if spec.fill_cavities:
        volume[inside_cavities(volume > spec.threshold, spec.cavity_closing)] = volume.max()
    vertices, faces = mcubes.marching_cubes(volume, spec.threshold)
    vertices = vertices / (spec.resolution - 1) * (2 * radius) - radius  # mcubes' faces already point to low density
    _, albedo = query_field(field, torch.as_tensor(vertices, dtype=torch.float32, device=device))
    colors = (albedo.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
    return without_small_components(mesh, spec.min_component_fraction) if spec.min_component_fraction > 0 else mesh


def without_small_components(mesh: trimesh.Trimesh, min_fraction: float) -> trimesh.Trimesh:
    """The mesh without its connected pieces of fewer faces than ``min_fraction`` of the largest's."""
    pieces = mesh.split(only_watertight=False)
    largest = max(len(piece.faces) for piece in pieces)
    return trimesh.util.concatenate([piece for piece in pieces if len(piece.faces) >= min_fraction * largest])


# The project's world has +Z up (the canon, the cameras); glTF requires +Y up, and viewers read OBJ and PLY
# the same way, so every mesh file is written +Y up: (x, y, z) -> (x, z, -y), a quarter turn about x.
WORLD_TO_FILE = trimesh.transformations.rotation_matrix(-np.pi / 2, [1.0, 0.0, 0.0])


TEXTURED_FORMATS = frozenset({"glb", "obj"})  # written with a UV texture; PLY keeps vertex colours


@torch.no_grad()
def with_texture(mesh: trimesh.Trimesh, albedo: Callable[[torch.Tensor], torch.Tensor], spec: ExportSpec,
                 device: torch.device | str = "cpu") -> trimesh.Trimesh:
    """``mesh`` cut along xatlas' seams, with ``albedo`` (points [N, 3] on ``device`` -> RGB [N, 3]) baked into
    a ``spec.texture_size`` square texture: its base colour, unlit (metallic 0, roughness 1)."""
    layout = unwrap(mesh.vertices, mesh.faces, spec.texture_size, spec.texture_padding)
    vertices = np.asarray(mesh.vertices)[layout.source_vertex]
    image = bake(torch.as_tensor(vertices, dtype=torch.float32, device=device),
                 torch.as_tensor(layout.faces, device=device), torch.as_tensor(layout.uv, device=device),
                 lambda points: albedo(points).clamp(0, 1), spec.texture_size)
    texture = Image.fromarray((image.cpu().numpy() * 255).round().astype(np.uint8))
    material = trimesh.visual.material.PBRMaterial(name="albedo", baseColorTexture=texture,
                                                   baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0,
                                                   roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=layout.uv, material=material)
    return trimesh.Trimesh(vertices=vertices, faces=layout.faces, visual=visual, process=False)


def save_mesh(mesh: trimesh.Trimesh, path: Path) -> None:
    """Writes OBJ, GLB or PLY by the file's suffix, atomically, +Y up (``WORLD_TO_FILE``); a textured OBJ
    also writes its MTL (``<stem>.mtl``) and texture image beside it."""
    upright = mesh.copy()
    upright.apply_transform(WORLD_TO_FILE)
    if path.suffix == ".obj" and upright.visual.kind == "texture":
        text, beside = trimesh.exchange.obj.export_obj(upright, return_texture=True, mtl_name=f"{path.stem}.mtl")
        for name, content in beside.items():
            with atomic_path(path.with_name(name)) as temporary:
                temporary.write_bytes(content)
        with atomic_path(path) as temporary:
            temporary.write_text(text)
        return
    with atomic_path(path) as temporary:
        upright.export(temporary)


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """A mesh file as a viewer reads it (+Y up: a GLB, or what ``save_mesh`` wrote), in the world's frame (+Z up)."""
    mesh = trimesh.load(path, force="mesh", process=False)
    mesh.apply_transform(np.linalg.inv(WORLD_TO_FILE))
    return mesh
