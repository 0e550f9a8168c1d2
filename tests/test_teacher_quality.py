"""The teacher-quality check: the shipped shape-and-colour classifier, its training, and the command
that classifies a teacher's samples of the 36 prompts."""
import json

import imageio.v3 as imageio
import pytest
import torch

from threed.shapeworld import teacher_quality, train_teacher
from threed.shapeworld.canon import COLOURS, SHAPES


def test_the_shipped_classifier_recognises_fresh_renders():
    images, shapes, colours = teacher_quality.dataset_tensors(per_prompt=2, seed=7)  # seeds it never saw
    report = teacher_quality.accuracy_report(teacher_quality.load_classifier(), images, shapes, colours)
    assert report["n_images"] == 72
    assert report["shape_accuracy"] >= 0.95 and report["colour_accuracy"] >= 0.95


def test_the_classifier_judges_colour_by_the_object_not_the_background():
    images, shapes, colours = teacher_quality.dataset_tensors(per_prompt=1, seed=8)
    red, blue = COLOURS.index("red"), COLOURS.index("blue")
    reds = images[colours == red]
    object_pixels = (reds < 0.99).any(dim=1, keepdim=True)
    painted_blue = torch.where(object_pixels, reds[:, [2, 1, 0]], reds)  # swap red and blue channels
    _, predicted = teacher_quality.load_classifier().predict(painted_blue)
    assert (predicted == blue).float().mean() >= 0.8


@pytest.mark.slow
def test_classifier_training_learns_shape_and_colour():
    classifier = teacher_quality.train_classifier(per_prompt=8, epochs=6, seed=3, batch=32)
    report = teacher_quality.accuracy_report(classifier, *teacher_quality.dataset_tensors(per_prompt=2, seed=4))
    assert report["colour_accuracy"] >= 0.9
    assert report["shape_accuracy"] >= 0.5  # chance is 1/6


@pytest.mark.slow
def test_evaluate_command_samples_all_prompts_and_reports_json(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    train_teacher.main([str(teacher), "--architecture", "test", "--per-prompt", "1", "--batch", "4", "--steps", "1"])
    capsys.readouterr()
    grid = tmp_path / "samples.png"
    teacher_quality.main(["evaluate", str(teacher / "pipeline"), "--per-prompt", "1", "--steps", "2",
                          "--grid", str(grid)])
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == 36 and report["sampler"]["scheduler"] == "DDIMScheduler"
    assert 0.0 <= report["shape_accuracy"] <= 1.0 and 0.0 <= report["colour_accuracy"] <= 1.0
    assert sum(map(sum, report["shape_confusion"]["counts"])) == 36
    assert report["passes"] == (min(report["shape_accuracy"], report["colour_accuracy"]) >= 0.9)
    assert imageio.imread(grid).shape == (len(SHAPES) * 64, len(COLOURS) * 64, 3)


def test_a_missing_classifier_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="train one with"):
        teacher_quality.main(["evaluate", str(tmp_path), "--classifier", str(tmp_path / "none.pt")])


def test_swap_word_changes_only_that_word():
    assert teacher_quality.swap_word("a red cube, front view", SHAPES) == "a red cone, front view"
    assert teacher_quality.swap_word("a red cube, front view", COLOURS) == "a yellow cube, front view"
    assert teacher_quality.swap_word("a blue vase", SHAPES) == "a blue torus"


