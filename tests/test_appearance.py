"""Field details, shading, backgrounds, regularisers, the resolution schedule, and a photometric fit."""
import math
from types import SimpleNamespace

import pytest
import torch

from guidance.schedules import Ramp
from nerf.background import Background, BackgroundSpec
from nerf.field import FieldSpec, RadianceField, TruncatedExp
from nerf.hashgrid import HashGridSpec
from nerf.renderer import RenderOutput, RenderSpec, render_rays
from nerf.shading import ShadingSpec, sample_shading_mode, shade
from threed.cameras import CameraSpec, ResolutionStage, make_cameras, sample_cameras
from threed.regularizers import (RegularizerSpec, occupied_volume, opacity_entropy, regularizer_losses, sparsity,
                                 z_variance)

SMALL_GRID = HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=64)


@pytest.mark.parametrize("method", ["finite_difference", "autograd"])
def test_normals_of_the_initial_blob_point_outwards(method):
    torch.manual_seed(0)
    field = RadianceField(FieldSpec(grid=SMALL_GRID, normal_method=method))
    points = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1) * 0.4
    cosine = (field.normals(points) * torch.nn.functional.normalize(points, dim=-1)).sum(-1)
    assert cosine.min() > 0.99


def test_truncated_exp_caps_its_gradient():
    x = torch.tensor([0.0, 20.0], requires_grad=True)
    TruncatedExp.apply(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, math.exp(15.0)]))


def test_dreamfusion_blob_is_a_gaussian_bump():
    torch.manual_seed(0)
    field = RadianceField(FieldSpec(grid=SMALL_GRID, blob_shape="dreamfusion", blob_density=5.0, blob_radius=0.2,
                                    density_activation="exp"))
    for module in (field.density_net[-1],):
        torch.nn.init.zeros_(module.weight), torch.nn.init.zeros_(module.bias)
    density = field.density(torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0]]))
    torch.testing.assert_close(density.log(), torch.tensor([5.0, 5.0 * math.exp(-0.5)]))


def test_a_capped_blob_has_a_flat_top_and_the_same_surface():
    torch.manual_seed(0)
    field = RadianceField(FieldSpec(grid=SMALL_GRID, blob_density=20.0, blob_radius=0.34, blob_cap=5.0,
                                    density_activation="exp"))
    torch.nn.init.zeros_(field.density_net[-1].weight), torch.nn.init.zeros_(field.density_net[-1].bias)
    radii = torch.tensor([0.0, 0.1, 0.25, 0.3, 0.34])
    points = torch.stack([radii, torch.zeros(5), torch.zeros(5)], dim=-1)
    uncapped = 20.0 * (1.0 - radii / 0.34)  # 20, 14.1, 5.29, 2.35, 0
    torch.testing.assert_close(field.density(points).log(), torch.minimum(uncapped, torch.tensor(5.0)))


def test_shading_modes():
    spec = ShadingSpec(model="diffuse", ambient=0.1, diffuse=0.9)
    albedo = torch.tensor([[0.5, 0.2, 0.8], [0.5, 0.2, 0.8]])
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    points = torch.zeros(2, 3)
    lights = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0]])  # above: lights the first, not the second
    torch.testing.assert_close(shade(albedo, normals, points, lights, "lambertian", spec), albedo * torch.tensor([[1.0], [0.1]]))
    torch.testing.assert_close(shade(albedo, normals, points, lights, "textureless", spec), torch.tensor([[1.0] * 3, [0.1] * 3]))
    assert shade(albedo, None, points, lights, "albedo", spec) is albedo
    generator = torch.Generator().manual_seed(0)
    modes = [sample_shading_mode(spec, generator) for _ in range(400)]
    assert 0.1 < modes.count("albedo") / 400 < 0.3 and modes.count("textureless") > 100 and modes.count("lambertian") > 100
    assert sample_shading_mode(ShadingSpec(), generator) == "albedo"


