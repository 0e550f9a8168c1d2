"""mesh.rasterize: nvdiffrast's rasterize and interpolate, on the CPU."""
import pytest
import torch

from mesh.rasterize import antialias, interpolate, rasterize


def pixel_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC x [H, W] and y [H, W] of the pixel centres, row j increasing with y (nvdiffrast's)."""
    ys = (torch.arange(height) + 0.5) / height * 2 - 1
    xs = (torch.arange(width) + 0.5) / width * 2 - 1
    return xs.expand(height, width), ys[:, None].expand(height, width)


def test_a_triangle_covers_the_pixel_centres_inside_it_with_their_barycentrics():
    clip = torch.tensor([[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0]])
    raster = rasterize(clip, torch.tensor([[0, 1, 2]]), 8, 8)
    x, y = pixel_centres(8, 8)
    inside = x + y <= 0
    assert torch.equal(raster.triangle >= 0, inside)
    u, v = (x + 1) / 2, (y + 1) / 2
    expected = torch.stack([1 - u - v, u, v], dim=-1) * inside[..., None]
    assert torch.allclose(raster.barycentric, expected, atol=1e-6)
    assert torch.all(raster.depth[inside] == 0) and torch.all(torch.isinf(raster.depth[~inside]))


def test_the_nearer_triangle_wins_whatever_the_order():
    square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0]])
    far = torch.cat([square, torch.full((3, 1), 0.5), torch.ones(3, 1)], dim=1)
    near = torch.cat([square * 0.5, torch.full((3, 1), -0.5), torch.ones(3, 1)], dim=1)
    for order in ([far, near], [near, far]):
        clip = torch.cat(order)
        raster = rasterize(clip, torch.tensor([[0, 1, 2], [3, 4, 5]]), 16, 16)
        near_index = 1 if order[1] is near else 0
        centre = raster.triangle[8, 8]  # the middle of the image: both triangles cover it
        assert centre == near_index and raster.depth[8, 8] == pytest.approx(-0.5)
        assert (raster.triangle == 1 - near_index).any()  # the far one shows around the near one


def perspective(points: torch.Tensor, focal: float = 1.5) -> torch.Tensor:
    """Camera-space points [V, 3] (looking down -z) -> clip-space [V, 4], near 0.1, far 10."""
    near, far = 0.1, 10.0
    x, y, z = points.unbind(dim=-1)
    return torch.stack([focal * x, focal * y, (far + near) / (near - far) * z + 2 * far * near / (near - far), -z], dim=-1)


def test_barycentrics_are_perspective_correct():
    points = torch.tensor([[-1.0, -1.0, -2.0], [1.5, -1.0, -5.0], [0.0, 1.2, -3.0]])  # a slanted triangle
    raster = rasterize(perspective(points), torch.tensor([[0, 1, 2]]), 32, 32)
    covered = raster.triangle >= 0
    assert covered.sum() > 50
    surface = interpolate(points, raster, torch.tensor([[0, 1, 2]]))[covered]  # the 3D point under each pixel
    projected = perspective(surface)
    ndc = projected[:, :2] / projected[:, 3:]
    x, y = pixel_centres(32, 32)
    assert torch.allclose(ndc, torch.stack([x[covered], y[covered]], dim=-1), atol=1e-5)


def test_gradients_reach_vertex_positions_and_attributes_inside_triangles():
    # No vertex projects onto a pixel centre, so no pixel's coverage flips within gradcheck's step.
    points = torch.tensor([[-1.03, -0.97, -2.0], [1.5, -1.01, -5.0], [0.02, 1.2, -3.0], [1.0, 1.07, -2.5]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    clip = perspective(points).requires_grad_(True)
    colours = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

    def image(clip, colours):
        return interpolate(colours, rasterize(clip, faces, 12, 12), faces)

    assert torch.autograd.gradcheck(image, (clip, colours), eps=1e-7, atol=1e-5)


def test_triangles_behind_the_camera_are_skipped():
    clip = torch.tensor([[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, -1.0]])
    assert (rasterize(clip, torch.tensor([[0, 1, 2]]), 4, 4).triangle == -1).all()


def test_parity_with_nvdiffrast():
    if not torch.cuda.is_available():
        pytest.skip("nvdiffrast parity needs CUDA (nvdiffrast's CUDA context); none here")
    pytest.importorskip("nvdiffrast.torch", reason="nvdiffrast is not installed")
    points = torch.tensor([[-1.0, -1.0, -2.0], [1.5, -1.0, -5.0], [0.0, 1.2, -3.0], [1.0, 1.0, -2.5]], device="cuda")
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]], device="cuda")
    clip = perspective(points).requires_grad_()
    ours, theirs = (rasterize(clip, faces, 64, 64, backend=backend) for backend in ("torch", "nvdiffrast"))
    agree = theirs.triangle == ours.triangle
    assert agree.float().mean() > 0.99  # pixels exactly on a shared edge may go either way
    both = agree & (ours.triangle >= 0)
    assert torch.allclose(theirs.barycentric[both], ours.barycentric[both], atol=1e-4)
    assert torch.allclose(theirs.depth[both], ours.depth[both], atol=1e-5)
    weights = torch.rand(64, 64, 3, device="cuda")
    gradients = [torch.autograd.grad((raster.barycentric * weights * both[..., None]).sum(), clip)[0] for raster in (ours, theirs)]
    assert torch.allclose(*gradients, rtol=1e-3, atol=1e-3)


