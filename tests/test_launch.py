"""The command line end to end on the tiny teacher: a run, its artifacts, export, resume, errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import launch
from tests.conftest import overrides_for_fast_runs
from threed.checkpoint import list_checkpoints, load_checkpoint
from threed.config import load_config
from threed.export import load_mesh
from threed.mesh_metrics import base_color
from threed.run import Run


def train(overrides: list[str], *extra: str) -> Path:
    assert launch.main(["--config", "configs/tiny.yaml", "--train", *extra, *overrides]) == 0
    runs = sorted(Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("outputs="))).glob("tiny/*"))
    return runs[-1]


def final_checkpoint(run: Path) -> dict:
    return load_checkpoint(list_checkpoints(run / "checkpoints")[-1], torch.device("cpu"))


@pytest.fixture(scope="module")
def finished_run(tiny_teacher, tmp_path_factory) -> tuple[Path, list[str]]:
    overrides = overrides_for_fast_runs(tiny_teacher, tmp_path_factory.mktemp("run"))
    return train(overrides, "--prompt", "a red vase, front view", "--seed", "3", "trainer.ema_decay=0.5"), overrides


def test_run_folder_is_named_by_config_prompt_and_time(finished_run):
    run, _ = finished_run
    assert run.parent.name == "tiny"
    assert run.name.startswith("a_red_vase_front_view@")


def test_run_leaves_config_checkpoints_metrics_validation_video_and_meshes(finished_run):
    run, _ = finished_run
    config = load_config(run / "config.yaml")
    assert config.prompt == "a red vase, front view" and config.seed == 3
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step0000003.pt", "step0000006.pt"]
    assert not list((run / "checkpoints").glob("*.partial*"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in metrics] == [2, 4, 6]
    assert all(np.isfinite(record["loss"]) and record["it_per_s"] > 0 for record in metrics)
    assert all(0.1 <= record["diagnostics"]["density_ratio"] <= 20.0 for record in metrics)  # uni-instruct's r
    config = load_config(run / "config.yaml")
    for record in metrics:  # the ratio at the guidance's own renders, summed up over the two steps since the last
        ratio = record["ratio"]
        assert ratio["views"] == 2 * config.camera.batch_size
        assert 0 <= ratio["at_low_clamp"] + ratio["at_high_clamp"] <= 1 and ratio["off_clamps"] <= 1
        assert sum(band["views"] for band in ratio["h_by_t"].values()) == ratio["views"]
        assert all(band["mean"] > 0 and band["std"] >= 0 for band in ratio["h_by_t"].values())
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step0000003.png", "step0000006.png"]
    assert (run / "turntable.mp4").stat().st_size > 0
    for file_format in ("obj", "glb", "ply"):
        mesh = load_mesh(run / "mesh" / f"model.{file_format}")
        assert len(mesh.vertices) > 100 and len(mesh.faces) > 100
        if file_format == "ply":  # vertex colours; the OBJ and GLB carry a texture
            colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
        else:
            colors = base_color(mesh.visual.material, mesh.visual.uv)  # the texture at the vertices
        assert colors.std() > 0  # the field's albedo, not trimesh's default grey
    score = json.loads((run / "mesh" / "shapeworld_score.json").read_text())  # a canon prompt: scored at once
    assert (score["shape"], score["colour"]) == ("vase", "red")
    from threed.shapeworld.evaluator import evaluate_mesh  # the evaluator's numbers for the mesh it wrote

    keys = ("chamfer", "iou", "color_error")
    from_glb = evaluate_mesh(load_mesh(run / "mesh" / "model.glb"), "a red vase")  # read as a viewer reads it
    assert {key: score[key] for key in keys} == pytest.approx({key: from_glb[key] for key in keys}, rel=1e-9)
    from_ply = evaluate_mesh(load_mesh(run / "mesh" / "model.ply"), "a red vase")  # the same surface, vertex colours
    assert {key: score[key] for key in keys} == pytest.approx({key: from_ply[key] for key in keys}, rel=1e-3, abs=0.005)
    # The shape gain: against the mesh of the run's initial representation (step 0, the same export).
    initial = Run.open(run).initial_representation().extract_mesh(config.export)
    assert score["initial"]["chamfer"] == pytest.approx(evaluate_mesh(initial, "a red vase")["chamfer"], rel=1e-9)
    assert score["shape_gain"] == pytest.approx(1 - score["chamfer"] / score["initial"]["chamfer"], rel=1e-9)


def test_the_initial_blob_exports_as_a_closed_ball(finished_run):
    run, _ = finished_run
    mesh = load_mesh(run / "mesh" / "model.ply")
    assert mesh.is_watertight
    assert mesh.volume > 0  # faces point outwards
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert 0.2 < radii.mean() < 0.5


def test_training_changes_the_field(finished_run):
    run, _ = finished_run
    first, last = (load_checkpoint(p, torch.device("cpu"))["representation"] for p in list_checkpoints(run / "checkpoints"))
    assert not torch.equal(first["field.encoding.table"], last["field.encoding.table"])


def test_export_and_test_from_a_checkpoint(finished_run):
    run, _ = finished_run
    shutil.rmtree(run / "mesh")
    (run / "turntable.mp4").unlink()
    assert launch.main(["--export", str(run), "--format", "glb"]) == 0
    assert sorted(p.name for p in (run / "mesh").iterdir()) == ["model.glb", "shapeworld_score.json"]
    assert launch.main(["--test", str(run)]) == 0
    assert (run / "turntable.mp4").stat().st_size > 0


def test_a_killed_run_resumes_to_the_same_parameters(finished_run, tmp_path):
    run, _ = finished_run
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    # The process died after its step-3 checkpoint: nothing from later steps survives.
    (stopped / "checkpoints" / "step0000006.pt").unlink()
    shutil.rmtree(stopped / "mesh")
    step3 = stopped / "checkpoints" / "step0000003.pt"
    torch.save({**torch.load(step3, weights_only=True), "training_s": 1000.0}, step3)  # a long first session
    assert launch.main(["--resume", str(stopped)]) == 0
    resumed, uninterrupted = final_checkpoint(stopped), final_checkpoint(run)
    assert resumed["training_s"] > 1000
    assert resumed["representation"].keys() == uninterrupted["representation"].keys()
    for name in uninterrupted["representation"]:
        assert torch.equal(resumed["representation"][name], uninterrupted["representation"][name]), name
    for resumed_average, average in zip(resumed["ema"]["shadow_params"], uninterrupted["ema"]["shadow_params"], strict=True):
        assert torch.equal(resumed_average, average)
    metrics = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in metrics] == [2, 4, 6]


def test_exports_from_a_checkpoint_show_its_moving_average(finished_run):
    run, _ = finished_run
    state = final_checkpoint(run)
    field = Run.open(run).trained_representation().field
    averaged_table = state["ema"]["shadow_params"][0]  # the hash table is the representation's first parameter
    assert torch.equal(field.encoding.table, averaged_table)
    assert not torch.equal(averaged_table, state["representation"]["field.encoding.table"])


def test_v_prediction_teacher_trains(fast_overrides, tiny_v_teacher):
    overrides = [o for o in fast_overrides if not o.startswith("teacher.pretrained")]
    run = train([*overrides, f"teacher.pretrained={tiny_v_teacher}", "trainer.max_steps=2", "export.formats=[ply]"])
    assert (run / "mesh" / "model.ply").exists()


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["trainer.max_stepz=3"], "did you mean 'trainer.max_steps'?"),
    (["trainer.max_steps=lots"], "bad value for config key 'trainer.max_steps'"),
    (["teacher.pretrained=nobody/no-such-teacher"], "cannot load teacher 'nobody/no-such-teacher'"),
    (["--outputs", "{a_file}/runs"], "cannot write run folder"),
    (["teacher.pretrained={tmp_path}/no-teacher"], "no such folder"),
    (["name=../../escaped"], "is not a plain folder name"),
    (["name=/tmp/escaped"], "is not a plain folder name"),
    (["--outputs", ""], "is not a usable folder"),
    (["--outputs", "{tmp_path}/../escaped"], "is not a usable folder"),
    (["seed=99999999999999999999999"], "seed = 99999999999999999999999 is out of range"),
    (["optim.lr_encoding=1e30"], "optim.lr_encoding = 1e+30 is out of range"),
    (["--prompt", "a" * 10_000], "keep it under"),
    (["geometry.grid.backend=tcnn"], "geometry.grid.backend=tcnn needs tiny-cuda-nn"),
    (["mesh.rasterizer=nvdiffrast"], "mesh.rasterizer=nvdiffrast needs nvdiffrast and a CUDA device"),
    (["representation=texture"], "representation=texture starts from a finished run"),
])
def test_user_errors_are_one_clear_line(args, message, capsys, tmp_path, fast_overrides):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    args = [arg.format(a_file=a_file, tmp_path=tmp_path) for arg in args]
    if "--outputs" in args:
        fast_overrides = [o for o in fast_overrides if not o.startswith("outputs=")]
    assert launch.main(["--config", "configs/tiny.yaml", "--train", *fast_overrides, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "huggingface-cli download /" not in err
    assert not (tmp_path / "outputs").exists()  # a failed start leaves no run folder behind
    assert not list(tmp_path.parent.glob("escaped")) and not Path("/tmp/escaped").exists()


def test_debug_shows_the_traceback():
    with pytest.raises(Exception, match="the prompt is empty"):
        launch.main(["--config", "configs/tiny.yaml", "--train", "--prompt", "", "--debug"])


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert launch.main(["--resume", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_a_killed_vsd_run_resumes_to_the_same_field_and_fake_score(fast_overrides, tmp_path):
    run = train([*fast_overrides, "guidance.estimator=vsd", "trainer.max_steps=4", "trainer.checkpoint_every=2",
                 "export.formats=[ply]"])
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    (stopped / "checkpoints" / "step0000004.pt").unlink()
    assert launch.main(["--resume", str(stopped)]) == 0
    resumed, uninterrupted = (load_checkpoint(list_checkpoints(r / "checkpoints")[-1], torch.device("cpu")) for r in (stopped, run))
    for part in ("representation", "guidance"):
        flat_resumed, flat_uninterrupted = flatten(resumed[part]), flatten(uninterrupted[part])
        assert flat_resumed.keys() == flat_uninterrupted.keys() and len(flat_resumed) > 0
        for name, value in flat_uninterrupted.items():
            assert torch.equal(flat_resumed[name], value), (part, name)


def flatten(state: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


@pytest.mark.parametrize("config", ["uni-instruct-fkl", "uni-instruct-rkl-to-fkl", "sid"])
def test_method_configs_complete_a_short_run_on_the_tiny_teacher(config, fast_overrides):
    out = next(o.split("=", 1)[1] for o in fast_overrides if o.startswith("outputs="))
    args = ["--config", f"configs/{config}.yaml", "--train", *fast_overrides, "trainer.max_steps=2",
            "guidance.switch.step=1", "export.formats=[glb]", "export.threshold=5", "guidance.gradient_checkpointing=false"]
    assert launch.main(args) == 0
    run = next(Path(out).glob(f"{config}/*"))
    assert (run / "mesh" / "model.glb").exists() and (run / "turntable.mp4").exists()


def test_the_shapeworld_evaluator_accepts_an_exported_mesh(finished_run):
    from threed.shapeworld.evaluator import evaluate_mesh, ground_truth_mesh

    run, _ = finished_run
    mesh_file = next((run / "mesh").glob("model.*"))  # another test may have re-exported only one format
    score = evaluate_mesh(load_mesh(mesh_file), "a red vase")
    truth = evaluate_mesh(ground_truth_mesh("vase"), "a red vase")  # the true vase, uncoloured: grey
    assert truth["chamfer"] < 0.005 < score["chamfer"] and truth["iou"] > 0.95 > score["iou"] > 0.0
