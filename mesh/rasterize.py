"""Triangle rasterization with nvdiffrast's semantics: nvdiffrast's CUDA rasterizer where it is importable
and the positions are on a CUDA device (``backend`` auto or nvdiffrast; never its OpenGL context, which
needs EGL), and its twin in PyTorch everywhere else (``backend`` torch, and the CPU).

``rasterize`` gives, per pixel, the nearest triangle's index, its perspective-correct barycentrics and
its depth; ``interpolate`` turns vertex attributes into pixel attributes through them; ``antialias``
blends the two pixels on either side of a silhouette by where the front triangle's edge crosses
between their centres. As in nvdiffrast, the barycentrics are differentiable in the vertices'
clip-space positions and the interpolated attributes in the attributes, so gradients reach both
inside triangles; through ``antialias`` they also move silhouettes.

Conventions are nvdiffrast's: clip-space positions [V, 4] (x, y, z, w), pixel centres at NDC
((i + 0.5) / W * 2 - 1, (j + 0.5) / H * 2 - 1), row j increasing with y (OpenGL's, so row 0 is the bottom),
depth z / w, both windings drawn. Triangles with a vertex behind the camera (w <= 0) are skipped rather
than clipped.

How: every triangle lists the pixel centres of its screen bounding box, barycentrics are computed for
those (pixel, triangle) pairs at once, and a depth test by ``scatter_reduce`` keeps the nearest: work in
proportion to the triangles' screen area, which suits the small meshes of the mesh stages.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "nvdiffrast")


@dataclass
class Raster:
    triangle: torch.Tensor  # [H, W] long: the covering triangle's index, -1 where none
    barycentric: torch.Tensor  # [H, W, 3] perspective-correct barycentrics (0 where none), differentiable
    depth: torch.Tensor  # [H, W] z / w of the nearest surface (+inf where none)


def clip_positions(points: torch.Tensor, camera_to_world: torch.Tensor, fovy: float | torch.Tensor,
                   aspect: float = 1.0, near: float = 0.1, far: float = 100.0) -> torch.Tensor:
    """World points [V, 3] -> clip-space [V, 4] for an OpenGL camera (``camera_to_world`` [4, 4], looking down
    its -z with +y up, as ``threed.cameras`` makes them) of vertical field of view ``fovy`` (radians)."""
    world_to_camera = torch.linalg.inv(camera_to_world)
    x, y, z = (points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]).unbind(dim=-1)
    focal = 1.0 / torch.tan(torch.as_tensor(fovy, dtype=points.dtype, device=points.device) / 2)
    depth = (far + near) / (near - far) * z + 2 * far * near / (near - far)
    return torch.stack([focal / aspect * x, focal * y, depth, -z], dim=-1)


def _screen(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip-space positions [V, 4] -> pixel coordinates (x, y) [V, 2] in which pixel centres are integers."""
    ndc = clip[:, :2] / clip[:, 3:4]
    return torch.stack([(ndc[:, 0] + 1) * width / 2 - 0.5, (ndc[:, 1] + 1) * height / 2 - 0.5], dim=-1)