def test_the_nvdiffrast_backend_is_refused_where_it_cannot_run():
    clip = perspective(torch.tensor([[-1.0, -1.0, -2.0], [1.5, -1.0, -5.0], [0.0, 1.2, -3.0]]))  # on the CPU
    with pytest.raises(RuntimeError, match="needs nvdiffrast installed and the mesh on a CUDA device"):
        rasterize(clip, torch.tensor([[0, 1, 2]]), 8, 8, backend="nvdiffrast")
    assert (rasterize(clip, torch.tensor([[0, 1, 2]]), 8, 8, backend="auto").triangle >= 0).any()  # the twin


def white_triangle(clip: torch.Tensor, size: int) -> torch.Tensor:
    faces = torch.tensor([[0, 1, 2]])
    raster = rasterize(clip, faces, size, size)
    return antialias(interpolate(torch.ones(3, 1, dtype=clip.dtype), raster, faces), raster, clip, faces)[..., 0]


def clip_of(corners: torch.Tensor) -> torch.Tensor:
    """NDC corners [3, 2] -> clip-space [3, 4] at depth 0, w = 1."""
    return torch.cat([corners, torch.zeros(3, 1, dtype=corners.dtype), torch.ones(3, 1, dtype=corners.dtype)], dim=1)


CORNERS = torch.tensor([[-0.71, -0.83], [0.77, -0.41], [-0.23, 0.68]], dtype=torch.float64)


def test_antialiased_coverage_follows_the_area_as_the_triangle_slides():
    a, b, c = CORNERS * 16 / 2  # in pixels of a 16 x 16 image
    area = 0.5 * abs(float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])))
    hard, soft = [], []
    for shift in torch.linspace(0, 2 / 16, 9, dtype=torch.float64):  # a pixel's width, in steps
        clip = clip_of(CORNERS + torch.stack([shift, shift / 3]))
        hard.append((rasterize(clip, torch.tensor([[0, 1, 2]]), 16, 16).triangle >= 0).sum().item())
        soft.append(white_triangle(clip, 16).sum().item())
    assert max(abs(value - area) for value in soft) / area < 0.03
    assert torch.tensor(soft).std() < 0.5 * torch.tensor(hard, dtype=torch.float64).std()  # no pixel-sized steps


def test_antialiasing_moves_the_silhouette_with_the_vertices():
    weights = torch.linspace(0, 1, 16, dtype=torch.float64).expand(16, 16)  # brighter to the right

    def score(shift: torch.Tensor) -> torch.Tensor:
        return (white_triangle(clip_of(CORNERS + torch.stack([shift, torch.zeros_like(shift)])), 16) * weights).sum()

    shift = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(score(shift), shift)
    step = 0.2  # 1.6 pixels: a slope over several pixels' edges, as the antialiased image is nearly linear
    secant = (score(torch.tensor(step, dtype=torch.float64)) - score(torch.tensor(-step, dtype=torch.float64))) / (2 * step)
    assert float(gradient) == pytest.approx(float(secant), rel=0.2)  # a hard rasterizer's gradient here is 0


def test_clip_positions_follow_the_projects_cameras():
    from mesh.rasterize import clip_positions
    from threed.cameras import look_at_origin

    c2w = look_at_origin(torch.tensor([20.0]), torch.tensor([35.0]), torch.tensor([2.0]))[0]
    fovy = torch.deg2rad(torch.tensor(50.0))
    up = c2w[:3, 1]  # the camera's up, in the world
    target = 2.0 * torch.tan(fovy / 2) * up  # at the origin's distance, on the top edge of the view
    clip = clip_positions(torch.stack([torch.zeros(3), target]), c2w, fovy)
    ndc = clip[:, :3] / clip[:, 3:]
    assert torch.allclose(ndc[0, :2], torch.zeros(2), atol=1e-6) and ndc[1, 1] == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(clip[:, 3], torch.tensor([2.0, 2.0]), atol=1e-5)  # w: the distance along the view axis


def test_edges_inside_a_surface_are_not_blended():
    corners = torch.tensor([[-0.61, -0.57], [0.63, -0.59], [0.6, 0.62], [-0.58, 0.6]], dtype=torch.float64)
    clip = torch.cat([corners, torch.zeros(4, 1, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64)], dim=1)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])  # a quad cut along its diagonal, both wound the same way
    raster = rasterize(clip, faces, 16, 16)
    white = antialias(interpolate(torch.ones(4, 1, dtype=torch.float64), raster, faces), raster, clip, faces)[..., 0]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 4:12] = True  # pixels over half a pixel inside the quad, along the diagonal too
    assert torch.allclose(white[inside], torch.ones((), dtype=torch.float64), atol=1e-12)


def test_an_empty_mesh_renders_nothing():
    clip, faces = torch.zeros(0, 4), torch.zeros(0, 3, dtype=torch.long)
    raster = rasterize(clip, faces, 4, 4)
    assert (raster.triangle == -1).all()
    assert torch.equal(antialias(torch.ones(4, 4, 3), raster, clip, faces), torch.ones(4, 4, 3))
