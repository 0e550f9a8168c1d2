"""mesh.dmtet: DMTet's geometry on the project's tetrahedral grid, its start from a density, its regularisers."""
import numpy as np
import pytest
import torch
import trimesh

from mesh.dmtet import DMTetGeometry, DMTetSpec, laplacian_smoothness, normal_consistency, shared_edges


def ball_density(points: torch.Tensor) -> torch.Tensor:
    """10 at the centre, 5 (the threshold below) at radius 0.35, falling linearly with the radius."""
    return 10.0 - 5.0 * points.norm(dim=-1) / 0.35


@pytest.fixture
def ball() -> DMTetGeometry:
    geometry = DMTetGeometry(DMTetSpec(resolution=32, half_size=0.6))
    geometry.initialize_from_density(ball_density, threshold=5.0)
    return geometry


def test_a_density_starts_the_surface_where_it_crosses_the_threshold(ball):
    points, faces = ball.surface()
    radii = points.norm(dim=-1)
    assert radii.mean().item() == pytest.approx(0.35, abs=2e-3) and (radii - 0.35).abs().max() < 0.01
    assert trimesh.Trimesh(points.detach().numpy(), faces.numpy()).is_watertight
    with pytest.raises(ValueError, match="threshold must be positive"):
        ball.initialize_from_density(ball_density, threshold=0.0)


def test_cavity_closing_seals_a_hollow_that_a_narrow_tunnel_opens():
    def pierced_shell(points: torch.Tensor) -> torch.Tensor:  # the hollow ball, with a tunnel 2 cells wide along +x
        tunnel = (points[:, 0] > 0) & (points[:, 1:].norm(dim=-1) < 0.03)
        return torch.where(tunnel, 0.0, 10.0 - 50.0 * ((points.norm(dim=-1) - 0.25).abs()))

    inner = []  # whether the surface has the hollow's wall (|x| = 0.15)
    for closing in (0, 2):
        geometry = DMTetGeometry(DMTetSpec(resolution=32, half_size=0.5))
        geometry.initialize_from_density(pierced_shell, threshold=5.0, cavity_closing=closing)
        points, _ = geometry.surface()
        inner.append(bool((points.norm(dim=-1) < 0.2).any()))
    assert inner == [True, False]  # the plain fill cannot reach a hollow the outside reaches; the closing does


def test_a_hollow_density_starts_the_outer_surface_alone():
    def shell(points: torch.Tensor) -> torch.Tensor:  # above the threshold between radii 0.15 and 0.35: a hollow ball
        return 10.0 - 50.0 * ((points.norm(dim=-1) - 0.25).abs())

    surfaces = []
    for fill in (True, False):
        geometry = DMTetGeometry(DMTetSpec(resolution=32, half_size=0.5))
        geometry.initialize_from_density(shell, threshold=5.0, fill_cavities=fill)
        points, faces = geometry.surface()
        surfaces.append(trimesh.Trimesh(points.detach().numpy(), faces.numpy()))
    filled, hollow = surfaces
    assert len(filled.split(only_watertight=False)) == 1 and len(hollow.split(only_watertight=False)) == 2
    assert filled.volume == pytest.approx(4 / 3 * np.pi * 0.35**3, rel=0.03)


def test_a_loss_on_the_surface_reaches_the_sdf_and_the_deformation(ball):
    optimizer = torch.optim.Adam(ball.parameters(), lr=0.01)
    points, _ = ball.surface()
    before = points.norm(dim=-1).mean()
    before.backward()
    assert ball.sdf.grad.abs().sum() > 0 and ball.deformation.grad.abs().sum() > 0
    optimizer.step()
    after = ball.surface()[0].norm(dim=-1).mean()
    assert after < before  # one step shrinks the ball it was asked to shrink
    moved = (ball.vertex_positions() - ball.grid_vertices).abs().max()
    assert moved <= ball.spec.max_deformation * ball.cell_size + 1e-7


def test_the_regularisers_prefer_a_smooth_surface(ball):
    points, faces = ball.surface()
    assert len(shared_edges(faces)) == 3 * len(faces) // 2  # closed: every edge between two triangles
    bumpy = points + 0.01 * torch.randn(points.shape, generator=torch.Generator().manual_seed(0))
    assert normal_consistency(points, faces) < 0.5 * normal_consistency(bumpy, faces)
    assert laplacian_smoothness(points, faces) < 0.5 * laplacian_smoothness(bumpy, faces)
