"""mesh.tetrahedra: the tetrahedral grid and differentiable marching tetrahedra."""
import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from mesh.tetrahedra import marching_tetrahedra, tetrahedral_grid, unique_pairs


def signed_volumes(vertices: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    a, b, c, d = vertices[tets].double().unbind(dim=1)
    return torch.linalg.det(torch.stack([b - a, c - a, d - a], dim=1)) / 6


def test_the_grid_fills_its_cube_with_tetrahedra_that_share_whole_faces():
    grid = tetrahedral_grid(3, half_size=0.5)
    assert grid.vertices.shape == (64, 3) and grid.tets.shape == (6 * 27, 4)
    volumes = signed_volumes(grid.vertices, grid.tets).abs()
    assert volumes.min() > 0 and volumes.sum().item() == pytest.approx(1.0)  # no overlap, no gap
    faces = torch.cat([grid.tets[:, list(face)] for face in ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3))]).sort(dim=1).values
    unique, counts = torch.unique(faces, dim=0, return_counts=True)
    assert counts.max() == 2  # a face is shared by at most two tetrahedra: the cells' cuts agree
    corners = grid.vertices[unique[counts == 1]]  # [F, 3 corners, 3 coordinates] of the unshared faces
    on_one_side = ((corners == 0.5).all(dim=1) | (corners == -0.5).all(dim=1)).any(dim=1)  # one plane of the cube
    assert on_one_side.all() and len(corners) == 6 * 9 * 2  # two triangles per cell face of the boundary


def sphere_and_torus_sdf(points: torch.Tensor, shape: str) -> torch.Tensor:
    if shape == "sphere":
        return points.norm(dim=-1) - 0.35
    ring = torch.stack([points[:, :2].norm(dim=-1) - 0.28, points[:, 2]], dim=-1)
    return ring.norm(dim=-1) - 0.1


@pytest.mark.parametrize("shape", ["sphere", "torus"])
def test_the_surface_of_an_analytic_sdf_is_closed_outward_and_close(shape):
    grid = tetrahedral_grid(48, half_size=0.5)
    points, faces = marching_tetrahedra(grid.vertices, grid.tets, sphere_and_torus_sdf(grid.vertices, shape))
    mesh = trimesh.Trimesh(points.numpy(), faces.numpy(), process=True)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # the normals point out
    on_mesh = torch.as_tensor(trimesh.sample.sample_surface(mesh, 20000, seed=0)[0], dtype=torch.float32)
    to_truth = sphere_and_torus_sdf(on_mesh, shape).abs().mean().item()
    dense = tetrahedral_grid(160, half_size=0.5)  # the true surface, sampled: grid vertices within a sliver of it
    near = dense.vertices[sphere_and_torus_sdf(dense.vertices, shape).abs() < 0.002].numpy()
    from_truth = cKDTree(on_mesh.numpy()).query(near)[0].mean()
    chamfer = 0.5 * (to_truth + from_truth)
    assert chamfer < 0.006, chamfer  # cell size 1/48 = 0.021
    expected_volume = 4 / 3 * np.pi * 0.35**3 if shape == "sphere" else 2 * np.pi**2 * 0.28 * 0.1**2
    assert mesh.volume == pytest.approx(expected_volume, rel=0.03)


def test_surface_vertices_are_differentiable_in_the_sdf_and_the_grid():
    grid = tetrahedral_grid(2, half_size=0.5)
    sdf = (grid.vertices.norm(dim=-1) - 0.4).double()
    vertices = grid.vertices.double()
    gen = torch.Generator().manual_seed(0)
    sdf = (sdf + 0.05 * torch.randn(sdf.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    vertices = (vertices + 0.02 * torch.randn(vertices.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    faces = marching_tetrahedra(vertices, grid.tets, sdf)[1]
    assert len(faces) > 0
    assert torch.autograd.gradcheck(lambda v, s: marching_tetrahedra(v, grid.tets, s)[0], (vertices, sdf), eps=1e-6)


def test_an_sdf_without_a_crossing_gives_an_empty_mesh():
    grid = tetrahedral_grid(2)
    points, faces = marching_tetrahedra(grid.vertices, grid.tets, torch.ones(len(grid.vertices)))
    assert points.shape == (0, 3) and faces.shape == (0, 3)
    with pytest.raises(ValueError, match="resolution of at least 1"):
        tetrahedral_grid(0)


def test_unique_pairs_agrees_with_unique_over_rows():
    pairs = torch.randint(0, 50, (2000, 2), generator=torch.Generator().manual_seed(0))
    expected, expected_inverse = torch.unique(pairs, dim=0, return_inverse=True)
    distinct, inverse = unique_pairs(pairs, 50)
    assert torch.equal(distinct, expected) and torch.equal(inverse, expected_inverse)
