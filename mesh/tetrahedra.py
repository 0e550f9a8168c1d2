"""A tetrahedral grid the project builds itself, and differentiable marching tetrahedra on it.

The grid is a cube of ``resolution``^3 cells, each split into six tetrahedra along its main diagonal
(Kuhn's triangulation), so neighbouring cells share their faces and the surface extracted from it is
watertight. Marching tetrahedra puts one surface vertex on every grid edge whose ends have signed
distances of opposite sign, where the linear interpolation of the two crosses zero: the vertices are
differentiable in the grid's positions (DMTet's deformations) and signed distances, the triangles (a
function of the signs) are not, as in DMTet.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

# The six edges of a tetrahedron, as pairs of its corners 0 to 3.
TET_EDGES = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])


@dataclass(frozen=True)
class TetGrid:
    vertices: torch.Tensor  # [V, 3] float, the grid's positions
    tets: torch.Tensor  # [T, 4] long, corner indices into vertices


def tetrahedral_grid(resolution: int, half_size: float = 1.0, device: torch.device | str = "cpu") -> TetGrid:
    """(resolution + 1)^3 vertices spanning [-half_size, half_size]^3 and 6 resolution^3 tetrahedra (Kuhn's
    six per cell: corner 0 to the opposite corner 7 along each of the 3! orders of the axes)."""
    if resolution < 1:
        raise ValueError(f"a tetrahedral grid needs a resolution of at least 1, got {resolution}")
    steps = torch.linspace(-half_size, half_size, resolution + 1, device=device)
    vertices = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), dim=-1).reshape(-1, 3)
    cells = torch.stack(torch.meshgrid(*[torch.arange(resolution, device=device)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)

    def index(corner: torch.Tensor) -> torch.Tensor:  # integer coordinates [N, 3] -> vertex indices [N]
        return (corner[:, 0] * (resolution + 1) + corner[:, 1]) * (resolution + 1) + corner[:, 2]

    unit = torch.eye(3, dtype=torch.long, device=device)
    tets = []
    for order in itertools.permutations(range(3)):
        corners, corner = [cells], cells
        for axis in order:
            corner = corner + unit[axis]
            corners.append(corner)
        tets.append(torch.stack([index(c) for c in corners], dim=-1))
    return TetGrid(vertices, torch.cat(tets))


def _case_table() -> torch.Tensor:
    """[16, 2, 3] edge slots (into TET_EDGES) of the up to two triangles of each inside/outside pattern of a
    tetrahedron's corners (bit i: corner i inside), -1 where there is none. Winding is fixed later."""
    slot = {tuple(pair): i for i, pair in enumerate(TET_EDGES.tolist())}

    def edge(a: int, b: int) -> int:
        return slot[(min(a, b), max(a, b))]

    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    for code in range(16):
        inside = [c for c in range(4) if code >> c & 1]
        outside = [c for c in range(4) if not code >> c & 1]
        if len(inside) in (1, 3):  # one corner apart from the others: the triangle around it
            apart = inside[0] if len(inside) == 1 else outside[0]
            table[code, 0] = torch.tensor([edge(apart, other) for other in range(4) if other != apart])
        elif len(inside) == 2:  # a quad between the two pairs, cut into two triangles
            (a, b), (c, d) = inside, outside
            table[code, 0] = torch.tensor([edge(a, c), edge(a, d), edge(b, d)])
            table[code, 1] = torch.tensor([edge(a, c), edge(b, d), edge(b, c)])
    return table


CASES = _case_table()


def unique_pairs(pairs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(pairs, dim=0, return_inverse=True)`` for pairs [N, 2] of indices in [0, n): the distinct
    pairs [U, 2], sorted, and each pair's row among them [N]. One scalar key a * n + b a pair: the CPU's
    ``unique`` over rows compares them one by one, a hundred times slower at a mesh stage's size."""
    keys, inverse = torch.unique(pairs[:, 0] * n + pairs[:, 1], return_inverse=True)
    return torch.stack([keys // n, keys % n], dim=-1), inverse


def marching_tetrahedra(vertices: torch.Tensor, tets: torch.Tensor, sdf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero level set of ``sdf`` [V] (negative inside) on the grid (``vertices`` [V, 3], ``tets`` [T, 4]):
    surface vertices [M, 3], differentiable in ``vertices`` and ``sdf``, and triangles [F, 3] (long), wound
    so that their normals point out of the inside. A grid edge crossed by the surface gives one vertex
    shared by all its tetrahedra, so the mesh is closed wherever the surface stays inside the grid."""
    inside = sdf < 0
    corners_inside = inside[tets]  # [T, 4]
    crossed = corners_inside.any(dim=1) & ~corners_inside.all(dim=1)
    tets, corners_inside = tets[crossed], corners_inside[crossed]
    if len(tets) == 0:
        return vertices.new_zeros((0, 3)), torch.zeros((0, 3), dtype=torch.long, device=vertices.device)
    edge_ends = tets[:, TET_EDGES.to(tets.device)]  # [T, 6, 2]
    cut = corners_inside[:, TET_EDGES[:, 0]] != corners_inside[:, TET_EDGES[:, 1]]  # [T, 6]
    cut_edges, surface_index = unique_pairs(edge_ends[cut].sort(dim=-1).values, len(vertices))
    first, second = cut_edges.unbind(dim=-1)
    crossing = sdf[first] / (sdf[first] - sdf[second])  # where the linear interpolation is zero, 0 at first
    points = vertices[first] + crossing[:, None] * (vertices[second] - vertices[first])
    vertex_of_slot = torch.full(cut.shape, -1, dtype=torch.long, device=tets.device)
    vertex_of_slot[cut] = surface_index
    code = (corners_inside.long() << torch.arange(4, device=tets.device)).sum(dim=1)
    slots = CASES.to(tets.device)[code]  # [T, 2, 3]
    present = slots[:, :, 0] >= 0  # [T, 2]
    faces = torch.gather(vertex_of_slot, 1, slots.clamp_min(0).flatten(1)).view(-1, 2, 3)[present]  # [F, 3]
    outward = _outward_directions(vertices, tets, corners_inside)[present.nonzero()[:, 0]]  # [F, 3]
    return points, _wound_outward(points.detach(), faces, outward)


def _outward_directions(vertices: torch.Tensor, tets: torch.Tensor, corners_inside: torch.Tensor) -> torch.Tensor:
    """[T, 3]: from the mean of each tetrahedron's inside corners to the mean of its outside ones."""
    corners = vertices.detach()[tets]  # [T, 4, 3]
    weights_in = corners_inside.float()[..., None]
    mean_in = (corners * weights_in).sum(1) / weights_in.sum(1)
    mean_out = (corners * (1 - weights_in)).sum(1) / (1 - weights_in).sum(1)
    return mean_out - mean_in


def _wound_outward(points: torch.Tensor, faces: torch.Tensor, outward: torch.Tensor) -> torch.Tensor:
    """``faces`` [F, 3] with the second and third corners swapped where the normal opposes ``outward`` [F, 3]."""
    a, b, c = points[faces].unbind(dim=1)
    flip = (torch.linalg.cross(b - a, c - a) * outward).sum(dim=-1) < 0
    return torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
