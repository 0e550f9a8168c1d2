import importlib.util
import itertools
import logging
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import numpy as np
import torch
from torch import nn

from nerf import hashgrid_cpu
from nerf.field import FieldSpec, RadianceField
from nerf.hashgrid import HASH_PRIMES, HashGridEncoding, HashGridSpec
from nerf.rays import Rays, intersect_box
from nerf.renderer import RenderSpec, render_rays, render_rays_chunked
from threed.cameras import make_cameras
from threed.config import load_config
from threed.errors import ConfigError


def reference_encoding(encoding: HashGridEncoding, point: list[float]) -> torch.Tensor:
    """tiny-cuda-nn's hash-grid lookup written out point by point, corner by corner."""
    spec, table = encoding.spec, encoding.table.detach()
    features, offset = [], 0
    for scale, resolution, size in zip(spec.level_scales(), spec.level_resolutions(), spec.level_sizes()):
        position = [x * scale + 0.5 for x in point]
        base = [math.floor(p) for p in position]
        level = torch.zeros(spec.n_features_per_level)
        for corner in range(8):
            coords = [base[d] + ((corner >> d) & 1) for d in range(3)]
            weight = math.prod(position[d] - base[d] if (corner >> d) & 1 else 1 - (position[d] - base[d]) for d in range(3))
            if resolution**3 <= size:
                index = coords[0] + resolution * coords[1] + resolution**2 * coords[2]
            else:
                index = (coords[0] * HASH_PRIMES[0] ^ coords[1] * HASH_PRIMES[1] ^ coords[2] * HASH_PRIMES[2]) % 2**32
            level += weight * table[offset + index % size]
        features.append(level)
        offset += size
    return torch.cat(features)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_hash_grid_matches_the_pointwise_reference(backend):
    torch.manual_seed(0)
    encoding = HashGridEncoding(HashGridSpec(n_levels=6, log2_hashmap_size=10, base_resolution=4, finest_resolution=128,
                                             backend=backend))
    nn.init.uniform_(encoding.table, -1, 1)
    points = torch.rand(20, 3)
    points[0] = torch.tensor([0.0, 1.0, 0.5])  # faces of the unit cube
    expected = torch.stack([reference_encoding(encoding, p.tolist()) for p in points])
    torch.testing.assert_close(encoding(points), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [HashGridSpec(), HashGridSpec(n_levels=6, n_features_per_level=4, log2_hashmap_size=12,
                                                                 base_resolution=4, finest_resolution=256)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_cpu_kernel_matches_the_pytorch_grid(spec, threads, monkeypatch):
    """Features and the table's gradient, with the points split between threads or not."""
    torch.manual_seed(0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    fused, reference = HashGridEncoding(replace(spec, backend="cpu")), HashGridEncoding(replace(spec, backend="torch"))
    nn.init.uniform_(fused.table, -1, 1)
    reference.load_state_dict(fused.state_dict())
    points = torch.rand(20000, 3)
    points[:8] = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)))  # the corners of the unit cube
    upstream = torch.randn(len(points), fused.n_output_dims)
    features, expected = fused(points), reference(points)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    (features * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(fused.table.grad, reference.table.grad, rtol=1e-5, atol=1e-5)
    assert fused.table.grad.abs().sum() > 0


def test_fused_cpu_kernel_leaves_point_gradients_to_pytorch():
    """Normals by autograd need the features' gradient with respect to the points: the PyTorch path gives it."""
    torch.manual_seed(0)
    field = RadianceField(FieldSpec(grid=HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=64),
                                    normal_method="autograd"))
    nn.init.uniform_(field.encoding.table, -1, 1)
    points = (torch.rand(50, 3) - 0.5) * 0.5
    normals = field.normals(points)
    assert torch.isfinite(normals).all() and torch.allclose(normals.norm(dim=-1), torch.ones(50), atol=1e-4)
    reference = RadianceField(replace(field.spec, grid=replace(field.spec.grid, backend="torch")))
    reference.load_state_dict(field.state_dict())
    torch.testing.assert_close(normals, reference.normals(points))


