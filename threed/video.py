"""Rendering whole views to images and turntable videos."""
from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from nerf.field import RadianceField
from nerf.renderer import RenderSpec, render_rays_chunked
from threed.cameras import CameraBatch, TurntableSpec, turntable_cameras


@torch.no_grad()
def render_views(field: RadianceField, cameras: CameraBatch, spec: RenderSpec, background_color: list[float]) -> np.ndarray:
    """-> uint8 images [B, H, W, 3] (albedo over a solid background), one view at a time in ray chunks."""
    views = []
    for index in range(len(cameras)):
        rays = cameras[index].rays()
        background = torch.tensor(background_color, device=rays.origins.device).expand(len(rays), 3)
        rgb = render_rays_chunked(field, rays, spec, field.occupancy, background).rgb
        rgb = rgb.reshape(cameras.height, cameras.width, 3)
        views.append((rgb.clamp(0, 1) * 255).round().byte().cpu().numpy())
    return np.stack(views)


def save_validation_strip(field: RadianceField, render_spec: RenderSpec, background_color: list[float],
                          turntable: TurntableSpec, views: int, resolution: int, path: Path) -> None:
    """Renders ``views`` views around the object side by side into one PNG."""
    device = next(field.parameters()).device
    images = render_views(field, turntable_cameras(turntable, views, resolution, device), render_spec, background_color)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, np.concatenate(list(images), axis=1))


def save_turntable_video(field: RadianceField, render_spec: RenderSpec, background_color: list[float],
                         turntable: TurntableSpec, path: Path) -> None:
    """Renders the turntable's frames and writes them as an H.264 mp4 (atomically)."""
    device = next(field.parameters()).device
    cameras = turntable_cameras(turntable, turntable.frames, turntable.resolution, device)
    write_mp4(path, list(render_views(field, cameras, render_spec, background_color)), turntable.fps)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """H.264 mp4 of uint8 frames [H, W, 3], written atomically. H.264's 4:2:0 chroma needs even sides:
    odd ones get a white column or row."""
    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    imageio.mimwrite(partial, [np.pad(f, pad, constant_values=255) for f in frames], fps=fps, macro_block_size=1,
                     format="FFMPEG")
    partial.replace(path)