def _candidate_pairs(corners: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen corners [F, 3, 2] -> (triangle [N], pixel (x, y) [N, 2]): every pixel centre in each triangle's bounding box."""
    low = corners.amin(dim=1).ceil().clamp_min(0).long()
    high = torch.minimum(corners.amax(dim=1).floor().long(), torch.tensor([width - 1, height - 1], device=corners.device))
    size = (high - low + 1).clamp_min(0)  # [F, 2] pixels across and up
    counts = size[:, 0] * size[:, 1]
    triangle = torch.repeat_interleave(torch.arange(len(corners), device=corners.device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(triangle), device=corners.device) - start[triangle]
    across = size[triangle, 0].clamp_min(1)
    pixel = low[triangle] + torch.stack([local % across, local // across], dim=-1)
    return triangle, pixel


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The z of the cross product of 2D vectors [N, 2] -> [N]."""
    return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]


def _screen_area(corners: torch.Tensor) -> torch.Tensor:
    """Corners [N, 3, 2] -> twice the signed area [N] (positive counter-clockwise)."""
    a, b, c = corners.unbind(dim=1)
    return _cross(b - a, c - a)


def _screen_barycentrics(corners: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """Corners [N, 3, 2] and points [N, 2] -> screen-space barycentrics [N, 3] (either winding)."""
    a, b, c = corners.unbind(dim=1)
    weights = torch.stack([_cross(b - pixel, c - pixel), _cross(c - pixel, a - pixel), _cross(a - pixel, b - pixel)], dim=-1)
    return weights / _screen_area(corners)[:, None]


@functools.cache
def nvdiffrast_available() -> bool:
    available = importlib.util.find_spec("nvdiffrast") is not None and torch.cuda.is_available()
    log.info("rasterizer: %s", "nvdiffrast on CUDA" if available else "PyTorch (nvdiffrast not importable or no CUDA)")
    return available


@functools.cache
def _cuda_context(device: torch.device):
    import nvdiffrast.torch as dr

    return dr.RasterizeCudaContext(device=device)


def rasterize(clip: torch.Tensor, faces: torch.Tensor, height: int, width: int, backend: str = "auto") -> Raster:
    """The nearest triangle at every pixel of an ``height`` x ``width`` image of one view: ``clip`` [V, 4]
    clip-space positions, ``faces`` [F, 3] long. ``backend`` (``BACKENDS``): nvdiffrast where it can run
    (auto), or always (nvdiffrast, an error where it cannot), or the PyTorch twin (torch)."""
    if backend == "nvdiffrast" and not (clip.is_cuda and nvdiffrast_available()):
        raise RuntimeError("the nvdiffrast rasterizer needs nvdiffrast installed and the mesh on a CUDA device; "
                           "use backend auto or torch")
    if backend != "torch" and clip.is_cuda and nvdiffrast_available():
        return _rasterize_nvdiffrast(clip, faces, height, width)
    return _rasterize_torch(clip, faces, height, width)


def _rasterize_nvdiffrast(clip: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> Raster:
    """``rasterize`` by nvdiffrast's CUDA context; its barycentrics (u, v) weigh corners 0 and 1, and carry
    gradients to ``clip`` through its own backward pass."""
    import nvdiffrast.torch as dr

    raster, _ = dr.rasterize(_cuda_context(clip.device), clip[None].contiguous(), faces.int().contiguous(), (height, width))
    u, v, depth, triangle = raster[0].unbind(dim=-1)
    triangle = triangle.long() - 1  # nvdiffrast counts triangles from 1, 0 meaning none
    covered = triangle >= 0
    barycentric = torch.stack([u, v, 1 - u - v], dim=-1) * covered[..., None]
    return Raster(triangle, barycentric, depth.where(covered, torch.full_like(depth, torch.inf)))


def _rasterize_torch(clip: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> Raster:
    """``rasterize`` in PyTorch (see the module's docstring for how)."""
    device = clip.device
    visible = (clip[faces, 3] > 0).all(dim=1)
    faces = faces[visible]
    face_index = torch.nonzero(visible).squeeze(1)
    with torch.no_grad():
        corners = _screen(clip.detach(), height, width)[faces]  # [F, 3, 2]
        triangle, pixel = _candidate_pairs(corners, height, width)
        screen = _screen_barycentrics(corners[triangle], pixel.to(corners.dtype))
        inside = (screen >= 0).all(dim=1) & torch.isfinite(screen).all(dim=1)
        triangle, pixel, screen = triangle[inside], pixel[inside], screen[inside]
        ndc_depth = clip.detach()[faces[triangle], 2] / clip.detach()[faces[triangle], 3]  # [N, 3]
        depth = (screen * ndc_depth).sum(dim=1)  # z / w is affine in screen space
        flat = pixel[:, 1] * width + pixel[:, 0]
        nearest = torch.full((height * width,), torch.inf, dtype=depth.dtype, device=device).scatter_reduce(0, flat, depth, "amin")
        front = depth == nearest[flat]
        first = torch.full((height * width,), len(faces), device=device).scatter_reduce(0, flat[front], triangle[front], "amin")
        won = front & (triangle == first[flat])  # ties to the lowest index
        triangle, pixel, flat = triangle[won], pixel[won], flat[won]
    corners = _screen(clip, height, width)[faces[triangle]]  # again, with gradients, for the winners only
    screen = _screen_barycentrics(corners, pixel.to(corners.dtype))
    perspective = screen / clip[faces[triangle], 3]  # barycentrics of 1 / w, then normalised
    perspective = perspective / perspective.sum(dim=1, keepdim=True)
    barycentric = clip.new_zeros((height * width, 3)).index_put((flat,), perspective)
    index = torch.full((height * width,), -1, dtype=torch.long, device=device).index_put((flat,), face_index[triangle])
    return Raster(index.view(height, width), barycentric.view(height, width, 3), nearest.view(height, width))


def interpolate(attributes: torch.Tensor, raster: Raster, faces: torch.Tensor) -> torch.Tensor:
    """Vertex attributes [V, C] -> pixel attributes [H, W, C] (0 where no triangle), differentiable in both
    the attributes and the raster's barycentrics."""
    covered = raster.triangle >= 0
    corners = attributes[faces[raster.triangle.clamp_min(0)]]  # [H, W, 3, C]
    values = (raster.barycentric[..., None] * corners).sum(dim=-2)
    return values * covered[..., None]


def _edge_crossing(corners: torch.Tensor, start: torch.Tensor, end: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the segment from ``start`` (inside the triangle) to ``end`` [N, 2] leaves the triangle of
    ``corners`` [N, 3, 2]: the fraction [N] of the way, in (0, 1] when ``end`` is outside, the direction
    [N, 2] of the edge it leaves through, and that edge as the corner [N] opposite it."""
    at_start, at_end = _screen_barycentrics(corners, start), _screen_barycentrics(corners, end)
    leaving = at_end < 0
    fraction = at_start / (at_start - at_end).where(leaving, torch.ones_like(at_end))
    fraction, opposite = fraction.where(leaving, torch.full_like(fraction, 2.0)).min(dim=1)
    rows = torch.arange(len(corners), device=corners.device)
    direction = corners[rows, (opposite + 2) % 3] - corners[rows, (opposite + 1) % 3]
    return fraction.clamp(0.0, 1.0), direction, opposite


def face_neighbours(faces: torch.Tensor) -> torch.Tensor:
    """[F, 3]: the triangle across each triangle's edge opposite its corner k (corners k + 1 and k + 2), -1 where
    none (an open edge) or where more than two triangles share the edge."""
    corners = torch.arange(3, device=faces.device)
    ends = torch.stack([faces[:, (corners + 1) % 3], faces[:, (corners + 2) % 3]], dim=-1).sort(dim=-1).values
    vertex_count = int(faces.max()) + 1 if len(faces) else 1
    key = (ends[..., 0] * vertex_count + ends[..., 1]).view(-1)  # one integer per edge slot [3F]
    order = torch.argsort(key, stable=True)
    _, counts = torch.unique_consecutive(key[order], return_counts=True)
    starts = (torch.cumsum(counts, 0) - counts)[counts == 2]  # runs of exactly two slots: a shared edge
    first, second = order[starts], order[starts + 1]
    neighbours = torch.full((len(key),), -1, dtype=torch.long, device=faces.device)
    neighbours[first], neighbours[second] = second // 3, first // 3
    return neighbours.view(-1, 3)


def antialias(colour: torch.Tensor, raster: Raster, clip: torch.Tensor, faces: torch.Tensor,
              neighbours: torch.Tensor | None = None) -> torch.Tensor:
    """``colour`` [H, W, C] with its silhouettes blended, differentiable in ``clip`` [V, 4] through the edges'
    positions. For each pair of horizontal or vertical neighbours showing different surfaces, the front
    one's triangle ends at a fraction a of the way to the other's centre: past the middle (a > 1/2) it
    covers a - 1/2 of the other pixel, whose colour moves that far toward the front pixel's; short of it,
    the front pixel itself is uncovered by 1/2 - a and moves toward the other's. Only silhouette edges
    count, as in nvdiffrast (the triangle across them is missing or faces the other way on screen): where
    the segment leaves the front triangle through an edge inside the surface, the pixels are left alone.
    An edge is blended across the pairs of the axis it is more nearly perpendicular to (horizontal pairs
    for steep edges, vertical ones for flat edges), so that no pixel's coverage is counted twice. ``neighbours``:
    ``face_neighbours(faces)``, when the caller has it (several views of one mesh)."""
    height, width, channels = colour.shape
    screen = _screen(clip, height, width)
    rows, columns = torch.meshgrid(torch.arange(height, device=colour.device), torch.arange(width, device=colour.device),
                                   indexing="ij")
    centres = torch.stack([columns, rows], dim=-1).to(screen.dtype).view(-1, 2)
    flat_colour, triangle, depth = colour.reshape(-1, channels), raster.triangle.view(-1), raster.depth.view(-1)
    index = torch.arange(height * width, device=colour.device).view(height, width)
    change = torch.zeros_like(flat_colour)
    facing = torch.sign(_screen_area(screen.detach()[faces]))  # [F]: which way each triangle winds on screen
    neighbours = face_neighbours(faces) if neighbours is None else neighbours
    for across, (first, second) in enumerate(((index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :]))):
        for front, back in ((first.reshape(-1), second.reshape(-1)), (second.reshape(-1), first.reshape(-1))):
            edge = (triangle[front] != triangle[back]) & (triangle[front] >= 0) & (depth[front] < depth[back])
            front, back = front[edge], back[edge]
            crossing, direction, exit_corner = _edge_crossing(screen[faces[triangle[front]]], centres[front], centres[back])
            along, other = direction.detach().abs().unbind(dim=-1)  # x and y extents of the edge
            beyond = neighbours[triangle[front], exit_corner]
            silhouette = (beyond < 0) | (facing[beyond.clamp_min(0)] != facing[triangle[front]])
            mine = silhouette & ((other >= along) if across == 0 else (along > other))
            front, back, crossing = front[mine], back[mine], crossing[mine][:, None]
            towards_front = (crossing - 0.5).clamp_min(0) * (flat_colour[front] - flat_colour[back])
            towards_back = (0.5 - crossing).clamp_min(0) * (flat_colour[back] - flat_colour[front])
            change = change.index_add(0, back, towards_front).index_add(0, front, towards_back)
    return (flat_colour + change).view(height, width, channels)