def test_hash_grid_without_a_c_compiler_falls_back_to_pytorch(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("THREED_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    hashgrid_cpu.kernel.cache_clear()
    try:
        encoding = HashGridEncoding(HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=64))
        points = torch.rand(100, 3)
        with caplog.at_level(logging.WARNING):
            features = encoding(points)
        assert "no-such-compiler failed" in caplog.text
        assert not hashgrid_cpu.available()
        torch.testing.assert_close(features, encoding._torch_forward(points))
        with pytest.raises(ConfigError, match="geometry.grid.backend=cpu"):
            load_config("configs/tiny.yaml", ["geometry.grid.backend=cpu"])
    finally:
        hashgrid_cpu.kernel.cache_clear()


def test_hash_grid_layout_follows_tiny_cuda_nn():
    spec = HashGridSpec()  # ProlificDreamer's defaults
    assert spec.per_level_scale == pytest.approx(1.4472692374403782)
    sizes = spec.level_sizes()
    assert spec.level_resolutions()[:2] == [16, 24]  # ceil(16 * 1.447**l - 1) + 1
    assert sizes[:2] == [16**3, 24**3]
    assert sizes[-1] == 2**19 and all(s % 8 == 0 for s in sizes)
    encoding = HashGridEncoding(spec)
    assert encoding.table.shape == (sum(sizes), 2)
    assert encoding(torch.rand(5, 3)).shape == (5, 32)


def test_field_starts_as_a_blob_and_is_deterministic():
    torch.manual_seed(1)
    field_a = RadianceField(FieldSpec(grid=HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=64)))
    torch.manual_seed(1)
    field_b = RadianceField(FieldSpec(grid=HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=64)))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]])
    density, albedo = field_a(points)
    assert density[0] > 5.0 > 0.1 > density[1]
    assert albedo.shape == (2, 3) and ((albedo >= 0) & (albedo <= 1)).all()
    torch.testing.assert_close(field_b(points)[0], density, rtol=0, atol=0)


def test_camera_at_azimuth_0_elevation_0_sits_on_plus_x_and_looks_at_the_origin():
    cameras = make_cameras(torch.tensor([0.0, 0.0, 30.0]), torch.tensor([0.0, 90.0, 180.0]), torch.tensor([2.0, 2.0, 2.0]),
                           torch.tensor([40.0, 40.0, 40.0]), height=3, width=3)
    positions = cameras.c2w[:, :3, 3]
    torch.testing.assert_close(positions[0], torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(positions[1], torch.tensor([0.0, 2.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(positions[2], torch.tensor([-2 * math.cos(math.pi / 6), 0.0, 1.0]), atol=1e-6, rtol=0)
    centre_rays = cameras.rays().directions.reshape(3, 3, 3, 3)[:, 1, 1]
    torch.testing.assert_close(centre_rays, -positions / positions.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    # Image up is world +z: the top row of the first camera looks upwards.
    assert cameras.rays().directions.reshape(3, 3, 3, 3)[0, 0, 1, 2] > 0


class ConstantField(nn.Module):
    def __init__(self, density: float, color: list[float]):
        super().__init__()
        self.spec = SimpleNamespace(radius=1.0)
        self.density, self.color = density, torch.tensor(color)

    def forward(self, points):
        return torch.full((len(points),), self.density), self.color.expand(len(points), 3)


def test_volume_rendering_matches_the_closed_form_for_constant_density():
    sigma, color, background = 0.7, [0.2, 0.4, 0.6], [1.0, 1.0, 1.0]
    rays = Rays(torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.5, 0.2], [3.0, 3.0, 0.0]]),
                torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
    out = render_rays(ConstantField(sigma, color), rays, RenderSpec(samples_per_ray=64),
                      background=torch.tensor(background).expand(3, 3))
    opacity = 1 - math.exp(-sigma * 2.0)  # both hitting rays cross the box over a length of 2
    torch.testing.assert_close(out.opacity[:, 0], torch.tensor([opacity, opacity, 0.0]), atol=1e-5, rtol=0)
    expected_rgb = torch.tensor(color) * opacity + torch.tensor(background) * (1 - opacity)
    torch.testing.assert_close(out.rgb[0], expected_rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.rgb[2], torch.tensor(background))
    # Expected depth of a homogeneous slab entered at distance 2: 2 + (1/sigma - L e^{-sigma L} / (1 - e^{-sigma L})), un-normalised.
    mean_in_slab = 1 / sigma - 2.0 * math.exp(-sigma * 2.0) / opacity
    assert out.depth[0, 0].item() == pytest.approx((2.0 + mean_in_slab) * opacity, rel=1e-3)


def test_ray_box_intersection():
    rays = Rays(torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 3.0, 0.0]]), torch.tensor([[-1.0, 0, 0], [0, 0, 1.0], [-1.0, 0, 0]]))
    near, far = intersect_box(rays, 1.0)
    torch.testing.assert_close(near, torch.tensor([2.0, 0.0, near[2].item()]))
    torch.testing.assert_close(far, torch.tensor([4.0, 1.0, near[2].item()]))


