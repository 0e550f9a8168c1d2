"""The shipped ShapeWorld teacher: within its size budget, loaded offline by the Stable Diffusion code
path, and driving a short run of the embedded default whose mesh the evaluator scores."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import launch
from guidance.pixel_pipeline import PixelDiffusionPipeline
from guidance.teacher import DiffusionTeacher, TeacherSpec
from tests.conftest import overrides_for_fast_runs
from threed.config import load_config
from threed.export import load_mesh
from threed.shapeworld.evaluator import evaluate_mesh

SHIPPED_TEACHER = Path(__file__).resolve().parent.parent / "assets" / "shapeworld-teacher"


def test_the_shipped_teacher_fits_the_budget_of_40_mb():
    size = sum(file.stat().st_size for file in SHIPPED_TEACHER.rglob("*") if file.is_file())
    assert 1_000_000 < size <= 40_000_000


def test_the_shipped_teacher_loads_offline_and_generates_64x64():
    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=str(SHIPPED_TEACHER)), torch.device("cpu"))
    assert teacher.vae is None and teacher.image_size == 64
    pipeline = PixelDiffusionPipeline.from_pretrained(SHIPPED_TEACHER)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a red cube, front view", num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                     output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    assert image.std() > 0.05  # an image, not a constant


def test_the_teachers_fingerprint_does_not_depend_on_the_thread_count():
    """The sample-bank cache is keyed by it: a run with other OMP_NUM_THREADS must find the same bank."""
    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=str(SHIPPED_TEACHER)), torch.device("cpu"))
    threads = torch.get_num_threads()
    try:
        fingerprints = set()
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            fingerprints.add(teacher.fingerprint())
    finally:
        torch.set_num_threads(threads)
    assert len(fingerprints) == 1


def test_the_embedded_default_config_uses_the_shipped_teacher():
    config = load_config("configs/shapeworld.yaml", [])
    assert Path(config.teacher.pretrained).resolve() == SHIPPED_TEACHER
    final_step = config.trainer.max_steps
    assert (config.guidance.estimator_at(final_step), config.guidance.divergence_at(final_step)) == ("uni-instruct", "fkl")
    assert (config.camera.height, config.camera.width, config.background.color) == (64, 64, [1.0, 1.0, 1.0])


def test_a_short_shapeworld_run_exports_a_mesh_the_evaluator_scores(tmp_path):
    overrides = overrides_for_fast_runs(str(SHIPPED_TEACHER), tmp_path)
    assert launch.main(["--config", "configs/shapeworld.yaml", "--train", "--prompt", "a green torus", *overrides,
                        "export.formats=[obj]", "export.threshold=5"]) == 0
    mesh_file = next((tmp_path / "outputs").glob("shapeworld/*/mesh/model.obj"))
    score = evaluate_mesh(load_mesh(mesh_file), "a green torus")
    written = json.loads((mesh_file.parent / "shapeworld_score.json").read_text())  # the run's own, in memory
    assert {key: score[key] for key in ("chamfer", "iou")} == pytest.approx(
        {key: written[key] for key in ("chamfer", "iou")}, rel=1e-3)
    assert score["chamfer"] > 0.005 and score["iou"] < 0.95  # six steps at 16 x 16 are no torus yet
