"""The DMTet mesh stage (threed.mesh_representation): started from a NeRF run, trained, exported, resumed."""
import json
import shutil

import numpy as np
import pytest
import torch

import launch
from mesh.dmtet import DMTetSpec
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
    """A NeRF run of two steps, then a mesh stage of four started from it (checkpoints every two steps)."""
    folder = tmp_path_factory.mktemp("stage")
    overrides = overrides_for_fast_runs(SHAPEWORLD_TEACHER, folder)
    assert launch.main(["--config", "configs/shapeworld.yaml", "--train", "--prompt", "a green cube", *overrides,
                        "trainer.max_steps=2", "export.formats=[ply]"]) == 0
    nerf_run = next((folder / "outputs").glob("shapeworld/*"))
    stage = ["mesh.grid.resolution=32", "export.formats=[glb]", "trainer.max_steps=4", "trainer.checkpoint_every=2",
             "guidance.switch.step=2"]  # VSD, then Uni-Instruct forward KL
    assert launch.main(["--config", "configs/shapeworld-geometry.yaml", "--train", "--from", str(nerf_run),
                        *overrides, *stage]) == 0
    return nerf_run, next((folder / "outputs").glob("shapeworld-geometry/*"))


def test_a_mesh_stage_starts_from_a_nerf_run_trains_and_exports(stage_runs):
    nerf_run, mesh_run = stage_runs
    mesh = load_mesh(mesh_run / "mesh" / "model.glb")
    assert mesh.is_watertight and mesh.volume > 0 and np.asarray(mesh.visual.vertex_colors)[:, :3].std() >= 0
    score = json.loads((mesh_run / "mesh" / "shapeworld_score.json").read_text())
    assert (score["shape"], score["colour"]) == ("cube", "green")  # --from takes the NeRF run's prompt
    nerf_mesh = load_mesh(nerf_run / "mesh" / "model.ply")
    # Its start is the NeRF's exported surface: the same shape, to within a grid cell (1.2 / 32).
    assert abs(score["initial"]["chamfer"] - evaluate_mesh(nerf_mesh, "a green cube")["chamfer"]) < 0.01
    assert (mesh_run / "turntable.mp4").stat().st_size > 0 and list((mesh_run / "validation").glob("*.png"))


def test_a_killed_mesh_stage_resumes_to_the_same_surface(stage_runs, tmp_path):
    _, mesh_run = stage_runs
    stopped = tmp_path / "stopped"
    shutil.copytree(mesh_run, stopped)
    (stopped / "checkpoints" / "step0000004.pt").unlink()  # died after its step-2 checkpoint
    assert launch.main(["--resume", str(stopped)]) == 0
    resumed, uninterrupted = (load_checkpoint(list_checkpoints(r / "checkpoints")[-1], torch.device("cpu"))
                              for r in (stopped, mesh_run))
    assert resumed["step"] == uninterrupted["step"] == 4
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
    stage = MeshRepresentation(MeshStageSpec(grid=DMTetSpec(resolution=32)), field.spec, [1.0, 1.0, 1.0])
    stage.initialize_from(field, threshold=5.0)
    cameras = make_cameras(*(torch.tensor([v]) for v in (0.0, 30.0, 1.5, 50.0)), 32, 32)
    views = stage.render(cameras, torch.Generator())
    coverage = views.opacity[0]
    rows = torch.arange(32, dtype=torch.float32)
    centre_row = (coverage.sum(dim=1) * rows).sum() / coverage.sum()
    assert centre_row < 12  # above the middle, as the NeRF's rows run top to bottom
    expected = np.pi * (0.15 / 1.5 / np.tan(np.radians(25))) ** 2 / 4 * 32 * 32  # the ball's disc, in pixels
    assert coverage.sum().item() == pytest.approx(expected, rel=0.1)
    assert torch.allclose(views.images[0][coverage == 0], torch.ones(3))  # the background colour elsewhere
    losses = stage.regularizer_losses(views, step=0)
    assert set(losses) == {"normal_consistency"} and losses["normal_consistency"] > 0
    sum(losses.values()).backward()
    assert stage.geometry.sdf.grad.abs().sum() > 0
    grouped = {id(p) for group in stage.parameter_groups() for p in group["params"]}
    assert grouped == {id(p) for p in stage.parameters()}


def test_an_empty_surface_is_a_clear_error():
    from threed.export import EmptyMeshError, ExportSpec

    stage = MeshRepresentation(MeshStageSpec(grid=DMTetSpec(resolution=32)), FieldSpec(hidden_dim=16), [1.0, 1.0, 1.0])
    with pytest.raises(EmptyMeshError, match="DMTet surface is empty"):
        stage.extract_mesh(ExportSpec())  # a fresh grid: every signed distance 0, no vertex inside