def test_chunked_rendering_equals_one_pass():
    torch.manual_seed(0)
    field = RadianceField(FieldSpec(grid=HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=64)))
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([45.0]), torch.tensor([2.0]), torch.tensor([50.0]), 12, 12)
    whole = render_rays(field, cameras.rays(), RenderSpec(samples_per_ray=16))
    chunked = render_rays_chunked(field, cameras.rays(), RenderSpec(samples_per_ray=16, chunk_rays=25))
    torch.testing.assert_close(chunked.rgb, whole.rgb.detach())
    torch.testing.assert_close(chunked.weights, whole.weights.detach())


def test_packed_weights_equal_nerfacc_batched_rendering():
    from nerfacc import render_weight_from_density

    from nerf.renderer import packed_weights

    torch.manual_seed(0)
    n_rays, n_samples = 50, 40
    bounds = torch.sort(torch.rand(n_rays, n_samples + 1) * 3, dim=1).values
    t_starts, t_ends = bounds[:, :-1], bounds[:, 1:]
    sigmas = torch.rand(n_rays, n_samples) * 5 * (torch.rand(n_rays, n_samples) > 0.3)
    batched, _, _ = render_weight_from_density(t_starts, t_ends, sigmas)
    ray_indices = torch.arange(n_rays).repeat_interleave(n_samples)
    packed = packed_weights(t_starts.flatten(), t_ends.flatten(), sigmas.flatten(), ray_indices, n_rays)
    torch.testing.assert_close(packed.reshape(n_rays, n_samples), batched, atol=1e-6, rtol=1e-5)


class SphereField(nn.Module):
    """Density 20 inside a sphere of radius 0.35, exactly 0 outside; colour by position. Counts its queries."""

    def __init__(self):
        super().__init__()
        self.spec = SimpleNamespace(radius=1.0)
        self.queries = 0

    def density(self, points):
        return 20.0 * (points.norm(dim=-1) < 0.35).float()

    def forward(self, points):
        self.queries += len(points)
        return self.density(points), points.abs().clamp(0, 1)


