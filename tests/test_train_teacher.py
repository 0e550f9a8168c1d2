"""The ShapeWorld teacher's training script, at toy size: it trains, saves a pipeline the project
loads like Stable Diffusion, samples 64 x 64 images, and resumes."""
import pytest
import torch

from guidance.pixel_pipeline import PixelDiffusionPipeline
from guidance.teacher import DiffusionTeacher, TeacherSpec
from threed.shapeworld import train_teacher


def test_teacher_trains_and_saves_a_loadable_pipeline(tmp_path, monkeypatch):
    out = tmp_path / "teacher"
    args = [str(out), "--architecture", "test", "--per-prompt", "1", "--batch", "4", "--checkpoint-every", "2",
            "--device", "cpu"]
    train_teacher.main([*args, "--steps", "2"])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2

    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=str(out / "pipeline")), torch.device("cpu"))
    assert teacher.vae is None and teacher.image_size == 64
    assert teacher.scheduler.config.prediction_type == "v_prediction"
    assert teacher.canonical_prompt("an Orange torus") == "a orange torus"  # it ships its closed vocabulary
    ids = teacher.tokenizer("a orange cylinder, overhead view").input_ids
    assert len(ids) == 8  # bos, one token per word and the comma, eos

    pipeline = PixelDiffusionPipeline.from_pretrained(out / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a red torus, front view", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                     output_type="np").images
    assert image.shape == (1, 64, 64, 3)



def test_a_killed_teacher_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    torch.use_deterministic_algorithms(True)  # restored after the test (conftest)
    images, captions = train_teacher.load_data(None, per_prompt=1, seed=0)

    def trainer(out):
        return train_teacher.TeacherTrainer(out, train_teacher.ARCHITECTURES["test"], steps=4, batch=4, lr=1e-3,
                                            seed=0, bf16=False)

    uninterrupted = trainer(tmp_path / "a")
    uninterrupted.fit(images, captions, checkpoint_every=2)

    killed = trainer(tmp_path / "b")
    save = train_teacher.TeacherTrainer.save

    def save_then_die(self):
        save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_teacher.TeacherTrainer, "save", save_then_die)
    try:
        killed.fit(images, captions, checkpoint_every=2)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(train_teacher.TeacherTrainer, "save", save)
    resumed = trainer(tmp_path / "b")
    resumed.resume()
    assert resumed.step == 2
    resumed.fit(images, captions, checkpoint_every=2)
    for name, value in uninterrupted.unet.state_dict().items():
        assert torch.equal(resumed.unet.state_dict()[name], value), name


def test_shape_and_colour_words_start_as_distinct_text_features():
    """The U-Net can only learn to read a word whose features differ from the other words' from the start
    (with CLIP's 0.02 initialisation the shape words stayed within 10% of each other and were ignored)."""
    tokenizer, text_encoder, _, _ = train_teacher.build_models(train_teacher.ARCHITECTURES["small"], seed=0)
    ids = tokenizer(["a red cube", "a red cone", "a blue cube"], padding="max_length",
                    max_length=train_teacher.MAX_TOKENS, return_tensors="pt").input_ids
    with torch.no_grad():
        cube, cone, blue_cube = text_encoder(ids)[0]
    scale = cube.norm(dim=-1).mean()
    shape_position, colour_position = 3, 2
    assert (cube - cone)[shape_position].norm() > 0.5 * scale
    assert (cube - blue_cube)[colour_position].norm() > 0.5 * scale


def test_a_saved_teacher_trains_on_from_its_weights(tmp_path):
    """--init starts a new run (fresh optimiser and schedule) from a saved pipeline's EMA weights."""
    first = tmp_path / "first"
    toy = ["--architecture", "test", "--per-prompt", "1", "--batch", "4", "--checkpoint-every", "2"]
    train_teacher.main([str(first), *toy, "--steps", "2"])
    saved = PixelDiffusionPipeline.from_pretrained(first / "pipeline").unet.state_dict()

    trainer = train_teacher.TeacherTrainer(tmp_path / "second", train_teacher.ARCHITECTURES["test"], steps=2, batch=4,
                                           lr=1e-3, seed=1, bf16=False)
    trainer.initialise_from(first / "pipeline")
    assert trainer.step == 0
    for name, value in saved.items():
        assert torch.equal(trainer.unet.state_dict()[name], value), name
    images, captions = train_teacher.load_data(None, per_prompt=1, seed=0)
    trainer.fit(images, captions, checkpoint_every=2)
    assert not torch.equal(trainer.unet.state_dict()["conv_in.weight"], saved["conv_in.weight"])


def test_init_refuses_a_teacher_of_another_architecture(tmp_path):
    first = tmp_path / "first"
    train_teacher.main([str(first), "--architecture", "test", "--per-prompt", "1", "--batch", "4", "--steps", "1"])
    trainer = train_teacher.TeacherTrainer(tmp_path / "second", train_teacher.ARCHITECTURES["small"], steps=1, batch=4,
                                           lr=1e-3, seed=0, bf16=False)
    with pytest.raises(ValueError, match="is not the --architecture given"):
        trainer.initialise_from(first / "pipeline")


def test_init_and_resume_are_exclusive(tmp_path):
    with pytest.raises(SystemExit):
        train_teacher.main([str(tmp_path), "--init", str(tmp_path), "--resume"])
