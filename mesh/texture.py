"""UV textures for exported meshes: an xatlas unwrap, a colour function baked into a texture image, and
the texture sampled back at UV coordinates as a viewer samples it.

Conventions are glTF's (and trimesh's): UV (0, 0) is the image's bottom-left corner, rows of the image
run top to bottom, texel (i, j) has its centre at ((i + 0.5) / W, 1 - (j + 0.5) / H), and sampling is
bilinear. Baking rasterizes the UV layout with ``mesh.rasterize`` (UV as clip-space x, y), so every
texel centre inside a chart gets the colour of the surface point it maps to; texels outside the charts
take their nearest chart texel's colour, so bilinear sampling and mip-mapping at a chart's border never
blend in the empty background (the seams are padded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import xatlas
from scipy import ndimage

from mesh.rasterize import interpolate, rasterize


@dataclass
class UVLayout:
    """A mesh cut along its seams and laid out in the unit square."""

    source_vertex: np.ndarray  # [M] int: the original vertex each UV vertex copies
    faces: np.ndarray  # [F, 3] int: the original triangles, indexing the UV vertices
    uv: np.ndarray  # [M, 2] float in [0, 1]


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int) -> UVLayout:
    """xatlas' charts of the mesh (vertices [V, 3], faces [F, 3]) packed for a ``texture_size`` square texture
    with ``padding`` texels between charts."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    packing = xatlas.PackOptions()
    packing.resolution = texture_size
    packing.padding = padding
    packing.bilinear = True
    atlas.generate(pack_options=packing)
    source_vertex, uv_faces, uv = atlas[0]
    return UVLayout(source_vertex.astype(np.int64), uv_faces.astype(np.int64), uv.astype(np.float32))


def bake(points: torch.Tensor, faces: torch.Tensor, uv: torch.Tensor, colour: Callable[[torch.Tensor], torch.Tensor],
         size: int, chunk: int = 262144) -> torch.Tensor:
    """The texture image [size, size, 3] (rows top to bottom) of ``colour`` (points [N, 3] -> RGB [N, 3]) on
    the surface whose UV vertices have positions ``points`` [M, 3] and coordinates ``uv`` [M, 2]
    (triangles ``faces`` [F, 3]); the texels outside every chart padded from the nearest inside."""
    flat = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=-1)
    raster = rasterize(flat, faces, size, size)  # row 0 is v's bottom
    covered = raster.triangle >= 0
    if not covered.any():
        raise ValueError(f"no texel centre of a {size} x {size} texture lies inside the UV layout's triangles")
    surface_points = interpolate(points, raster, faces)[covered]
    image = torch.zeros(size, size, 3, dtype=points.dtype, device=points.device)
    image[covered] = torch.cat([colour(part) for part in surface_points.split(chunk)]).to(points.dtype)
    return pad_from_nearest(image, covered).flip(0)


def pad_from_nearest(image: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """``image`` [H, W, C] with every texel outside ``filled`` [H, W] set to its nearest filled texel's value."""
    _, nearest = ndimage.distance_transform_edt(~filled.cpu().numpy(), return_indices=True)
    rows, columns = (torch.as_tensor(index, device=image.device) for index in nearest)
    return image[rows, columns]


def sample(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples [N, C] of ``image`` [H, W, C] (rows top to bottom) at ``uv`` [N, 2], as glTF viewers sample."""
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], dim=-1)[None, None]  # [1, 1, N, 2]
    texels = image.permute(2, 0, 1)[None]
    sampled = torch.nn.functional.grid_sample(texels, grid.to(image.dtype), mode="bilinear", padding_mode="border",
                                              align_corners=False)
    return sampled[0, :, 0].T