def test_empty_space_skipping_matches_dense_rendering_with_fewer_queries():
    from nerf.occupancy import OccupancyGrid, OccupancySpec

    field = SphereField()
    grid = OccupancyGrid(OccupancySpec(resolution=32), radius=1.0)
    generator = torch.Generator().manual_seed(0)
    grid.update(field.density, generator)
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.0]), torch.tensor([50.0]), 24, 24)
    spec = RenderSpec(samples_per_ray=128)
    dense = render_rays(field, cameras.rays(), spec)
    dense_queries, field.queries = field.queries, 0
    skipped = render_rays(field, cameras.rays(), spec, occupancy=grid)
    torch.testing.assert_close(skipped.rgb, dense.rgb)
    torch.testing.assert_close(skipped.weights, dense.weights)
    assert dense.opacity.max() > 0.99 and field.queries < dense_queries / 5


def test_views_that_meet_no_occupied_cell_render_empty_and_still_backpropagate():
    """Empty-space skipping can leave no sample at all; the hash grid must take zero points."""
    from nerf.occupancy import OccupancyGrid, OccupancySpec

    field = RadianceField(FieldSpec(grid=HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=64)))
    assert field.encoding(torch.zeros(0, 3)).shape == (0, field.encoding.n_output_dims)
    grid = OccupancyGrid(OccupancySpec(resolution=16), radius=1.0)
    grid.update(lambda points: torch.zeros(len(points)), torch.Generator().manual_seed(0))  # nothing occupied
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.0]), torch.tensor([50.0]), 8, 8)
    out = render_rays(field, cameras.rays(), RenderSpec(samples_per_ray=32), occupancy=grid)
    assert out.opacity.abs().max() == 0
    out.rgb.sum().backward()  # no error, and nothing to move
    assert field.encoding.table.grad is None or field.encoding.table.grad.abs().max() == 0


def test_occupancy_grid_marks_the_sphere_and_forgets_with_decay():
    from nerf.occupancy import OccupancyGrid, OccupancySpec

    grid = OccupancyGrid(OccupancySpec(resolution=16, decay=0.5, threshold=0.01), radius=1.0)
    assert grid.is_occupied(torch.tensor([[0.9, 0.9, 0.9]])).all()  # never updated: everything may be occupied
    generator = torch.Generator().manual_seed(0)
    grid.update(SphereField().density, generator)
    assert grid.is_occupied(torch.tensor([[0.0, 0.0, 0.0]])).all()
    assert not grid.is_occupied(torch.tensor([[0.9, 0.9, 0.9], [0.0, 0.0, 0.8]])).any()
    assert grid.is_occupied(torch.tensor([[0.0, 0.0, 0.4]])).all()  # outside the sphere, next to it: dilated
    def moved_sphere(points):
        return SphereField().density(points - torch.tensor([0.5, 0.5, 0.5]))

    for _ in range(12):  # the object moves: its old cells decay below the threshold (20 * 0.5**12 < 0.01)
        grid.update(moved_sphere, generator)
    assert not grid.is_occupied(torch.tensor([[0.0, 0.0, 0.0]])).any()
    assert grid.is_occupied(torch.tensor([[0.5, 0.5, 0.5]])).all()


def test_mesh_export_skips_empty_cells_without_changing_the_mesh():
    from threed.export import ExportSpec, extract_mesh

    field = RadianceField(FieldSpec(grid=HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=64)))
    field.occupancy.update(field.density, torch.Generator().manual_seed(0))
    assert 0.0 < field.occupancy.occupied.float().mean() < 0.5  # the blob: most of the box is empty
    skipping = extract_mesh(field, ExportSpec(resolution=48, threshold=5.0))
    field.occupancy = None
    dense = extract_mesh(field, ExportSpec(resolution=48, threshold=5.0))
    assert len(skipping.vertices) > 100
    torch.testing.assert_close(torch.as_tensor(skipping.vertices), torch.as_tensor(dense.vertices))