def test_backgrounds():
    directions = torch.nn.functional.normalize(torch.randn(2 * 8, 3), dim=-1)
    solid = Background(BackgroundSpec(kind="solid", color=[0.2, 0.3, 0.4]))
    torch.testing.assert_close(solid(directions, 2, torch.Generator()), torch.tensor([[0.2, 0.3, 0.4]]).expand(16, 3))
    random = Background(BackgroundSpec(kind="random"))
    colors = random(directions, 2, torch.Generator().manual_seed(0))
    assert torch.equal(colors[:8], colors[:1].expand(8, 3)) and not torch.equal(colors[0], colors[8])  # one per view
    torch.testing.assert_close(random(directions, 2), torch.ones(16, 3))  # evaluation: the solid colour
    neural = Background(BackgroundSpec(kind="neural"))
    colors = neural(directions, 2)
    assert colors.requires_grad and colors.std(dim=0).sum() > 0 and ((colors > 0) & (colors < 1)).all()


def render_output(opacity: torch.Tensor, z_var: torch.Tensor) -> RenderOutput:
    n = len(opacity)
    return RenderOutput(rgb=torch.zeros(n, 3), opacity=opacity, depth=torch.zeros(n, 1), normal=None,
                        weights=torch.zeros(n, 4), z_variance=z_var, orientation=None)


def test_regularizers():
    render = render_output(torch.tensor([[0.0], [1.0], [0.5]]), torch.tensor([[5.0], [2.0], [4.0]]))
    assert sparsity(render).item() == pytest.approx((0.1 + math.sqrt(1.01) + math.sqrt(0.26)) / 3)
    assert opacity_entropy(render).item() == pytest.approx(math.log(2) / 3, rel=1e-3)
    assert z_variance(render).item() == pytest.approx(2.0)  # only where opacity > 0.5
    spec = RegularizerSpec(sparsity=Ramp(0.0, end=2.0, start_step=0, end_step=10), opacity=Ramp(0.5))
    losses = regularizer_losses(render, spec, step=5)
    assert set(losses) == {"sparsity", "opacity"}
    assert losses["sparsity"].item() == pytest.approx(1.0 * sparsity(render).item())


def test_occupied_volume_is_the_mean_cauchy_penalty_over_the_fields_box():
    from tests.test_nerf import SphereField  # density 20 inside radius 0.35 of the box [-1, 1]^3, 0 outside

    volume = occupied_volume(SphereField(), torch.Generator().manual_seed(0), n_points=200_000)
    ball_fraction = 4 / 3 * math.pi * 0.35**3 / 8
    assert volume.item() == pytest.approx(ball_fraction * math.log1p(20.0**2), rel=0.03)


def test_the_volume_penalty_lowers_density_no_render_reaches():
    """The blob's centre lies behind its opaque surface from every side, so no render-based regulariser moves
    it; the volume penalty, drawn by the generator it is given, lowers it."""
    from threed.config import OptimSpec
    from threed.nerf_representation import NeRFRepresentation

    def representation(volume: float) -> NeRFRepresentation:
        torch.manual_seed(0)
        geometry = FieldSpec(radius=0.6, grid=HashGridSpec(n_levels=4, log2_hashmap_size=12, finest_resolution=32),
                             hidden_dim=16, density_activation="trunc_exp", blob_density=20.0, blob_radius=0.34,
                             blob_cap=5.0)
        return NeRFRepresentation(geometry, BackgroundSpec(), RenderSpec(), RegularizerSpec(volume=Ramp(volume)),
                                  OptimSpec())

    no_render = SimpleNamespace(rays=None)  # no render-based regulariser is on
    assert "volume" not in representation(0.0).regularizer_losses(no_render, 0, torch.Generator().manual_seed(0))
    penalised = representation(1.0)
    centre = torch.zeros(1, 3)
    before = penalised.field.density(centre).item()
    optimizer = torch.optim.Adam(penalised.field.parameters(), lr=0.05)
    for step in range(5):
        optimizer.zero_grad()
        losses = penalised.regularizer_losses(no_render, step, torch.Generator().manual_seed(step))
        losses["volume"].backward()
        optimizer.step()
    assert penalised.field.density(centre).item() < 0.5 * before


