"""Images of the canon: ray casting its signed distances, and the teacher's data set.

Images are ray cast by sphere tracing a shape's signed distance (``threed.shapeworld.canon``), shaded
by a world-fixed light on a white background.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from guidance.prompts import VIEWS, view_index
from nerf.rays import Rays, intersect_box
from threed.cameras import CameraBatch, sample_cameras
from threed.shapeworld.canon import (ALBEDOS, AMBIENT, COLOURS, DATASET_CAMERAS, DIFFUSE, LIGHT_DIRECTION,
                                     SCENE_HALF_EXTENT, SHAPES, SHAPEWORLD_VIEWS, SIGNED_DISTANCES, SignedDistance,
                                     caption)


def surface_normals(signed_distance: SignedDistance, points: torch.Tensor, step: float = 5e-4) -> torch.Tensor:
    """Unit outward normals [N, 3] at points [N, 3] near the surface: central differences of the distance."""
    offsets = step * torch.eye(3, device=points.device, dtype=points.dtype)  # [3, 3]

    def along_axes(sign: float) -> torch.Tensor:
        return signed_distance((points[:, None, :] + sign * offsets).reshape(-1, 3)).reshape(-1, 3)

    return torch.nn.functional.normalize(along_axes(1.0) - along_axes(-1.0), dim=-1)


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


def render_sdf_in_colour(signed_distance: SignedDistance, colour: str,
                         cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A surface in a canon colour seen by each camera: images [B, H, W, 3] in [0, 1], silhouettes [B, H, W]."""
    albedo = cameras.c2w.new_tensor(ALBEDOS[colour]).expand(len(cameras), 3)
    return render_sdf(signed_distance, albedo, cameras)


def render_shape_with_mask(shape: str, colour: str, cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A canon object seen by each camera: images [B, H, W, 3] in [0, 1] and silhouettes [B, H, W] (bool)."""
    return render_sdf_in_colour(SIGNED_DISTANCES[shape], colour, cameras)


def render_shape(shape: str, colour: str, cameras: CameraBatch) -> torch.Tensor:
    """A canon object seen by each camera: images [B, H, W, 3] in [0, 1] on a white background."""
    return render_shape_with_mask(shape, colour, cameras)[0]


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