class HollowBallAndFloaterField(nn.Module):
    """Density 20 in a shell 0.2 < |x| < 0.35 (hollow inside) and in a small ball at (0.7, 0, 0)."""

    def __init__(self):
        super().__init__()
        self.spec = SimpleNamespace(radius=1.0)
        self.occupancy = None
        self.unused = nn.Parameter(torch.zeros(1))  # export reads the device from the parameters

    def density(self, points):
        distance = points.norm(dim=-1)
        floater = (points - torch.tensor([0.7, 0.0, 0.0])).norm(dim=-1) < 0.06
        return 20.0 * (((distance > 0.2) & (distance < 0.35)) | floater).float()

    def forward(self, points):
        return self.density(points), torch.full_like(points, 0.5)


def test_mesh_export_fills_the_hollow_inside_and_can_drop_floaters():
    from threed.export import ExportSpec, extract_mesh

    field = HollowBallAndFloaterField()
    hollow = extract_mesh(field, ExportSpec(resolution=64, fill_cavities=False))
    filled = extract_mesh(field, ExportSpec(resolution=64))
    cleaned = extract_mesh(field, ExportSpec(resolution=64, min_component_fraction=0.5))
    assert len(hollow.split(only_watertight=False)) == 3  # outer shell, inner shell, floater
    assert len(filled.split(only_watertight=False)) == 2
    ball_volume = 4 / 3 * np.pi * 0.35**3
    assert abs(filled.volume - ball_volume) < 0.1 * ball_volume  # solid: the inner surface is gone
    assert len(cleaned.split(only_watertight=False)) == 1
    assert cleaned.bounds[1, 0] < 0.4  # the floater at x = 0.7 is left out
    assert cleaned.visual.vertex_colors.shape == (len(cleaned.vertices), 4)


class PiercedShellField(HollowBallAndFloaterField):
    """The hollow ball's shell (0.2 < |x| < 0.35) with a straight opening of ``opening_radius`` along +x
    from its hollow to the outside: a tunnel when narrow, a bowl's mouth when wide."""

    def __init__(self, opening_radius: float):
        super().__init__()
        self.opening_radius = opening_radius

    def density(self, points):
        distance = points.norm(dim=-1)
        opening = (points[:, 0] > 0) & (points[:, 1:].norm(dim=-1) < self.opening_radius)
        return 20.0 * ((distance > 0.2) & (distance < 0.35) & ~opening).float()


@pytest.mark.parametrize("opening_radius, closed", [(0.03, True), (0.15, False)])
def test_cavity_closing_seals_narrow_tunnels_and_keeps_wide_openings(opening_radius, closed):
    from threed.export import ExportSpec, extract_mesh

    field = PiercedShellField(opening_radius)  # resolution 64 over [-1, 1]: voxels of 0.032

    def has_inner_surface(mesh) -> bool:  # the hollow's wall, at |x| = 0.2
        return bool((np.linalg.norm(mesh.vertices, axis=1) < 0.27).any())

    assert has_inner_surface(extract_mesh(field, ExportSpec(resolution=64)))  # the outside reaches the hollow
    sealed = extract_mesh(field, ExportSpec(resolution=64, cavity_closing=2))
    assert has_inner_surface(sealed) != closed  # a tunnel 2 voxels wide is sealed, a mouth 9 voxels wide is not
    if closed:
        assert sealed.volume == pytest.approx(4 / 3 * np.pi * 0.35**3, rel=0.1)  # a solid ball


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("tinycudann") is None,
                    reason="tiny-cuda-nn parity needs CUDA and tinycudann")
def test_tiny_cuda_nn_and_pytorch_hash_grids_agree():
    torch.manual_seed(0)
    tcnn_grid = HashGridEncoding(HashGridSpec(backend="tcnn")).cuda()
    nn.init.uniform_(tcnn_grid.table, -1, 1)
    torch_grid = HashGridEncoding(HashGridSpec(backend="torch")).cuda()
    torch_grid.load_state_dict(tcnn_grid.state_dict())
    points = torch.rand(10000, 3, device="cuda")
    torch.testing.assert_close(tcnn_grid(points), torch_grid(points), atol=1e-4, rtol=1e-3)
