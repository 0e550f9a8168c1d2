from pathlib import Path

import pytest

from guidance.schedules import Ramp
from threed.config import Config, load_config
from threed.errors import ConfigError

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    config = load_config(path, ["prompt=a red vase", "mesh.start_from=outputs/a-nerf-run"])  # stages need a start
    assert isinstance(config, Config)
    assert config.name == path.stem


def test_overrides_are_merged_and_typed():
    config = load_config("configs/tiny.yaml", ["trainer.max_steps=7", "camera.distance=[1.0,1.2]", "prompt=a blue cube, side view"])
    assert config.trainer.max_steps == 7
    assert config.camera.distance == [1.0, 1.2]
    assert config.prompt == "a blue cube, side view"


def test_a_ramp_is_a_number_or_a_mapping(tmp_path):
    config = load_config("configs/tiny.yaml", ["teacher.guidance_scale=50", "regularizers.sparsity=0.2"])
    assert config.teacher.guidance_scale == Ramp(50.0) and config.regularizers.sparsity == Ramp(0.2)
    (tmp_path / "ramped.yaml").write_text(
        "base: " + str(Path("configs/tiny.yaml").resolve()) + "\n"
        "teacher:\n  guidance_scale: {start: 2.0, end: 1.0, start_step: 10, end_step: 20}\n")
    ramp = load_config(tmp_path / "ramped.yaml").teacher.guidance_scale
    assert [ramp.at(step) for step in (0, 15, 30)] == [2.0, 1.5, 1.0]


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_step=5", "unknown config key 'trainer.max_step'; did you mean 'trainer.max_steps'?"),
    ("geometry.grid.n_level=4", "did you mean 'geometry.grid.n_levels'?"),
    ("trainer.max_steps=many", "bad value for config key 'trainer.max_steps'"),
    ("trainer.max_steps=0", "trainer.max_steps = 0 is out of range: it must be >= 1"),
    ("guidance.max_step_percent.start=1.5", "guidance.max_step_percent must stay within [0, 1], got start=1.5"),
    ("guidance.estimator=magic", "guidance.estimator = 'magic' is not one of"),
    ("camera.elevation_deg=[30,10]", "camera.elevation_deg must be a [low, high] pair"),
    ("prompt='  '", "the prompt is empty"),
    ("trainer.max_steps", "is not of the form key.path=value"),
    ("teacher.guidance_scale=strong", "teacher.guidance_scale = 'strong' is not a number or a ramp"),
    ("teacher.guidance_scale={start: 2.0, end: -1.0, start_step: 0, end_step: 9}", "teacher.guidance_scale.end = -1.0 is out of range"),
])
def test_bad_config_is_a_clear_error(override, expected):
    with pytest.raises(ConfigError) as error:
        load_config("configs/tiny.yaml", [override])
    assert expected in str(error.value)


def test_missing_prompt_names_the_key(tmp_path):
    path = tmp_path / "noprompt.yaml"
    path.write_text("trainer:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match="prompt is not set"):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_configs_inherit_from_their_base():
    config = load_config("configs/uni-instruct-rkl-to-fkl.yaml", ["prompt=a vase"])
    assert config.name == "uni-instruct-rkl-to-fkl"
    assert (config.guidance.estimator, config.guidance.divergence) == ("uni-instruct", "rkl")
    assert (config.guidance.switch.step, config.guidance.switch.divergence) == (5000, "fkl")
    assert config.guidance.fake_score.lr == 1e-4  # from prolificdreamer.yaml, two levels up
    assert config.teacher.pretrained == "stabilityai/stable-diffusion-2-1-base"


def test_a_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("prompt", ["a dog's house, side view", 'a "quoted" vase', "back\\slash = 1"])
def test_override_round_trips_any_prompt(prompt):
    from threed.config import override

    assert load_config("configs/tiny.yaml", [override("prompt", prompt)]).prompt == prompt


def test_batch_normalised_ratio_weights_need_more_than_one_view():
    """h / mean(h) over one view is 1: every divergence would silently be VSD."""
    with pytest.raises(ConfigError, match="camera.batch_size=1"):
        load_config("configs/tiny.yaml", ["guidance.ratio.normalize=true", "camera.batch_size=1"])
    assert load_config("configs/tiny.yaml", ["guidance.ratio.normalize=true", "camera.batch_size=2"]).guidance.ratio.normalize
