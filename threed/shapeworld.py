"""ShapeWorld: six procedural shapes in six colours, the data set of the embedded teacher and the
ground truth of the evaluation (see shared/design/shapeworld.md; the canon below is fixed).

Conventions are those of ``threed.cameras``: scene units, z up, right-handed, azimuth 0 on +x.
Every shape is a signed distance function over points [N, 3] -> [N] (negative inside); images are
ray cast by sphere tracing it, meshes are extracted by marching cubes.

Command line::

    python -m threed.shapeworld generate OUT.npz --per-prompt N --seed S
    python -m threed.shapeworld eval MESH --prompt "a red torus"
    python -m threed.shapeworld meshes OUT_DIR
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import mcubes
import numpy as np
import torch
import trimesh
from tqdm import tqdm

from guidance.prompts import VIEWS, ViewPromptSpec, view_index, view_prompt
from nerf.rays import Rays, intersect_box
from threed.mesh_metrics import score_mesh
from threed.cameras import CameraBatch, CameraSpec, sample_cameras

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


def surface_normals(signed_distance: SignedDistance, points: torch.Tensor, step: float = 5e-4) -> torch.Tensor:
    """Unit outward normals [N, 3] at points [N, 3] near the surface: central differences of the distance."""
    offsets = step * torch.eye(3, device=points.device, dtype=points.dtype)  # [3, 3]

    def along_axes(sign: float) -> torch.Tensor:
        return signed_distance((points[:, None, :] + sign * offsets).reshape(-1, 3)).reshape(-1, 3)

    return torch.nn.functional.normalize(along_axes(1.0) - along_axes(-1.0), dim=-1)


# ---------------------------------------------------------------------------------------------
# Ray casting
# ---------------------------------------------------------------------------------------------

@dataclass
class RayHits:
    hit: torch.Tensor  # [N] bool, the ray meets the surface
    depth: torch.Tensor  # [N] ray parameter of the first surface point (meaningless where not hit)

    def points(self, rays: Rays) -> torch.Tensor:
        """The surface points [M, 3] of the rays that hit, in ray order."""
        return rays.origins[self.hit] + self.depth[self.hit, None] * rays.directions[self.hit]


def sphere_trace(signed_distance: SignedDistance, rays: Rays, max_steps: int = 64,
                 tolerance: float = 1e-4) -> RayHits:
    """First intersections of rays [N] with the surface, inside the scene box.

    Rays step by the distance value (never past the surface, as it bounds the true distance) until it
    falls under ``tolerance`` (a hit) or they leave the box (a miss). The few grazing rays still marching
    after ``max_steps`` are settled by ``search_crossing`` over the rest of their way through the box.
    """
    near, far = intersect_box(rays, SCENE_HALF_EXTENT)
    depth = near.clone()
    hit = torch.zeros_like(near, dtype=torch.bool)
    marching = torch.nonzero(far > near).squeeze(-1)  # indices of the rays still on their way
    for _ in range(max_steps):
        if len(marching) == 0:
            break
        distance = signed_distance(rays.origins[marching] + depth[marching, None] * rays.directions[marching])
        arrived = distance < tolerance
        hit[marching[arrived]] = True
        depth[marching] += torch.where(arrived, 0.0, distance)
        marching = marching[~arrived & (depth[marching] < far[marching])]
    if len(marching) > 0:
        leftover = search_crossing(signed_distance, rays[marching], depth[marching], far[marching])
        hit[marching] = leftover.hit
        depth[marching] = leftover.depth
    return RayHits(hit, depth)


def search_crossing(signed_distance: SignedDistance, rays: Rays, start: torch.Tensor, end: torch.Tensor,
                    samples: int = 64, bisections: int = 24) -> RayHits:
    """First sign change of the distance on each ray [N] between ``start`` [N] (outside) and ``end`` [N].

    Samples the interval evenly, then bisects the first step that enters the shape.
    """
    fractions = torch.linspace(0.0, 1.0, samples, device=start.device)
    depths = start[:, None] + (end - start)[:, None] * fractions  # [N, S]

    def inside_at(depth: torch.Tensor) -> torch.Tensor:
        points = rays.origins[:, None, :] + depth[..., None] * rays.directions[:, None, :]  # [N, K, 3]
        return signed_distance(points.reshape(-1, 3)).reshape(depth.shape) < 0.0

    inside = inside_at(depths)
    first_inside = inside.int().argmax(dim=-1, keepdim=True)  # 0 where never inside
    low = depths.gather(1, (first_inside - 1).clamp_min(0))
    high = depths.gather(1, first_inside)
    for _ in range(bisections):
        middle = 0.5 * (low + high)
        middle_inside = inside_at(middle)
        low, high = torch.where(middle_inside, low, middle), torch.where(middle_inside, middle, high)
    return RayHits(inside.any(dim=-1), high.squeeze(-1))


def render_sdf(signed_distance: SignedDistance, albedo: torch.Tensor,
               cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Shaded images [B, H, W, 3] in [0, 1] and silhouettes [B, H, W] (bool) of a surface.

    albedo: [B, 3], one colour per camera. Shading is albedo * (AMBIENT + DIFFUSE * max(0, n . l)) with
    the world-fixed LIGHT_DIRECTION; the background is exactly white.
    """
    rays = cameras.rays()
    hits = sphere_trace(signed_distance, rays)
    normals = surface_normals(signed_distance, hits.points(rays))
    light = normals.new_tensor(LIGHT_DIRECTION)
    brightness = AMBIENT + DIFFUSE * (normals @ light).clamp_min(0.0)  # [M]
    pixel_albedo = albedo.to(normals).repeat_interleave(cameras.height * cameras.width, dim=0)[hits.hit]  # [M, 3]
    colours = torch.ones_like(rays.origins)
    colours[hits.hit] = pixel_albedo * brightness[:, None]
    shape = (len(cameras), cameras.height, cameras.width)
    return colours.reshape(*shape, 3), hits.hit.reshape(shape)


