import math

import numpy as np
import pytest
import torch

from guidance.prompts import VIEWS, ViewPromptSpec
from threed.shapeworld import canon, evaluator, render
from threed.shapeworld.__main__ import main as shapeworld_main
from threed.cameras import CameraBatch, make_cameras


def cameras(elevation_deg, azimuth_deg, distance, fovy_deg, size: int = 64) -> CameraBatch:
    def column(values):
        return torch.tensor(values, dtype=torch.float32)

    return make_cameras(column(elevation_deg), column(azimuth_deg), column(distance), column(fovy_deg), size, size)


def mesh_silhouette(mesh, camera: CameraBatch) -> torch.Tensor:
    """[H, W] bool: pixel centres covered by a projected triangle of the mesh (an independent rasterizer)."""
    height, width = camera.height, camera.width
    world_to_camera = torch.linalg.inv(camera.c2w[0].double())
    points = torch.from_numpy(mesh.vertices) @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    focal = 0.5 * height / math.tan(0.5 * float(camera.fovy[0]))
    depth = -points[:, 2]  # the camera looks down its -z
    pixels = torch.stack([0.5 * width + focal * points[:, 0] / depth, 0.5 * height - focal * points[:, 1] / depth], -1)
    triangles = pixels[torch.from_numpy(mesh.faces)]  # [F, 3, 2] as (column, row)
    first = torch.ceil(triangles.amin(dim=1) - 0.5).long()  # first pixel whose centre may be covered
    last = torch.floor(triangles.amax(dim=1) - 0.5).long()
    span = int((last - first).max()) + 1
    offsets = torch.stack(torch.meshgrid(torch.arange(span), torch.arange(span), indexing="ij"), -1).reshape(-1, 2)
    candidates = first[:, None, :] + offsets  # [F, K, 2]
    centres = candidates.double() + 0.5
    a, b, c = triangles[:, None, 0], triangles[:, None, 1], triangles[:, None, 2]

    def edge(start, end):
        return (end[..., 0] - start[..., 0]) * (centres[..., 1] - start[..., 1]) - \
            (end[..., 1] - start[..., 1]) * (centres[..., 0] - start[..., 0])

    sides = torch.stack([edge(a, b), edge(b, c), edge(c, a)], -1)
    covered = ((sides >= 0).all(-1) | (sides <= 0).all(-1)) & (sides != 0).any(-1)  # zero-area triangles cover nothing
    covered &= (candidates[..., 0] >= 0) & (candidates[..., 0] < width) & (candidates[..., 1] >= 0) \
        & (candidates[..., 1] < height)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[candidates[covered][:, 1], candidates[covered][:, 0]] = True
    return mask


@pytest.mark.parametrize("shape", canon.SHAPES)
def test_rendered_silhouette_matches_the_ground_truth_mesh(shape):
    views = cameras(elevation_deg=[0.0, 30.0, 58.0, -10.0], azimuth_deg=[20.0, 135.0, 250.0, -80.0],
                    distance=[1.4, 1.2, 1.6, 1.3], fovy_deg=[50.0, 40.0, 60.0, 45.0])
    _, masks = render.render_shape_with_mask(shape, "red", views)
    mesh = evaluator.ground_truth_mesh(shape)  # at 96 marching cubes' clipped cube edges cost a row of pixels
    for index in range(len(views)):
        expected = mesh_silhouette(mesh, views[index])
        iou = (masks[index] & expected).sum() / (masks[index] | expected).sum()
        assert expected.sum() > 200
        assert iou > 0.98, f"{shape}, camera {index}: IoU {iou:.3f}"


def test_the_rasterizer_of_these_tests_sees_a_known_disc():
    """The reference silhouette is itself right: a sphere of radius 0.35 seen from distance 1.4 is a disc
    of angular radius asin(0.35 / 1.4)."""
    view = cameras([10.0], [40.0], [1.4], [50.0])
    covered = mesh_silhouette(evaluator.ground_truth_mesh("sphere", resolution=64), view).sum()
    focal = 32.0 / math.tan(math.radians(25.0))
    disc_radius = focal * math.tan(math.asin(0.35 / 1.4))
    assert covered == pytest.approx(math.pi * disc_radius**2, rel=0.03)


@pytest.mark.parametrize("shape", canon.SHAPES)
def test_ground_truth_mesh_is_closed_outward_and_has_the_canon_volume(shape):
    expected_volume = {
        "sphere": 4 / 3 * math.pi * 0.35**3,
        "cube": 0.5**3,
        "torus": 2 * math.pi**2 * 0.28 * 0.10**2,
        "cylinder": math.pi * 0.25**2 * 0.6,
        "cone": math.pi * 0.3**2 * 0.6 / 3,
        # the integral of pi r(z)^2 over z in [-0.35, 0.35] with r = 0.15 + 0.12 sin(pi (z + 0.35) / 0.7)
        "vase": math.pi * 0.7 * (0.15**2 + 2 * 0.15 * 0.12 * 2 / math.pi + 0.12**2 / 2),
    }[shape]
    mesh = evaluator.ground_truth_mesh(shape, resolution=96)  # the caps z = +-0.3 lie on grid nodes
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(expected_volume, rel=0.01)  # positive: the faces point outwards


