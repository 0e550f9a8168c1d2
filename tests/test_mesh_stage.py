"""The DMTet mesh stage (threed.mesh_representation): started from a NeRF run, trained, exported, resumed."""
import json
import shutil

import numpy as np
import pytest
import torch

import launch
from mesh.dmtet import DMTetGeometry, DMTetSpec
from nerf.field import FieldSpec, RadianceField
from tests.conftest import SHAPEWORLD_TEACHER, overrides_for_fast_runs
from threed.cameras import make_cameras
from threed.checkpoint import list_checkpoints, load_checkpoint
from threed.config import load_config
from threed.errors import ConfigError
from threed.export import load_mesh
from threed.mesh_representation import MeshRepresentation, MeshStageSpec
from threed.shapeworld.evaluator import evaluate_mesh


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    """The three stages in one command: a NeRF run, then a geometry stage started from it, then a texture stage
    started from that (four steps each, checkpoints every two)."""
    folder = tmp_path_factory.mktemp("stage")
    overrides = overrides_for_fast_runs(SHAPEWORLD_TEACHER, folder)
    stage = ["mesh.grid.resolution=32", "export.formats=[glb,ply]", "trainer.max_steps=4", "trainer.checkpoint_every=2",
             "guidance.switch.step=2", "export.texture_size=128"]  # VSD, then Uni-Instruct forward KL
    assert launch.main(["--config", "configs/shapeworld.yaml", "--train", "--prompt", "a green cube", *overrides, *stage,
                        "--then", "configs/shapeworld-geometry.yaml", "--then", "configs/shapeworld-texture.yaml"]) == 0
    return tuple(next((folder / "outputs").glob(f"{name}/*")) for name in ("shapeworld", "shapeworld-geometry", "shapeworld-texture"))


def test_a_mesh_stage_starts_from_a_nerf_run_trains_and_exports(stage_runs):
    nerf_run, mesh_run, _ = stage_runs
    mesh = load_mesh(mesh_run / "mesh" / "model.ply")
    assert mesh.is_watertight and mesh.volume > 0 and mesh.visual.kind == "vertex"
    assert load_mesh(mesh_run / "mesh" / "model.glb").visual.kind == "texture"
    score = json.loads((mesh_run / "mesh" / "shapeworld_score.json").read_text())
    assert (score["shape"], score["colour"]) == ("cube", "green")  # --from takes the NeRF run's prompt
    nerf_mesh = load_mesh(nerf_run / "mesh" / "model.ply")
    # Its start is the NeRF's exported surface: the same shape, to within a grid cell (1.2 / 32).
    assert abs(score["initial"]["chamfer"] - evaluate_mesh(nerf_mesh, "a green cube")["chamfer"]) < 0.01
    assert (mesh_run / "turntable.mp4").stat().st_size > 0 and list((mesh_run / "validation").glob("*.png"))


def test_the_three_stages_run_on_a_stable_diffusion_shaped_teacher(tiny_teacher, tmp_path):
    """configs/tiny.yaml's NeRF, then ProlificDreamer's geometry (SDS on normal maps) and texture (VSD) stages."""
    fast = [*overrides_for_fast_runs(tiny_teacher, tmp_path), "trainer.max_steps=2", "mesh.grid.resolution=32",
            "mesh.grid.half_size=1.0", "camera.height=16", "camera.width=16", "export.formats=[glb]", "export.texture_size=64"]
    assert launch.main(["--config", "configs/tiny.yaml", "--train", *fast, "--then", "configs/prolificdreamer-geometry.yaml",
                        "--then", "configs/prolificdreamer-texture.yaml"]) == 0
    texture_run = next((tmp_path / "outputs").glob("prolificdreamer-texture/*"))
    mesh = load_mesh(texture_run / "mesh" / "model.glb")
    assert mesh.visual.kind == "texture" and len(mesh.faces) > 100


def test_the_texture_stage_keeps_the_geometry_stages_surface_and_trains_its_colour(stage_runs):
    _, geometry_run, texture_run = stage_runs
    assert load_config(texture_run / "config.yaml").mesh.start_from == str(geometry_run)
    assert load_config(texture_run / "config.yaml").prompt == "a green cube"
    surfaces = [load_mesh(run / "mesh" / "model.ply") for run in (geometry_run, texture_run)]
    assert np.allclose(surfaces[0].vertices, surfaces[1].vertices) and np.array_equal(surfaces[0].faces, surfaces[1].faces)
    first, last = (load_checkpoint(list_checkpoints(texture_run / "checkpoints")[i], torch.device("cpu"))["representation"]
                   for i in (0, -1))
    colour = [name for name in first if name.startswith("colour.")]
    assert colour and any(not torch.equal(first[name], last[name]) for name in colour)
    assert set(first) & {"geometry.sdf", "geometry.deformation"} == set()  # nothing of the surface is trained


@pytest.mark.parametrize("stage", [1, 2], ids=["geometry", "texture"])
def test_a_killed_mesh_stage_resumes_to_the_same_result(stage_runs, tmp_path, stage):
    mesh_run = stage_runs[stage]
    stopped = tmp_path / "stopped"
    shutil.copytree(mesh_run, stopped)
    (stopped / "checkpoints" / "step0000004.pt").unlink()  # died after its step-2 checkpoint
    assert launch.main(["--resume", str(stopped)]) == 0
    resumed, uninterrupted = (load_checkpoint(list_checkpoints(r / "checkpoints")[-1], torch.device("cpu"))
                              for r in (stopped, mesh_run))
    assert resumed["step"] == uninterrupted["step"] == 4
    for name, value in uninterrupted["representation"].items():
        assert torch.equal(resumed["representation"][name], value), name