def render_shape_with_mask(shape: str, colour: str, cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A canon object seen by each camera: images [B, H, W, 3] in [0, 1] and silhouettes [B, H, W] (bool)."""
    albedo = cameras.c2w.new_tensor(ALBEDOS[colour]).expand(len(cameras), 3)
    return render_sdf(SIGNED_DISTANCES[shape], albedo, cameras)


def render_shape(shape: str, colour: str, cameras: CameraBatch) -> torch.Tensor:
    """A canon object seen by each camera: images [B, H, W, 3] in [0, 1] on a white background."""
    return render_shape_with_mask(shape, colour, cameras)[0]


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


# ---------------------------------------------------------------------------------------------
# Data set
# ---------------------------------------------------------------------------------------------

def sample_dataset_cameras(n: int, generator: torch.Generator) -> CameraBatch:
    """``n`` cameras of 64 x 64 pixels from the data set's distribution, on the generator's device."""
    return sample_cameras(replace(DATASET_CAMERAS, batch_size=n), generator)


def generate_dataset(n_per_prompt: int, seed: int, chunk_size: int = 96, show_progress: bool = False) -> dict:
    """Renders ``n_per_prompt`` random views of each of the 36 prompts, ordered shape, colour, view.

    Returns numpy arrays over N = 36 * n_per_prompt images: ``images`` uint8 [N, 64, 64, 3], ``masks``
    bool [N, 64, 64], ``shape_index`` / ``colour_index`` / ``view_index`` int64 [N] (into SHAPES,
    COLOURS, VIEWS, also given as ``shape_names`` / ``colour_names`` / ``view_names``), ``captions``
    (list of N str), and the cameras: ``elevation_deg``, ``azimuth_deg``, ``distance``, ``fovy_deg``
    float32 [N] and ``c2w`` float32 [N, 4, 4]. The same seed gives the same data set.
    """
    per_shape = len(COLOURS) * n_per_prompt
    cameras = sample_dataset_cameras(len(SHAPES) * per_shape, torch.Generator().manual_seed(seed))
    shape_index = torch.arange(len(SHAPES)).repeat_interleave(per_shape)
    colour_index = torch.arange(len(COLOURS)).repeat_interleave(n_per_prompt).repeat(len(SHAPES))
    views = view_index(cameras.elevation_deg, cameras.azimuth_deg, SHAPEWORLD_VIEWS)
    albedo = torch.tensor([ALBEDOS[colour] for colour in COLOURS])[colour_index]  # [N, 3]
    images, masks = [], []
    with tqdm(total=len(cameras), unit="image", disable=not show_progress) as progress:
        for shape_number, shape in enumerate(SHAPES):
            shape_end = (shape_number + 1) * per_shape
            for start in range(shape_number * per_shape, shape_end, chunk_size):
                rows = slice(start, min(start + chunk_size, shape_end))
                image, mask = render_sdf(SIGNED_DISTANCES[shape], albedo[rows], cameras[rows])
                images.append((image * 255.0).round().to(torch.uint8))
                masks.append(mask)
                progress.update(len(image))
    return {
        "images": torch.cat(images).numpy(),
        "masks": torch.cat(masks).numpy(),
        "captions": [caption(SHAPES[s], COLOURS[c], VIEWS[v])
                     for s, c, v in zip(shape_index.tolist(), colour_index.tolist(), views.tolist())],
        "shape_index": shape_index.numpy(),
        "colour_index": colour_index.numpy(),
        "view_index": views.numpy(),
        "shape_names": list(SHAPES),
        "colour_names": list(COLOURS),
        "view_names": list(VIEWS),
        "elevation_deg": cameras.elevation_deg.numpy(),
        "azimuth_deg": cameras.azimuth_deg.numpy(),
        "distance": cameras.distance.numpy(),
        "fovy_deg": torch.rad2deg(cameras.fovy).numpy(),
        "c2w": cameras.c2w.numpy(),
    }


def write_npz_atomically(path: Path, arrays: dict) -> None:
    """Compressed npz at ``path``, written under a temporary name first so that no half file is ever seen."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        np.savez_compressed(file, **{name: np.asarray(value) for name, value in arrays.items()})
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------

def ground_truth_mesh(shape: str, resolution: int = 128) -> trimesh.Trimesh:
    """The canon surface of ``shape`` (a fresh copy; see _ground_truth_mesh)."""
    return _ground_truth_mesh(shape, resolution).copy()


@functools.lru_cache(maxsize=12)
def _ground_truth_mesh(shape: str, resolution: int) -> trimesh.Trimesh:
    """The canon surface of ``shape`` in world units, by marching cubes of its signed distance sampled on a
    ``resolution``^3 grid over the scene box [-0.5, 0.5]^3: closed, with outward-facing triangles."""
    axis = torch.linspace(-SCENE_HALF_EXTENT, SCENE_HALF_EXTENT, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # [R, R, R, 3]
    distance = SIGNED_DISTANCES[shape](grid.reshape(-1, 3)).reshape(grid.shape[:3])
    vertices, faces = mcubes.marching_cubes(distance.numpy(), 0.0)
    vertices = vertices * (2 * SCENE_HALF_EXTENT / (resolution - 1)) - SCENE_HALF_EXTENT
    mesh = trimesh.Trimesh(vertices, faces[:, ::-1])  # marching cubes winds them inwards for this sign
    # Grid nodes exactly on a flat face (a cap at z = +-0.3 when 0.2 (resolution - 1) is whole) give zero-area
    # triangles; without them the mesh is closed.
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    return mesh


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _generate_command(arguments: argparse.Namespace) -> None:
    dataset = generate_dataset(arguments.per_prompt, arguments.seed, show_progress=True)
    write_npz_atomically(arguments.out, dataset)
    print(f"wrote {len(dataset['images'])} images to {arguments.out}")


def parse_prompt(prompt: str) -> tuple[str, str]:
    """"a red torus" (a view suffix is allowed) -> ("torus", "red"); a ValueError names the canon otherwise."""
    words = prompt.split(",")[0].strip().lower().split()
    if len(words) != 3 or words[0] not in ("a", "an") or words[1] not in ALBEDOS or words[2] not in SIGNED_DISTANCES:
        raise ValueError(f"{prompt!r} is not a ShapeWorld prompt: use 'a COLOUR SHAPE' with a colour of "
                         f"{list(COLOURS)} and a shape of {list(SHAPES)}")
    return words[2], words[1]


def is_canon_prompt(prompt: str) -> bool:
    try:
        parse_prompt(prompt)
    except ValueError:
        return False
    return True


def evaluate_mesh(mesh: trimesh.Trimesh, prompt: str) -> dict:
    """The evaluator's numbers for a mesh made for a ShapeWorld prompt (see threed.mesh_metrics)."""
    shape, colour = parse_prompt(prompt)

    def inside(points: np.ndarray) -> np.ndarray:
        return (SIGNED_DISTANCES[shape](torch.from_numpy(points)) < 0).numpy()

    score = score_mesh(mesh, ground_truth_mesh(shape), inside, ALBEDOS[colour], half_extent=SCENE_HALF_EXTENT)
    return {"prompt": prompt, "shape": shape, "colour": colour, **score.as_dict()}


def _eval_command(arguments: argparse.Namespace) -> None:
    try:
        parse_prompt(arguments.prompt)  # before the (slow) loading, so a typo fails at once
        mesh = trimesh.load(arguments.mesh, force="mesh")
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    print(json.dumps(evaluate_mesh(mesh, arguments.prompt)))


def _meshes_command(arguments: argparse.Namespace) -> None:
    arguments.out.mkdir(parents=True, exist_ok=True)
    for shape in SHAPES:
        ground_truth_mesh(shape, arguments.resolution).export(arguments.out / f"{shape}.ply")
    print(f"wrote {len(SHAPES)} ground-truth meshes to {arguments.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m threed.shapeworld", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="render the ShapeWorld data set to a compressed npz")
    generate.add_argument("out", type=Path, help="the .npz file to write")
    generate.add_argument("--per-prompt", type=int, default=160, help="images per prompt (36 prompts)")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(run=_generate_command)
    evaluate = commands.add_parser("eval", help="score a mesh against the canon object of its prompt (JSON)")
    evaluate.add_argument("mesh", type=Path, help="OBJ, GLB or PLY")
    evaluate.add_argument("--prompt", required=True, help='e.g. "a red torus"')
    evaluate.set_defaults(run=_eval_command)
    meshes = commands.add_parser("meshes", help="write the canon's ground-truth meshes as PLY files")
    meshes.add_argument("out", type=Path, help="folder")
    meshes.add_argument("--resolution", type=int, default=128, help="marching-cubes grid")
    meshes.set_defaults(run=_meshes_command)
    arguments = parser.parse_args(argv)
    arguments.run(arguments)


if __name__ == "__main__":
    main()
