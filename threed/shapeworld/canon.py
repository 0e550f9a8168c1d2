"""The ShapeWorld canon: six procedural shapes in six colours, their captions and prompts (see
shared/design/shapeworld.md; the canon below is fixed).

Conventions are those of ``threed.cameras``: scene units, z up, right-handed, azimuth 0 on +x.
Every shape is a signed distance function over points [N, 3] -> [N] (negative inside).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from guidance.prompts import VIEWS, ClosedVocabulary, ViewPromptSpec, view_index, view_prompt
from threed.cameras import CameraSpec

SignedDistance = Callable[[torch.Tensor], torch.Tensor]

SCENE_HALF_EXTENT = 0.5  # every shape lies inside [-0.5, 0.5]^3
IMAGE_SIZE = 64
AMBIENT, DIFFUSE = 0.35, 0.65
LIGHT_DIRECTION = tuple(c / math.hypot(0.3, 0.2, 1.0) for c in (0.3, 0.2, 1.0))  # fixed in the world

ALBEDOS = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.20, 0.70, 0.25),
    "blue": (0.20, 0.35, 0.85),
    "yellow": (0.90, 0.80, 0.20),
    "purple": (0.60, 0.30, 0.75),
    "orange": (0.95, 0.55, 0.15),
}
COLOURS = tuple(ALBEDOS)

# The training camera distribution of the data set (shapeworld.md, "Cameras").
DATASET_CAMERAS = CameraSpec(height=IMAGE_SIZE, width=IMAGE_SIZE, distance=[1.2, 1.6], fovy_deg=[40.0, 60.0],
                             elevation_deg=[-10.0, 60.0], azimuth_deg=[-180.0, 180.0])


# ---------------------------------------------------------------------------------------------
# Signed distances
# ---------------------------------------------------------------------------------------------

def _radial(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 3] -> distance from the z axis [N] and height z [N]: the meridian half-plane of a solid of revolution."""
    return points[:, :2].norm(dim=-1), points[:, 2]


def _box_distance(excess: torch.Tensor) -> torch.Tensor:
    """Exact distance to an axis-aligned box from ``excess`` = |p| - half sizes, [N, D] -> [N]."""
    return excess.clamp_min(0.0).norm(dim=-1) + excess.amax(dim=-1).clamp_max(0.0)


def sphere_distance(points: torch.Tensor) -> torch.Tensor:
    """Sphere of radius 0.35. [N, 3] -> [N], exact."""
    return points.norm(dim=-1) - 0.35


def cube_distance(points: torch.Tensor) -> torch.Tensor:
    """Axis-aligned cube of side 0.5. [N, 3] -> [N], exact."""
    return _box_distance(points.abs() - 0.25)


def torus_distance(points: torch.Tensor) -> torch.Tensor:
    """Torus about z, major radius 0.28, minor radius 0.10. [N, 3] -> [N], exact."""
    rho, z = _radial(points)
    return torch.hypot(rho - 0.28, z) - 0.10


def cylinder_distance(points: torch.Tensor) -> torch.Tensor:
    """Capped cylinder about z, radius 0.25, z in [-0.3, 0.3]. [N, 3] -> [N], exact."""
    rho, z = _radial(points)
    return _box_distance(torch.stack([rho - 0.25, z.abs() - 0.3], dim=-1))


def cone_distance(points: torch.Tensor) -> torch.Tensor:
    """Capped cone about z, base radius 0.3 at z = -0.3, apex at z = 0.3. [N, 3] -> [N], exact.

    In the meridian half-plane (rho, z) the cone is a triangle; the distance is the smaller of the
    distances to the base segment and to the slanted side (Quilez's capped cone with a zero top radius).
    """
    rho, z = _radial(points)
    meridian = torch.stack([rho, z], dim=-1)  # [N, 2]
    apex = meridian.new_tensor([0.0, 0.3])
    apex_to_rim = meridian.new_tensor([0.3, -0.6])
    base_radius = torch.where(z < 0.0, 0.3, 0.0)  # the top "cap" is the apex, a disc of radius zero
    from_cap = torch.stack([rho - torch.minimum(rho, base_radius), z.abs() - 0.3], dim=-1)
    along_side = ((meridian - apex) @ apex_to_rim / apex_to_rim.dot(apex_to_rim)).clamp(0.0, 1.0)
    from_side = meridian - apex - along_side[:, None] * apex_to_rim
    inside = (from_side[:, 0] < 0.0) & (from_cap[:, 1] < 0.0)
    distance = torch.minimum(from_cap.square().sum(-1), from_side.square().sum(-1)).sqrt()
    return torch.where(inside, -distance, distance)