@pytest.mark.slow
def test_conditioning_command_reports_the_loss_per_caption(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    train_teacher.main([str(teacher), "--architecture", "test", "--per-prompt", "1", "--batch", "4", "--steps", "1"])
    capsys.readouterr()
    teacher_quality.main(["conditioning", str(teacher / "pipeline"), "--per-prompt", "1"])
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == 36 and len(report["loss_by_timestep"]) == 5
    losses = report["loss_by_timestep"]["900"]
    assert set(losses) == {"true", "wrong_shape", "wrong_colour", "empty"} and all(v > 0 for v in losses.values())


def test_the_colour_error_of_images_is_the_evaluators_and_ignores_shading_and_background():
    red = torch.ones(2, 3, 8, 8)
    red[:, :, 2:6, 2:6] = torch.tensor([0.85, 0.15, 0.15])[:, None, None] * torch.linspace(0.35, 1.0, 4)  # shaded
    assert teacher_quality.foreground_chromaticity_error(red, (0.85, 0.15, 0.15)) < 1e-6
    assert teacher_quality.foreground_chromaticity_error(red, (0.2, 0.35, 0.85)) > 0.3
    with pytest.raises(ValueError, match="all white"):
        teacher_quality.foreground_chromaticity_error(torch.ones(1, 3, 8, 8), (0.85, 0.15, 0.15))


def test_colour_command_reports_renders_and_each_guidance_scale(capsys):
    teacher_quality.main(["colour", "assets/shapeworld-teacher", "--prompt", "a red vase", "--guidance-scales", "1,2",
                          "--n-images", "2", "--steps", "2"])
    report = json.loads(capsys.readouterr().out)
    assert report["renders_colour_error"] < 0.05  # the data generator's own renders: the albedo, up to edge pixels
    assert set(report["teacher_colour_error_by_guidance_scale"]) == {"1.0", "2.0"}
    assert 0.1 < report["renders_object_fraction"] < 0.4  # the vase fills about a fifth of a data-set view
    low, high = report["renders_object_fraction_10_90"]
    assert low < report["renders_object_fraction"] < high  # two cameras, two sizes
    assert set(report["teacher_object_fraction_by_guidance_scale"]) == {"1.0", "2.0"}
    with pytest.raises(SystemExit, match="not a ShapeWorld prompt"):
        teacher_quality.main(["colour", "assets/shapeworld-teacher", "--prompt", "a hamburger"])
    with pytest.raises(SystemExit, match="--guidance-scales e.g. 1,2"):
        teacher_quality.main(["colour", "assets/shapeworld-teacher", "--prompt", "a red vase", "--guidance-scales", "1;2"])


def test_drift_command_measures_the_teachers_pull_on_true_renders(capsys):
    teacher_quality.main(["drift", "assets/shapeworld-teacher", "--prompt", "a red vase", "--guidance-scales", "1,2",
                          "--timesteps", "1,900", "--n-images", "2"])
    report = json.loads(capsys.readouterr().out)
    assert report["renders"]["colour_error"] < 1e-3  # the silhouettes pick object pixels only: the albedo's chromaticity
    predictions = report["x0_prediction_by_guidance_scale_and_timestep"]
    assert set(predictions) == {"1.0", "2.0"} and set(predictions["1.0"]) == {"1", "900"}
    # At t = 1 the prediction is the render itself; at t = 900 the teacher redraws it.
    nearly_clean = predictions["1.0"]["1"]["object_colour"]
    assert max(abs(a - b) for a, b in zip(nearly_clean, report["renders"]["object_colour"])) < 0.01
    assert predictions["1.0"]["900"]["object_colour"] != nearly_clean
    with pytest.raises(SystemExit, match="--timesteps must lie in"):
        teacher_quality.main(["drift", "assets/shapeworld-teacher", "--prompt", "a red vase", "--timesteps", "1000"])
    with pytest.raises(SystemExit, match="--timesteps e.g."):
        teacher_quality.main(["drift", "assets/shapeworld-teacher", "--prompt", "a red vase", "--timesteps", "a"])


def test_pull_command_classifies_the_teachers_x0_predictions_from_a_ball(capsys):
    teacher_quality.main(["pull", "assets/shapeworld-teacher", "--guidance-scales", "5", "--timesteps", "20,950",
                          "--n-images", "2"])
    report = json.loads(capsys.readouterr().out)
    assert report["start_shape"] == "sphere" and len(report["targets"]) == 5 and "sphere" not in report["targets"]
    target = report["fraction_classified_target_by_guidance_scale_and_timestep"]["5.0"]
    start = report["fraction_classified_start_by_guidance_scale_and_timestep"]["5.0"]
    # Nearly clean, the prediction is the ball itself, whatever the prompt; nearly pure noise, it is the prompt's shape.
    assert start["20"] == 1.0 and target["20"] == 0.0
    assert target["950"] > 0.5 > start["950"]
    with pytest.raises(SystemExit, match="--from must be one of"):
        teacher_quality.main(["pull", "assets/shapeworld-teacher", "--from", "ball"])


def test_the_balls_object_fraction_is_a_rendered_spheres_and_its_inverse_finds_the_radius():
    from threed.shapeworld.render import render_shape, sample_dataset_cameras

    cameras = sample_dataset_cameras(64, torch.Generator().manual_seed(3))
    rendered = teacher_quality.object_fractions(render_shape("sphere", "red", cameras).permute(0, 3, 1, 2)).mean()
    assert teacher_quality.ball_object_fraction(0.35, cameras) == pytest.approx(float(rendered), rel=0.03)  # canon sphere: 0.35
    assert teacher_quality.matching_ball_radius(teacher_quality.ball_object_fraction(0.3, cameras), cameras) == \
        pytest.approx(0.3, abs=1e-3)


def test_size_command_reports_the_teachers_object_fraction_and_its_ball(capsys):
    teacher_quality.main(["size", "assets/shapeworld-teacher", "--per-prompt", "1", "--steps", "4"])
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == 36 and set(report["object_fraction_by_shape"]) == set(SHAPES)
    assert 0.0 < report["object_fraction"] < 1.0 and 0.05 < report["matching_ball_radius"] < 1.0
