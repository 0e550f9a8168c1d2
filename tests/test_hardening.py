"""Probes of a hostile but fair user (issue 22): each gets a one-line error or the right result."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import launch
from guidance.distillation import GuidanceSpec, ScoreDistillation
from guidance.fake_score import FakeScore, FakeScoreSpec
from guidance.prompts import ViewPromptSpec
from guidance.sample_bank import SampleBankSpec, bank_key
from guidance.schedules import Ramp
from guidance.teacher import DiffusionTeacher, TeacherSpec
from tests.conftest import SHAPEWORLD_TEACHER
from tests.test_trainer import make_trainer
from threed.checkpoint import list_checkpoints
from threed.config import load_config, override, save_config
from threed.errors import NonFiniteLossError
from threed.run import Run


def test_user_text_is_never_interpolated(tmp_path):
    typed = "${oc.env:HOME} vase"
    config = load_config("configs/tiny.yaml", [override("prompt", typed), override("teacher.negative_prompt", typed)])
    assert config.prompt == typed and config.teacher.negative_prompt == typed
    save_config(config, tmp_path / "config.yaml")  # a resume reads it back: still the typed text
    assert load_config(tmp_path / "config.yaml").prompt == typed


def test_the_demo_takes_text_as_data():
    import app

    runner = app.DemoRunner("configs/shapeworld.yaml", [])
    config = runner.make_config("${oc.env:HOME} vase", "sds", "fkl", 3, 0, 16, "")
    assert config.prompt == "${oc.env:HOME} vase"


def test_a_plain_number_for_a_ramp_is_that_constant(tmp_path):
    ramped = load_config("configs/tiny.yaml", ["optim.lr_scale={start: 1.0, end: 0.1, start_step: 5, end_step: 10}"])
    save_config(ramped, tmp_path / "config.yaml")
    resumed = load_config(tmp_path / "config.yaml", ["optim.lr_scale=0.5"])
    assert resumed.optim.lr_scale == Ramp(0.5) and resumed.optim.lr_scale.at(100) == 0.5


def test_a_config_read_from_another_folder_finds_the_shipped_teacher(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "shapeworld.yaml")
    assert Path(config.teacher.pretrained) == Path(SHAPEWORLD_TEACHER) and Path(config.teacher.pretrained).is_absolute()
    assert load_config(Path(__file__).resolve().parent.parent / "configs" / "prolificdreamer.yaml",
                       ["prompt=x"]).teacher.pretrained == "stabilityai/stable-diffusion-2-1-base"  # a hub id stays


def test_an_invalid_yaml_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompt: [a red vase\ntrainer: {max_steps: 3\n")
    assert launch.main(["--config", str(bad), "--train"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not valid YAML (line" in err and len(err.splitlines()) == 1


def test_non_finite_parameters_stop_the_run_though_the_loss_is_finite(fast_overrides):
    trainer = make_trainer(load_config("configs/tiny.yaml", fast_overrides))
    step = trainer.training_step

    def step_that_ruins_the_table():
        result = step()
        with torch.no_grad():
            trainer.representation.field.encoding.table[0, 0] = float("inf")
        return result

    trainer.training_step = step_that_ruins_the_table
    with pytest.raises(NonFiniteLossError, match="parameters became NaN or infinite"):
        trainer.fit()
    assert list_checkpoints(trainer.paths.checkpoints) == []


@pytest.fixture(scope="module")
def finished_tiny_run(tiny_teacher, tmp_path_factory):
    from tests.conftest import overrides_for_fast_runs

    folder = tmp_path_factory.mktemp("hardening")
    assert launch.main(["--config", "configs/tiny.yaml", "--train", *overrides_for_fast_runs(tiny_teacher, folder),
                        "export.formats=[ply]"]) == 0
    return next((folder / "outputs" / "tiny").iterdir())


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(finished_tiny_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run)
    latest = list_checkpoints(run / "checkpoints")[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a copy cut short
    assert launch.main(["--export", str(run), "--format", "ply"]) == 0
    assert f"checkpoint {latest} is damaged" in caplog.text
    assert launch.main(["--resume", str(run)]) == 0  # trains the lost steps again from step 3
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]


def test_a_resume_the_checkpoint_cannot_take_names_the_key(finished_tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run)
    (run / "checkpoints" / "step0000006.pt").unlink()
    assert launch.main(["--resume", str(run), "geometry.hidden_dim=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "geometry.hidden_dim: 16 -> 64" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_start_that_fails_before_its_first_checkpoint_leaves_no_folder(fast_overrides):
    run, _ = Run.start(load_config("configs/tiny.yaml", fast_overrides))
    run.discard_if_unstarted()
    assert not run.paths.root.exists()


def test_a_prompt_the_teacher_cannot_know_is_refused_before_any_folder(tmp_path, capsys):
    assert launch.main(["--config", "configs/shapeworld.yaml", "--train", "--prompt", "a hamburger",
                        f"outputs={tmp_path / 'outputs'}"]) == 2
    assert "is not a prompt this teacher knows" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


@pytest.fixture(scope="module")
def shapeworld_teacher():
    return DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=SHAPEWORLD_TEACHER), torch.device("cpu"))


@pytest.mark.parametrize("paraphrase", ["an orange torus", "orange torus", "a torus, orange", "An  Orange   Torus"])
def test_the_embedded_teacher_reads_paraphrases_as_its_caption(shapeworld_teacher, paraphrase):
    def conditional(prompt):
        return ScoreDistillation(shapeworld_teacher, GuidanceSpec(estimator="sds"), prompt, "", Ramp(1.0),
                                 ViewPromptSpec(overhead_threshold_deg=50.0)).prompts.conditional

    assert torch.equal(conditional(paraphrase), conditional("a orange torus"))
    assert not torch.equal(conditional("a orange torus"), conditional("a orange cone"))


def test_the_sample_bank_key_covers_what_changes_the_samples(tiny_teacher):
    from diffusers import DDPMScheduler

    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=tiny_teacher), torch.device("cpu"))
    spec, prompts = SampleBankSpec(), ["a vase, front view"]
    key = bank_key(teacher, prompts, "", spec)
    FakeScore(teacher, FakeScoreSpec(share_unet=True))  # random adapters on the teacher's own U-Net
    assert bank_key(teacher, prompts, "", spec) == key
    for change in ({"prediction_type": "v_prediction"}, {"beta_schedule": "squaredcos_cap_v2"}):
        original = teacher.scheduler
        teacher.scheduler = DDPMScheduler.from_config(original.config, **change)
        assert bank_key(teacher, prompts, "", spec) != key, change
        teacher.scheduler = original
    teacher.tokenizer.add_tokens(["hamburger"])
    assert bank_key(teacher, prompts, "", spec) != key


def test_the_noise_schedule_stays_float32_in_half_precision(tiny_teacher):
    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=tiny_teacher), torch.device("cpu"))
    alpha, sigma = teacher.alpha_sigma(torch.tensor([1, 5]))
    teacher.cast_networks(torch.bfloat16)
    assert teacher.unet.dtype == torch.bfloat16 and teacher.alphas_cumprod.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(teacher.alpha_sigma(torch.tensor([1, 5])), (alpha, sigma)))


def test_a_bf16_teacher_trains_through_its_unets(fast_overrides, monkeypatch):
    """CUDA's default precision, run on the CPU: Uni-Instruct backpropagates through bf16 U-Nets."""
    load = DiffusionTeacher.from_pretrained
    monkeypatch.setattr(DiffusionTeacher, "from_pretrained",
                        classmethod(lambda cls, spec, device: load(spec, device).cast_networks(torch.bfloat16)))
    trainer = make_trainer(load_config("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=uni-instruct"]))
    assert trainer.guidance.teacher.dtype == torch.bfloat16
    assert not any(scaler.is_enabled() for scaler in trainer.loss_scalers.values())  # bf16 needs no scaling
    before = trainer.representation.field.encoding.table.detach().clone()
    losses = trainer.training_step().losses
    assert all(torch.isfinite(value) for value in losses.values())
    assert not torch.equal(before, trainer.representation.field.encoding.table)


def test_the_fake_score_gives_the_teacher_its_own_class_embedding_back(tiny_teacher):
    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=tiny_teacher), torch.device("cpu"))
    own = torch.nn.Linear(16, teacher.unet.time_embedding.linear_2.out_features)
    teacher.unet.class_embedding = own
    fake = FakeScore(teacher, FakeScoreSpec(share_unet=True))
    text = teacher.embed_text(["a vase"])
    fake.predict(torch.randn(1, 4, 16, 16), torch.tensor([500]), text, torch.zeros(1, 16))
    assert teacher.unet.class_embedding is own