VASE_HALF_HEIGHT = 0.35


def vase_radius(z: torch.Tensor) -> torch.Tensor:
    """The vase's profile: radius 0.15 + 0.12 sin(pi (z + 0.35) / 0.7) for z in [-0.35, 0.35]."""
    return 0.15 + 0.12 * torch.sin(math.pi * (z + VASE_HALF_HEIGHT) / (2 * VASE_HALF_HEIGHT))


# |d/dz vase_radius| <= 0.12 pi / 0.7, so rho - vase_radius(z) changes at most this fast in space.
_VASE_LIPSCHITZ = math.hypot(1.0, 0.12 * math.pi / (2 * VASE_HALF_HEIGHT))


def vase_distance(points: torch.Tensor) -> torch.Tensor:
    """Capped solid of revolution about z with radius ``vase_radius(z)``. [N, 3] -> [N].

    Not exact but a tight signed lower bound: same sign and zero set as the exact distance, and
    true distance / _VASE_LIPSCHITZ <= |value| <= true distance (about 0.88 to 1). It is the capped
    cylinder's formula with the radial excess divided by its Lipschitz constant. Sphere tracing stays
    safe with it, and marching cubes places the surface where the exact distance would.
    """
    rho, z = _radial(points)
    radial_excess = rho - vase_radius(z.clamp(-VASE_HALF_HEIGHT, VASE_HALF_HEIGHT))
    return _box_distance(torch.stack([radial_excess / _VASE_LIPSCHITZ, z.abs() - VASE_HALF_HEIGHT], dim=-1))


SIGNED_DISTANCES: dict[str, SignedDistance] = {
    "sphere": sphere_distance,
    "cube": cube_distance,
    "torus": torus_distance,
    "cylinder": cylinder_distance,
    "cone": cone_distance,
    "vase": vase_distance,
}
SHAPES = tuple(SIGNED_DISTANCES)


# ---------------------------------------------------------------------------------------------
# Views and captions
# ---------------------------------------------------------------------------------------------

# The prompt processor's thresholds, but for overhead: threestudio's 60 degrees is the top of the
# data set's elevation range, so no image would be overhead. ShapeWorld configs use these too.
SHAPEWORLD_VIEWS = ViewPromptSpec(overhead_threshold_deg=50.0)


def view_label(elevation_deg: float, azimuth_deg: float, spec: ViewPromptSpec = SHAPEWORLD_VIEWS) -> str:
    """"front", "side", "back" or "overhead" for one camera (angles in degrees)."""
    return VIEWS[int(view_index(torch.tensor([float(elevation_deg)]), torch.tensor([float(azimuth_deg)]), spec))]


def caption(shape: str, colour: str, view: str | None = None) -> str:
    """"a red cube", or with a view "a red cube, front view"."""
    prompt = f"a {colour} {shape}"
    return prompt if view is None else view_prompt(prompt, view)


PROMPTS = tuple(caption(shape, colour) for shape in SHAPES for colour in COLOURS)  # shape-major, 36
# One prompt of each shape, each in another colour: the quality table's and the demo's examples.
SHOWCASE_PROMPTS = ("a red sphere", "a green cube", "a blue torus", "a yellow cylinder", "a purple cone", "an orange vase")


# The teacher's captions, as a closed vocabulary: saved beside the teacher's pipeline (train_teacher), so
# that "an orange torus", "Orange torus" or "a torus, orange" reach the object of "a orange torus".
VOCABULARY = ClosedVocabulary("a {colour} {shape}", {"colour": COLOURS, "shape": SHAPES})


def parse_prompt(prompt: str) -> tuple[str, str]:
    """"a red torus" (or "A torus, red", "red torus, side view": ``VOCABULARY``) -> ("torus", "red"); a
    ValueError names the canon otherwise."""
    try:
        words, _ = VOCABULARY.parse(prompt)
    except ValueError:
        raise ValueError(f"{prompt!r} is not a ShapeWorld prompt: use 'a COLOUR SHAPE' with a colour of "
                         f"{list(COLOURS)} and a shape of {list(SHAPES)}") from None
    return words["shape"], words["colour"]


def is_canon_prompt(prompt: str) -> bool:
    try:
        parse_prompt(prompt)
    except ValueError:
        return False
    return True
