"""threed.tools.shape_pull: how far the teacher's x0-predictions move a run's renders toward the true object."""
import json

import pytest
import torch

import launch
from tests.conftest import SHAPEWORLD_TEACHER, overrides_for_fast_runs
from threed.tools.shape_pull import gap_closed, main, pixel_kinds


def test_pixels_are_extra_missing_or_agreeing_by_render_opacity_and_true_silhouette():
    opacity = torch.tensor([[[0.9, 0.9, 0.1, 0.1]]])
    silhouette = torch.tensor([[[True, False, True, False]]])
    kinds = pixel_kinds(opacity, silhouette)
    assert kinds["agree"].tolist() == [[[True, False, False, False]]]
    assert kinds["extra"].tolist() == [[[False, True, False, False]]]
    assert kinds["missing"].tolist() == [[[False, False, True, False]]]


def test_the_gap_closed_is_the_fraction_of_the_mean_distance_to_the_truth_removed():
    truth = torch.ones(1, 1, 3, 3)  # white
    render = torch.zeros(1, 1, 3, 3)  # black: each pixel sqrt(3) from the truth
    prediction = torch.stack([torch.full((3,), 0.5), torch.zeros(3), torch.full((3,), -0.5)])[None]
    everywhere = torch.ones(1, 1, 3, dtype=torch.bool)
    entry = gap_closed(render, prediction, truth, everywhere)
    # distances sqrt(3) * (0.5, 1, 1.5): the mean is the render's own, so nothing closed; one pixel of three nearer
    assert entry == {"pixels": 3, "closed": pytest.approx(0.0, abs=1e-4), "toward": pytest.approx(1 / 3, abs=1e-4)}
    assert gap_closed(render, truth, truth, everywhere)["closed"] == pytest.approx(1.0)
    assert gap_closed(render, prediction, truth, ~everywhere) == {"pixels": 0}


def test_the_command_reports_each_kind_of_pixel_per_band_of_t(tmp_path, capsys):
    overrides = overrides_for_fast_runs(SHAPEWORLD_TEACHER, tmp_path)
    assert launch.main(["--config", "configs/shapeworld.yaml", "--train", *overrides, "trainer.max_steps=2",
                        "trainer.checkpoint_every=2", "export.formats=[obj]"]) == 0
    run = next((tmp_path / "outputs").glob("shapeworld/*"))
    main([str(run), "--steps", "2", "--views", "2", "--bands", "2", "--draws", "1"])
    report = json.loads(capsys.readouterr().out)
    bands = report["steps"]["2"]
    assert list(bands) == ["0-499", "500-999"]
    for kinds in bands.values():
        assert set(kinds) == {"extra", "missing", "agree"}
        assert kinds["agree"]["pixels"] > 0  # the initial ball covers most of the true vase
        assert all(entry["pixels"] == 0 or (0.0 <= entry["toward"] <= 1.0 and entry["closed"] <= 1.0)
                   for entry in kinds.values())


def test_a_prompt_outside_the_canon_is_refused(tmp_path, capsys):
    overrides = overrides_for_fast_runs(SHAPEWORLD_TEACHER, tmp_path)
    assert launch.main(["--config", "configs/shapeworld.yaml", "--train", *overrides, "trainer.max_steps=1",
                        "trainer.checkpoint_every=1", "export.formats=[obj]"]) == 0
    run = next((tmp_path / "outputs").glob("shapeworld/*"))
    config_path = run / "config.yaml"
    config_path.write_text(config_path.read_text().replace("prompt: a red vase", "prompt: a teapot"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--steps", "1"])
    assert exit_info.value.code == 2 and "not a ShapeWorld prompt" in capsys.readouterr().err