def test_orientation_penalises_normals_facing_away_from_the_camera():
    from tests.test_nerf import SphereField

    class ShapedSphere(SphereField):
        def __init__(self, flip: bool):
            super().__init__()
            self.sign = -1.0 if flip else 1.0

        def normals(self, points):
            return self.sign * torch.nn.functional.normalize(points, dim=-1)

    cameras = make_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([40.0]), 8, 8)
    spec = RenderSpec(samples_per_ray=64, normals=True)
    outward = render_rays(ShapedSphere(flip=False), cameras.rays(), spec)
    inward = render_rays(ShapedSphere(flip=True), cameras.rays(), spec)
    # Outward normals face away only deep inside the sphere's far half, where the weights are ~0.
    assert outward.orientation.sum() < 0.01 * inward.orientation.sum()
    assert outward.normal.shape == (64, 3)


def test_resolution_schedule():
    spec = CameraSpec(height=32, width=32, resolution_schedule=[ResolutionStage(100, 64, 64), ResolutionStage(200, 128, 96)])
    assert [spec.resolution_at(s) for s in (0, 99, 100, 250)] == [(32, 32), (32, 32), (64, 64), (128, 96)]
    cameras = sample_cameras(spec, torch.Generator().manual_seed(0), step=150)
    assert (cameras.height, cameras.width) == (64, 64)
    assert cameras.light_positions.shape == (1, 3)
    with pytest.raises(ValueError, match="ordered by step"):
        CameraSpec(resolution_schedule=[ResolutionStage(200, 8, 8), ResolutionStage(100, 8, 8)])


def test_a_shaded_run_with_neural_background_and_regularizers_trains(fast_overrides):
    from tests.test_trainer import make_trainer
    from threed.config import load_config

    config = load_config("configs/tiny.yaml", [
        *fast_overrides, "guidance.estimator=sds", "render.shading.model=diffuse", "render.shading.albedo_probability=0",
        "background.kind=neural", "background.random_probability=0", "geometry.normal_method=autograd", "regularizers.orientation.start=0.1",
        "regularizers.sparsity.start=0.1", "regularizers.opacity.start=0.1", "regularizers.z_variance.start=0.1",
        "camera.resolution_schedule=[{step: 1, height: 24, width: 24}]",
    ])
    trainer = make_trainer(config)
    background_before = [p.detach().clone() for p in trainer.representation.background.parameters()]
    for _ in range(2):
        losses = trainer.training_step().losses
        assert set(losses) == {"sds", "sparsity", "opacity", "orientation", "z_variance"}
        assert all(torch.isfinite(v) for v in losses.values())
    assert all(not torch.equal(a, b) for a, b in zip(background_before, trainer.representation.background.parameters()))


def test_the_field_fits_views_of_a_coloured_sphere():
    from tests.test_nerf import SphereField

    class ColouredSphere(SphereField):
        def forward(self, points):
            density = self.density(points)
            return density, torch.tensor([0.9, 0.3, 0.2]).expand(len(points), 3)

    torch.manual_seed(0)
    cameras = make_cameras(torch.tensor([10.0, 30.0, -5.0, 50.0]), torch.tensor([0.0, 90.0, 200.0, 300.0]),
                           torch.full((4,), 2.0), torch.full((4,), 45.0), 16, 16)
    spec = RenderSpec(samples_per_ray=24)
    white = torch.ones(len(cameras.rays()), 3)
    target = render_rays(ColouredSphere(), cameras.rays(), spec, background=white).rgb
    field = RadianceField(FieldSpec(grid=SMALL_GRID, hidden_dim=32, blob_density=0.0))
    optimizer = torch.optim.Adam([{"params": field.encoding.parameters(), "lr": 0.05},
                                  {"params": [p for n, p in field.named_parameters() if "encoding" not in n], "lr": 0.01}])
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        rgb = render_rays(field, cameras.rays(), spec, generator, background=white).rgb
        loss = ((rgb - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    psnr = -10 * math.log10(sum(losses[-10:]) / 10)
    assert losses[-1] < losses[0] / 10 and psnr > 22, (losses[0], losses[-1], psnr)
