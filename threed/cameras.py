"""Cameras around the object. Conventions (those of ShapeWorld): z up, right-handed, every camera
looks at the origin; azimuth 0 sits on +x, azimuth 90 on +y; elevation is measured from the
xy-plane. Angles in the specs are in degrees."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nerf.rays import Rays, pinhole_rays


@dataclass
class ResolutionStage:
    """From training step ``step`` on, render ``height`` x ``width``."""

    step: int
    height: int
    width: int


@dataclass
class CameraSpec:
    """Random training cameras: each value is drawn uniformly from its [low, high] range.

    The point light sits at ``light_distance`` (times the camera's distance) in the direction of
    the camera, perturbed by a normal draw of scale ``light_perturb``, as in DreamFusion.
    """

    batch_size: int = field(default=1, metadata={"range": (1, None)})
    height: int = field(default=64, metadata={"range": (8, 4096)})
    width: int = field(default=64, metadata={"range": (8, 4096)})
    resolution_schedule: list[ResolutionStage] = field(default_factory=list)
    distance: list[float] = field(default_factory=lambda: [1.5, 2.0])
    fovy_deg: list[float] = field(default_factory=lambda: [40.0, 70.0])
    elevation_deg: list[float] = field(default_factory=lambda: [-10.0, 45.0])
    azimuth_deg: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    light_distance: list[float] = field(default_factory=lambda: [0.8, 1.5])
    light_perturb: float = field(default=1.0, metadata={"range": (0.0, None)})

    def __post_init__(self):
        for name in ("distance", "fovy_deg", "elevation_deg", "azimuth_deg", "light_distance"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise ValueError(f"camera.{name} must be a [low, high] pair with low <= high, got {list(low_high)}")
        steps = [stage.step for stage in self.resolution_schedule]
        if steps != sorted(steps):
            raise ValueError(f"camera.resolution_schedule must be ordered by step, got steps {steps}")

    def resolution_at(self, step: int) -> tuple[int, int]:
        """(height, width) of the training renders at ``step``."""
        height, width = self.height, self.width
        for stage in self.resolution_schedule:
            if step >= stage.step:
                height, width = stage.height, stage.width
        return height, width


@dataclass
class TurntableSpec:
    """A full circle of cameras at one elevation, for videos."""

    frames: int = field(default=60, metadata={"range": (1, None)})
    fps: int = field(default=30, metadata={"range": (1, 240)})
    resolution: int = field(default=256, metadata={"range": (16, 4096)})
    elevation_deg: float = 15.0
    distance: float = field(default=2.0, metadata={"range": (0.0, None)})
    fovy_deg: float = field(default=50.0, metadata={"range": (1.0, 179.0)})


@dataclass
class CameraBatch:
    c2w: torch.Tensor  # [B, 4, 4] camera-to-world (OpenGL: the camera looks down its -z)
    fovy: torch.Tensor  # [B] vertical field of view, radians
    elevation_deg: torch.Tensor  # [B]
    azimuth_deg: torch.Tensor  # [B]
    distance: torch.Tensor  # [B]
    height: int
    width: int
    light_positions: torch.Tensor | None = None  # [B, 3], training cameras only

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index: int | slice) -> "CameraBatch":
        """Cameras ``index`` as a batch (of one for an integer)."""
        pick = slice(index, index + 1) if isinstance(index, int) else index
        lights = self.light_positions[pick] if self.light_positions is not None else None
        return CameraBatch(self.c2w[pick], self.fovy[pick], self.elevation_deg[pick], self.azimuth_deg[pick],
                           self.distance[pick], self.height, self.width, lights)

    def rays(self) -> Rays:
        return pinhole_rays(self.c2w, self.fovy, self.height, self.width)


def look_at_origin(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """[B] angles and distances -> [B, 4, 4] camera-to-world matrices looking at the origin, +z up."""
    elevation, azimuth = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    position = distance[:, None] * torch.stack(
        [torch.cos(elevation) * torch.cos(azimuth), torch.cos(elevation) * torch.sin(azimuth), torch.sin(elevation)], dim=-1
    )
    forward = -position / position.norm(dim=-1, keepdim=True)
    world_up = torch.tensor([0.0, 0.0, 1.0], device=position.device).expand_as(forward)
    right = torch.linalg.cross(forward, world_up)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, device=position.device).repeat(len(position), 1, 1)
    c2w[:, :3, :3] = torch.stack([right, up, -forward], dim=-1)
    c2w[:, :3, 3] = position
    return c2w


def make_cameras(elevation_deg, azimuth_deg, distance, fovy_deg, height: int, width: int) -> CameraBatch:
    return CameraBatch(look_at_origin(elevation_deg, azimuth_deg, distance), torch.deg2rad(fovy_deg),
                       elevation_deg, azimuth_deg, distance, height, width)


def sample_cameras(spec: CameraSpec, generator: torch.Generator, step: int = 0) -> CameraBatch:
    """Draws ``spec.batch_size`` cameras, with their point lights, on the generator's device."""

    def uniform(low_high: list[float]) -> torch.Tensor:
        low, high = low_high
        return low + (high - low) * torch.rand(spec.batch_size, generator=generator, device=generator.device)

    cameras = make_cameras(uniform(spec.elevation_deg), uniform(spec.azimuth_deg), uniform(spec.distance),
                           uniform(spec.fovy_deg), *spec.resolution_at(step))
    positions = cameras.c2w[:, :3, 3]
    wobble = spec.light_perturb * torch.randn(positions.shape, generator=generator, device=generator.device)
    direction = torch.nn.functional.normalize(positions / positions.norm(dim=-1, keepdim=True) + wobble, dim=-1)
    cameras.light_positions = direction * (uniform(spec.light_distance) * cameras.distance)[:, None]
    return cameras


def turntable_cameras(spec: TurntableSpec, frames: int, resolution: int, device: torch.device) -> CameraBatch:
    """``frames`` cameras evenly spaced in azimuth starting at 0, at the spec's elevation and distance."""
    azimuth = torch.arange(frames, device=device, dtype=torch.float32) * (360.0 / frames)

    def constant(value: float) -> torch.Tensor:
        return torch.full((frames,), float(value), device=device)

    return make_cameras(constant(spec.elevation_deg), azimuth, constant(spec.distance), constant(spec.fovy_deg),
                        resolution, resolution)
