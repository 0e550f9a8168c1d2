"""Whole views of a representation as a validation strip and a turntable video."""
from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from threed.cameras import TurntableSpec, turntable_cameras
from threed.files import atomic_path
from threed.representation import Representation


def representation_device(representation: Representation):
    return next(representation.parameters()).device


def save_validation_strip(representation: Representation, turntable: TurntableSpec, views: int, resolution: int,
                          path: Path) -> None:
    """Renders ``views`` views around the object side by side into one PNG."""
    cameras = turntable_cameras(turntable, views, resolution, representation_device(representation))
    with atomic_path(path) as temporary:
        imageio.imwrite(temporary, np.concatenate(list(representation.render_images(cameras)), axis=1))


def save_turntable_video(representation: Representation, turntable: TurntableSpec, path: Path) -> None:
    """Renders the turntable's frames and writes them as an H.264 mp4."""
    cameras = turntable_cameras(turntable, turntable.frames, turntable.resolution, representation_device(representation))
    write_mp4(path, list(representation.render_images(cameras)), turntable.fps)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """H.264 mp4 of uint8 frames [H, W, 3], written atomically. H.264's 4:2:0 chroma needs even sides:
    odd ones get a white column or row."""
    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    with atomic_path(path) as temporary:
        imageio.mimwrite(temporary, [np.pad(f, pad, constant_values=255) for f in frames], fps=fps, macro_block_size=1,
                         format="FFMPEG")