def distances_to_mesh_samples(shape: str, points: torch.Tensor) -> torch.Tensor:
    """[N] distances from points [N, 3] to the nearest of many points spread over the ground-truth surface."""
    surface = np.asarray(evaluator.ground_truth_mesh(shape, resolution=96).sample(40_000, seed=0))
    return torch.cdist(points.double(), torch.from_numpy(surface)).amin(dim=-1).float()


def random_points(n: int = 300) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(1)) - 0.5


@pytest.mark.parametrize("shape", ["sphere", "cube", "torus", "cylinder", "cone"])
def test_exact_distances_match_the_distance_to_the_surface(shape):
    """Up to the gaps between surface samples and marching cubes' clipped edges and apex."""
    points = random_points()
    error = (canon.SIGNED_DISTANCES[shape](points).abs() - distances_to_mesh_samples(shape, points)).abs()
    assert error.quantile(0.9) < 0.004
    assert error.max() < 0.015


def test_vase_distance_is_a_tight_lower_bound():
    points = random_points()
    bound = canon.vase_distance(points).abs()
    distance = distances_to_mesh_samples("vase", points)
    assert (bound <= distance + 0.002).all()
    slope = 0.12 * math.pi / 0.7  # the steepest slope of the profile
    assert (bound >= distance / math.hypot(1.0, slope) - 0.005).all()


def test_signed_distances_are_negative_exactly_inside():
    points = random_points(2000)
    rho, z = points[:, :2].norm(dim=-1), points[:, 2]
    inside = {
        "sphere": points.norm(dim=-1) < 0.35,
        "cube": (points.abs() < 0.25).all(dim=-1),
        "torus": (rho - 0.28) ** 2 + z**2 < 0.10**2,
        "cylinder": (rho < 0.25) & (z.abs() < 0.3),
        "cone": (rho < 0.3 * (0.3 - z) / 0.6) & (z.abs() < 0.3),
        "vase": (rho < 0.15 + 0.12 * torch.sin(math.pi * (z + 0.35) / 0.7)) & (z.abs() < 0.35),
    }
    for shape, expected in inside.items():
        assert expected.any()
        assert torch.equal(canon.SIGNED_DISTANCES[shape](points) < 0, expected), shape


@pytest.mark.parametrize("elevation, azimuth", [(80.0, 30.0), (-75.0, 200.0), (20.0, -60.0)])
def test_sphere_pixel_is_albedo_times_lambert_with_ambient(elevation, azimuth):
    """The central ray of an odd-sized image passes through the origin, so it meets the sphere where the
    normal points back at the camera."""
    view = cameras([elevation], [azimuth], [1.5], [45.0], size=65)
    image = render.render_shape("sphere", "orange", view)
    normal = view.c2w[0, :3, 3] / view.c2w[0, :3, 3].norm()
    light = torch.tensor([0.3, 0.2, 1.0]) / math.hypot(0.3, 0.2, 1.0)
    expected = torch.tensor([0.95, 0.55, 0.15]) * (0.35 + 0.65 * max(0.0, float(normal @ light)))
    assert torch.allclose(image[0, 32, 32], expected, atol=1e-3)


def test_sphere_seen_from_above_shows_the_top_lit_by_the_fixed_light():
    view = cameras([89.99], [0.0], [1.5], [45.0], size=65)
    image = render.render_shape("sphere", "blue", view)
    top_lit = 0.35 + 0.65 * 1.0 / math.hypot(0.3, 0.2, 1.0)  # n = (0, 0, 1)
    assert torch.allclose(image[0, 32, 32], torch.tensor([0.20, 0.35, 0.85]) * top_lit, atol=1e-3)


@pytest.mark.parametrize("shape", canon.SHAPES)
def test_background_is_exactly_white_and_values_lie_in_the_unit_interval(shape):
    views = cameras([15.0, 45.0], [0.0, 100.0], [1.5, 1.2], [50.0, 60.0])
    images, masks = render.render_shape_with_mask(shape, "green", views)
    assert images.shape == (2, 64, 64, 3) and masks.shape == (2, 64, 64)
    assert 0 < masks.float().mean() < 0.6
    assert (images[~masks] == 1.0).all()
    assert (images[masks] < 1.0).all()
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_render_shape_colours_by_the_canon_albedo():
    views = cameras([30.0], [45.0], [1.4], [50.0])
    red, mask = render.render_shape_with_mask("cube", "red", views)
    purple = render.render_shape("cube", "purple", views)
    ratio = purple[mask] / red[mask]
    assert torch.allclose(ratio, torch.tensor([0.60 / 0.85, 0.30 / 0.15, 0.75 / 0.15]).expand_as(ratio), rtol=1e-4)


