"""Shading of the field's samples: unshaded albedo, or diffuse with a point light.

``diffuse`` follows DreamFusion: per batch, one mode is drawn: ``albedo`` (unshaded), ``textureless``
(a white material lit, so the geometry alone must explain the image) or ``lambertian``
(albedo * (ambient + diffuse * max(0, n . l))).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SHADING_MODES = ("albedo", "textureless", "lambertian")


@dataclass
class ShadingSpec:
    model: str = field(default="unshaded", metadata={"choices": ("unshaded", "diffuse")})
    ambient: float = field(default=0.1, metadata={"range": (0.0, None)})
    diffuse: float = field(default=0.9, metadata={"range": (0.0, None)})
    albedo_probability: float = field(default=0.2, metadata={"range": (0.0, 1.0)})
    textureless_probability: float = field(default=0.5, metadata={"range": (0.0, 1.0)})  # of the lit draws

    @property
    def needs_normals(self) -> bool:
        return self.model == "diffuse"


@dataclass
class Lighting:
    """A point light per ray and the batch's shading mode."""

    positions: torch.Tensor  # [N, 3], the light of each ray's view
    mode: str  # one of SHADING_MODES


def sample_shading_mode(spec: ShadingSpec, generator: torch.Generator) -> str:
    """The training batch's mode; "albedo" whenever the model is unshaded."""
    if spec.model == "unshaded":
        return "albedo"
    draw = torch.rand(2, generator=generator, device=generator.device).tolist()
    if draw[0] < spec.albedo_probability:
        return "albedo"
    return "textureless" if draw[1] < spec.textureless_probability else "lambertian"


def shade(albedo: torch.Tensor, normals: torch.Tensor | None, points: torch.Tensor, light_positions: torch.Tensor,
          mode: str, spec: ShadingSpec) -> torch.Tensor:
    """albedo, normals, points, light_positions: [M, 3] per sample -> colour [M, 3]."""
    if mode == "albedo":
        return albedo
    to_light = F.normalize(light_positions - points, dim=-1)
    light = spec.ambient + spec.diffuse * (normals * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    return light.expand_as(albedo) if mode == "textureless" else albedo * light
