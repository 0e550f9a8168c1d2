import pytest
import torch

from guidance.distillation import GuidanceOutput
from guidance.teacher import DiffusionTeacher
from threed.checkpoint import latest_checkpoint, list_checkpoints, save_atomic
from threed.config import load_config
from threed.errors import NonFiniteLossError
from threed.runs import create_run, prompt_slug


def make_trainer(config):
    from threed.trainer import Trainer

    teacher = DiffusionTeacher.from_pretrained(config.teacher, torch.device("cpu"))
    return Trainer(config, create_run(config.outputs, config.name, config.prompt), teacher)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "step0000001.pt"
    save_atomic({"x": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_atomic({"x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path)["x"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path]


def test_nan_loss_stops_the_run_before_any_checkpoint(fast_overrides, tmp_path):
    config = load_config("configs/tiny.yaml", fast_overrides)
    trainer = make_trainer(config)

    def nan_guidance(images, elevation_deg, azimuth_deg, generator):
        return GuidanceOutput(losses={"sds": images.sum() * float("nan")}, timesteps=torch.zeros(1))

    trainer.guidance.forward = nan_guidance
    with pytest.raises(NonFiniteLossError, match="NaN or infinite before step 2"):
        trainer.fit()
    assert latest_checkpoint(trainer.paths.checkpoints) is None


def test_stop_request_ends_the_run_with_a_checkpoint(fast_overrides):
    config = load_config("configs/tiny.yaml", fast_overrides)
    trainer = make_trainer(config)
    trainer.fit(stop_requested=lambda: trainer.step >= 2)
    assert [p.name for p in list_checkpoints(trainer.paths.checkpoints)] == ["step0000002.pt"]


@pytest.mark.parametrize("prompt, slug", [
    ("A red vase!", "a_red_vase"), ("../../etc/passwd", "etc_passwd"), ("   ", "prompt"), ("é" * 3, "prompt"),
])
def test_prompt_slug_stays_inside_the_outputs_folder(prompt, slug):
    assert prompt_slug(prompt) == slug


def test_two_runs_in_the_same_second_get_distinct_folders(tmp_path):
    first, second = (create_run(tmp_path, "cfg", "a vase") for _ in range(2))
    assert first.root != second.root and first.root.parent == second.root.parent
