"""mesh.texture and textured export: the xatlas layout keeps the surface, the bake samples back to the colour
it baked, and an exported GLB, read as a viewer reads it, renders as the colour field does."""
import warnings

import numpy as np
import pytest
import torch
import trimesh

from mesh.rasterize import clip_positions, interpolate, rasterize
from mesh.texture import bake, pad_from_nearest, sample, unwrap
from threed.cameras import look_at_origin
from threed.export import ExportSpec, load_mesh, save_mesh, with_texture
from threed.mesh_metrics import surface_samples


def smooth_colour(points: torch.Tensor) -> torch.Tensor:
    """A colour field [N, 3] that varies over the surface: a bake must put each colour in its place."""
    return 0.5 + 0.4 * torch.sin(4 * points + torch.tensor([0.0, 2.0, 4.0], dtype=points.dtype))


@pytest.fixture(scope="module")
def ball() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4, radius=0.4)


def test_the_layout_keeps_every_triangle_and_lies_in_the_unit_square(ball):
    layout = unwrap(ball.vertices, ball.faces, texture_size=256, padding=2)
    assert layout.faces.shape == ball.faces.shape
    assert np.allclose(ball.vertices[layout.source_vertex][layout.faces], ball.vertices[ball.faces])
    assert layout.uv.min() >= 0 and layout.uv.max() <= 1
    assert len(layout.uv) > len(ball.vertices)  # cut along seams


def test_the_baked_texture_samples_back_to_the_colour_it_baked(ball):
    layout = unwrap(ball.vertices, ball.faces, texture_size=512, padding=4)
    points = torch.as_tensor(ball.vertices[layout.source_vertex], dtype=torch.float32)
    faces, uv = torch.as_tensor(layout.faces), torch.as_tensor(layout.uv)
    image = bake(points, faces, uv, smooth_colour, size=512)
    assert image.shape == (512, 512, 3)
    # Inside every triangle, away from the texel grid's discretisation: their centroids.
    centroids = points[faces].mean(dim=1)
    sampled = sample(image, uv[faces].mean(dim=1))
    assert (sampled - smooth_colour(centroids)).abs().max() < 0.03


def test_padding_copies_the_nearest_filled_texel():
    image = torch.zeros(5, 5, 1)
    filled = torch.zeros(5, 5, dtype=torch.bool)
    image[0, 0], image[4, 4] = 1.0, 2.0
    filled[0, 0] = filled[4, 4] = True
    padded = pad_from_nearest(image, filled)[..., 0]
    assert padded[0, 1] == 1.0 and padded[1, 0] == 1.0 and padded[4, 3] == 2.0 and padded[3, 4] == 2.0
    assert padded[0, 0] == 1.0 and padded[4, 4] == 2.0


def render(vertices: torch.Tensor, faces: torch.Tensor, colour_at) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours [H, W, 3] and coverage [H, W] of a 96 x 96 view from elevation 30, azimuth 40; ``colour_at``
    maps (raster, faces) to the covered pixels' colours."""
    camera = look_at_origin(torch.tensor([30.0]), torch.tensor([40.0]), torch.tensor([1.5]))[0]
    clip = clip_positions(vertices, camera, torch.tensor(np.radians(45.0)))
    raster = rasterize(clip, faces, 96, 96)
    covered = raster.triangle >= 0
    image = torch.zeros(96, 96, 3)
    image[covered] = colour_at(raster, faces)[covered].float()
    return image, covered


def test_an_exported_glb_renders_as_the_colour_field_does(ball, tmp_path):
    textured = with_texture(ball, smooth_colour, ExportSpec(texture_size=1024))
    path = tmp_path / "model.glb"
    save_mesh(textured, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        in_file = trimesh.load(path, force="mesh", process=False)  # as a glTF viewer reads it
    assert in_file.visual.kind == "texture" and in_file.visual.material.baseColorTexture.size == (1024, 1024)
    loaded = load_mesh(path)  # back in the world's frame, +Z up
    vertices = torch.as_tensor(loaded.vertices, dtype=torch.float32)
    faces = torch.as_tensor(loaded.faces)
    uv = torch.as_tensor(loaded.visual.uv, dtype=torch.float32)
    texture = torch.tensor(np.array(loaded.visual.material.baseColorTexture.convert("RGB")), dtype=torch.float32) / 255
    from_texture, covered = render(vertices, faces, lambda raster, f: sample(texture, interpolate(uv, raster, f).reshape(-1, 2)).reshape(96, 96, 3))
    from_field, _ = render(vertices, faces, lambda raster, f: smooth_colour(interpolate(vertices, raster, f)))
    assert covered.float().mean() > 0.1
    mse = ((from_texture - from_field)[covered] ** 2).mean()
    assert 10 * torch.log10(1 / mse) >= 30  # PSNR in dB


@pytest.mark.parametrize("suffix", ["glb", "obj"])
def test_the_evaluator_reads_colours_from_the_texture(ball, tmp_path, suffix):
    coloured = ball.copy()
    coloured.visual.vertex_colors = (smooth_colour(torch.as_tensor(ball.vertices, dtype=torch.float32)) * 255).byte().numpy()
    path = tmp_path / f"model.{suffix}"
    save_mesh(with_texture(ball, smooth_colour, ExportSpec(texture_size=512)), path)
    if suffix == "obj":
        assert {p.name for p in tmp_path.iterdir()} >= {"model.obj", "model.mtl", "albedo.png"}
    _, from_texture = surface_samples(load_mesh(path), 20000, seed=0)
    _, from_vertices = surface_samples(coloured, 20000, seed=0)
    assert np.abs(from_texture.mean(axis=0) - from_vertices.mean(axis=0)).max() < 0.01
    assert from_texture.std(axis=0).min() > 0.1  # the colours vary over the surface, as the field's do