def test_a_stage_exports_and_resumes_without_its_source_runs(stage_runs, tmp_path):
    """Once a stage has a checkpoint, its folder alone holds what it needs: its source runs may be moved away."""
    nerf_run, geometry_run, texture_run = stage_runs
    stopped = tmp_path / "stopped"
    shutil.copytree(texture_run, stopped)
    (stopped / "checkpoints" / "step0000004.pt").unlink()  # died after its step-2 checkpoint
    (stopped / "mesh" / "model.glb").unlink()
    hidden = [run.rename(run.with_name(run.name + ".moved")) for run in (nerf_run, geometry_run)]
    try:
        assert launch.main(["--export", str(stopped), "--format", "glb"]) == 0
        assert load_mesh(stopped / "mesh" / "model.glb").visual.kind == "texture"
        assert "shape_gain" not in json.loads((stopped / "mesh" / "shapeworld_score.json").read_text())
        assert launch.main(["--resume", str(stopped)]) == 0
    finally:
        for moved, run in zip(hidden, (nerf_run, geometry_run)):
            moved.rename(run)
    resumed, uninterrupted = (load_checkpoint(list_checkpoints(r / "checkpoints")[-1], torch.device("cpu"))
                              for r in (stopped, texture_run))
    for name, value in uninterrupted["representation"].items():
        assert torch.equal(resumed["representation"][name], value), name


def test_a_mesh_stage_needs_a_nerf_run_to_start_from(tmp_path, capsys):
    with pytest.raises(ConfigError, match="mesh.start_from=RUN_DIR"):
        load_config("configs/shapeworld-geometry.yaml")
    assert launch.main(["--config", "configs/shapeworld-geometry.yaml", "--train", "--from", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        launch.main(["--export", str(tmp_path), "--from", str(tmp_path)])  # --from starts a stage: --train only


class OffCentreBall(RadianceField):
    """A field whose density is a ball of radius 0.15 centred 0.25 above the origin (threshold 5 at its surface)."""

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return 10.0 - 5.0 * (points - torch.tensor([0.0, 0.0, 0.25])).norm(dim=-1) / 0.15


def test_renders_are_upright_and_cover_the_surface():
    field = OffCentreBall(FieldSpec(radius=0.6, hidden_dim=16))
    stage = MeshRepresentation.from_density(MeshStageSpec(grid=DMTetSpec(resolution=32)), field, 5.0, [1.0, 1.0, 1.0])
    cameras = make_cameras(*(torch.tensor([v]) for v in (0.0, 30.0, 1.5, 50.0)), 32, 32)
    views = stage.render(cameras, torch.Generator())
    coverage = views.opacity[0]
    rows = torch.arange(32, dtype=torch.float32)
    centre_row = (coverage.sum(dim=1) * rows).sum() / coverage.sum()
    assert centre_row < 12  # above the middle, as the NeRF's rows run top to bottom
    expected = np.pi * (0.15 / 1.5 / np.tan(np.radians(25))) ** 2 / 4 * 32 * 32  # the ball's disc, in pixels
    assert coverage.sum().item() == pytest.approx(expected, rel=0.1)
    assert torch.allclose(views.images[0][coverage == 0], torch.ones(3))  # the background colour elsewhere
    losses = stage.regularizer_losses(views, step=0, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"normal_consistency"} and losses["normal_consistency"] > 0
    sum(losses.values()).backward()
    assert stage.geometry.sdf.grad.abs().sum() > 0
    grouped = {id(p) for group in stage.parameter_groups() for p in group["params"]}
    assert grouped == {id(p) for p in stage.parameters()}


def test_normal_maps_face_the_camera_and_move_the_surface():
    field = OffCentreBall(FieldSpec(radius=0.6, hidden_dim=16))
    spec = MeshStageSpec(grid=DMTetSpec(resolution=32), shading="normal")
    stage = MeshRepresentation.from_density(spec, field, 5.0, [1.0, 1.0, 1.0])
    cameras = make_cameras(*(torch.tensor([v]) for v in (0.0, 30.0, 1.5, 50.0)), 32, 32)
    views = stage.render(cameras, torch.Generator())
    inside = views.opacity[0] == 1
    normals = views.images[0][inside] * 2 - 1  # [N, 3] world normals of the covered pixels
    towards_camera = cameras.c2w[0, :3, 3] / cameras.c2w[0, :3, 3].norm()
    assert (normals @ towards_camera).mean() > 0.6  # a ball's visible side faces the camera on average
    assert normals.norm(dim=-1).sub(1).abs().max() < 1e-4
    views.images.sum().backward()
    assert stage.geometry.sdf.grad.abs().sum() > 0  # through the normals alone
    assert all(p.grad is None for p in stage.colour.parameters())


def test_an_empty_surface_is_a_clear_error():
    from threed.export import EmptyMeshError, ExportSpec

    spec = MeshStageSpec(grid=DMTetSpec(resolution=32))
    stage = MeshRepresentation(spec, DMTetGeometry(spec.grid), RadianceField(FieldSpec(hidden_dim=16)), [1.0, 1.0, 1.0])
    with pytest.raises(EmptyMeshError, match="DMTet surface is empty"):
        stage.extract_mesh(ExportSpec())  # a fresh grid: every signed distance 0, no vertex inside
    field = OffCentreBall(FieldSpec(radius=0.6, hidden_dim=16))  # density at most 10
    with pytest.raises(EmptyMeshError, match="does not cross 20"):
        MeshRepresentation.from_density(spec, field, 20.0, [1.0, 1.0, 1.0])
