"""Rays and their construction from pinhole cameras (OpenGL convention: the camera looks down -z)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rays:
    origins: torch.Tensor  # [N, 3]
    directions: torch.Tensor  # [N, 3], unit length

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, index: slice) -> "Rays":
        return Rays(self.origins[index], self.directions[index])


def pinhole_rays(c2w: torch.Tensor, fovy: torch.Tensor, height: int, width: int) -> Rays:
    """c2w: [B, 4, 4] camera-to-world, fovy: [B] vertical field of view in radians.

    Returns B * height * width rays, ordered camera, row (top to bottom), column (left to right).
    """
    device, dtype = c2w.device, c2w.dtype
    rows = torch.arange(height, device=device, dtype=dtype) + 0.5
    cols = torch.arange(width, device=device, dtype=dtype) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")  # [H, W]
    focal = 0.5 * height / torch.tan(0.5 * fovy)  # [B]
    x = (u - 0.5 * width)[None] / focal[:, None, None]
    y = -(v - 0.5 * height)[None] / focal[:, None, None]
    camera_dirs = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
    directions = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], camera_dirs)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = c2w[:, None, None, :3, 3].expand_as(directions)
    return Rays(origins.reshape(-1, 3), directions.reshape(-1, 3))


def intersect_box(rays: Rays, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [N] of each ray through the box [-radius, radius]^3.

    Rays that miss the box get ``far == near``, an empty interval.
    """
    inverse = 1.0 / torch.where(rays.directions.abs() < 1e-9, torch.full_like(rays.directions, 1e-9), rays.directions)
    t0 = (-radius - rays.origins) * inverse
    t1 = (radius - rays.origins) * inverse
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, torch.maximum(far, near)