@pytest.mark.parametrize("elevation, azimuth, label", [
    (0.0, 0.0, "front"), (10.0, 44.0, "front"), (10.0, -44.0, "front"), (0.0, 360.0, "front"),
    (0.0, 90.0, "side"), (0.0, -90.0, "side"), (30.0, 46.0, "side"), (30.0, 134.0, "side"),
    (0.0, 180.0, "back"), (0.0, -180.0, "back"), (20.0, 136.0, "back"), (20.0, 224.0, "back"), (20.0, 226.0, "side"),
    (50.0, 0.0, "front"), (51.0, 0.0, "overhead"), (60.0, 180.0, "overhead"), (89.0, 90.0, "overhead"),
])
def test_view_label_follows_the_thresholds(elevation, azimuth, label):
    assert canon.view_label(elevation, azimuth) == label


def test_view_thresholds_are_configurable():
    strict = ViewPromptSpec(overhead_threshold_deg=60.0, front_threshold_deg=30.0, back_threshold_deg=30.0)
    assert canon.view_label(55.0, 40.0, strict) == "side"
    assert canon.view_label(55.0, 40.0) == "overhead"
    assert canon.view_label(10.0, 140.0, strict) == "side"


def test_dataset_cameras_follow_the_canon_ranges():
    sampled = render.sample_dataset_cameras(2000, torch.Generator().manual_seed(0))
    assert (sampled.height, sampled.width) == (64, 64)
    for values, low, high in [(sampled.distance, 1.2, 1.6), (torch.rad2deg(sampled.fovy), 40.0, 60.0),
                              (sampled.elevation_deg, -10.0, 60.0), (sampled.azimuth_deg, -180.0, 180.0)]:
        assert low <= float(values.min()) < low + 0.05 * (high - low)
        assert high - 0.05 * (high - low) < float(values.max()) <= high
    assert torch.allclose(sampled.c2w[:, :3, 3].norm(dim=-1), sampled.distance, atol=1e-5)


def test_generate_dataset_shapes_dtypes_captions_and_determinism():
    dataset = render.generate_dataset(n_per_prompt=2, seed=3)
    n = 36 * 2
    assert dataset["images"].shape == (n, 64, 64, 3) and dataset["images"].dtype == np.uint8
    assert dataset["masks"].shape == (n, 64, 64) and dataset["masks"].dtype == bool
    assert len(dataset["captions"]) == n and dataset["c2w"].shape == (n, 4, 4)
    for key in ("shape_index", "colour_index", "view_index", "elevation_deg", "azimuth_deg", "distance", "fovy_deg"):
        assert dataset[key].shape == (n,)
    assert sorted(set(dataset["captions"][i].split(",")[0] for i in range(n))) == sorted(canon.PROMPTS)
    for i in (0, 17, n - 1):
        shape, colour = canon.SHAPES[dataset["shape_index"][i]], canon.COLOURS[dataset["colour_index"][i]]
        view = canon.view_label(dataset["elevation_deg"][i], dataset["azimuth_deg"][i])
        assert dataset["captions"][i] == f"a {colour} {shape}, {view} view"
        assert VIEWS[dataset["view_index"][i]] == view
    assert (dataset["images"][~dataset["masks"]] == 255).all()

    again = render.generate_dataset(n_per_prompt=2, seed=3)
    other = render.generate_dataset(n_per_prompt=2, seed=4)
    assert np.array_equal(dataset["images"], again["images"]) and dataset["captions"] == again["captions"]
    assert not np.array_equal(dataset["images"], other["images"])


def test_dataset_images_are_the_renders_of_their_cameras():
    dataset = render.generate_dataset(n_per_prompt=1, seed=0)
    i = 20  # some image in the middle of the data set
    view = cameras([float(dataset["elevation_deg"][i])], [float(dataset["azimuth_deg"][i])],
                   [float(dataset["distance"][i])], [float(dataset["fovy_deg"][i])])
    image = render.render_shape(canon.SHAPES[dataset["shape_index"][i]],
                                    canon.COLOURS[dataset["colour_index"][i]], view)[0]
    assert np.abs(dataset["images"][i].astype(int) - (image * 255).round().numpy().astype(int)).max() <= 1


def test_command_line_writes_an_npz_that_loads_back(tmp_path):
    out = tmp_path / "shapeworld.npz"
    shapeworld_main(["generate", str(out), "--per-prompt", "1", "--seed", "5"])
    assert [path.name for path in tmp_path.iterdir()] == ["shapeworld.npz"]  # no partial file left behind
    with np.load(out) as loaded:
        assert loaded["images"].shape == (36, 64, 64, 3) and loaded["images"].dtype == np.uint8
        assert list(loaded["captions"]) == render.generate_dataset(1, 5)["captions"]
        assert list(loaded["shape_names"]) == list(canon.SHAPES)
