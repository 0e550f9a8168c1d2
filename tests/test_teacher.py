import pytest
import torch

from guidance.distillation import GuidanceSpec, ScoreDistillation, ViewBatch
from guidance.estimators import EstimatorOptions, NoisedSample, Scores, sds
from guidance.prompts import VIEWS, PromptEmbeddings, ViewPromptSpec, view_index
from guidance.schedules import Ramp
from guidance.teacher import DiffusionTeacher, TeacherNotFoundError, TeacherSpec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher(tiny_teacher) -> DiffusionTeacher:
    return DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=tiny_teacher), CPU)


def test_teacher_loads_frozen_with_its_vae(teacher):
    assert teacher.vae is not None and teacher.image_size == 32
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.embed_text(["a red vase", ""]).shape == (2, 16, 32)


def test_encode_resizes_and_is_differentiable(teacher):
    images = torch.rand(2, 3, 20, 20, requires_grad=True)
    latents = teacher.encode(images)
    assert latents.shape == (2, 4, 16, 16)
    latents.sum().backward()
    assert images.grad.abs().sum() > 0


def test_v_prediction_is_converted_to_epsilon(tiny_v_teacher):
    """diffusers' own scheduler makes x_t and the velocity v of a known x_0 and eps: the conversion gets eps back."""
    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=tiny_v_teacher), CPU)
    x0, eps, t = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    x_t = teacher.scheduler.add_noise(x0, eps, t)
    velocity = teacher.scheduler.get_velocity(x0, eps, t)
    torch.testing.assert_close(teacher.output_to_eps(velocity, x_t, t), eps, rtol=1e-4, atol=1e-5)
    alpha, sigma = teacher.alpha_sigma(t)
    torch.testing.assert_close(alpha * x0 + sigma * eps, x_t)


def test_guidance_scale_one_is_the_conditional_prediction(teacher):
    x_t, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    cond, uncond = teacher.embed_text(["a red vase", ""]).chunk(2)
    torch.testing.assert_close(teacher.predict_eps_cfg(x_t, t, cond, uncond, 1.0), teacher.predict_eps(x_t, t, cond))


def test_sds_gradient_is_the_weighted_noise_residual():
    x0 = torch.randn(3, 2, 4, 4, requires_grad=True)
    eps = torch.randn_like(x0)
    alpha, sigma = torch.full((3, 1, 1, 1), 0.8), torch.full((3, 1, 1, 1), 0.6)

    def teacher_eps(x_t):
        return 0.5 * x_t

    weight = torch.tensor([1.0, 2.0, 3.0])
    sds(NoisedSample(x0, eps, alpha, sigma), Scores(lambda x_t: -teacher_eps(x_t) / sigma), weight, EstimatorOptions()).backward()
    # Gradient on x_t: w (eps_teacher - eps) / sigma; on x_0, times alpha; batch mean.
    expected = weight.view(3, 1, 1, 1) * alpha * (teacher_eps(alpha * x0 + sigma * eps) - eps) / sigma / 3
    torch.testing.assert_close(x0.grad, expected.detach())


def test_score_distillation_samples_timesteps_in_range(teacher):
    guidance = ScoreDistillation(teacher, GuidanceSpec(min_step_percent=Ramp(0.2), max_step_percent=Ramp(0.3)), "a vase", "",
                                 Ramp(7.5), ViewPromptSpec())
    images = torch.rand(4, 24, 24, 3, requires_grad=True)
    views = ViewBatch(images, torch.zeros(4), torch.tensor([0.0, 90.0, 180.0, 270.0]), torch.eye(4).repeat(4, 1, 1))
    out = guidance(views, 0, torch.Generator().manual_seed(0))
    assert ((out.timesteps >= 200) & (out.timesteps < 300)).all()
    out.generator_losses["sds"].backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_score_distillation_guides_with_the_scale_of_its_step(teacher, monkeypatch):
    guidance = ScoreDistillation(teacher, GuidanceSpec(), "a vase", "", Ramp(2.0, 1.0, start_step=10, end_step=20),
                                 ViewPromptSpec())
    scales, guided = [], teacher.predict_eps_cfg
    monkeypatch.setattr(teacher, "predict_eps_cfg", lambda *args: scales.append(args[-1]) or guided(*args))
    views = ViewBatch(torch.rand(1, 24, 24, 3), torch.zeros(1), torch.zeros(1), torch.eye(4)[None])
    for step in (0, 15, 30):
        guidance(views, step, torch.Generator().manual_seed(0))
    assert scales == [2.0, 1.5, 1.0]


def test_view_dependent_prompts_pick_the_embedding_of_each_view(teacher):
    prompts = PromptEmbeddings(teacher.embed_text, "a vase", "ugly", ViewPromptSpec())
    expected = teacher.embed_text(["a vase, front view", "a vase, back view", "a vase, overhead view"])
    cond, uncond = prompts(torch.tensor([0.0, 10.0, 75.0]), torch.tensor([10.0, -170.0, 0.0]))
    torch.testing.assert_close(cond, expected)
    torch.testing.assert_close(uncond, teacher.embed_text(["ugly"]).expand(3, -1, -1))


@pytest.mark.parametrize("elevation, azimuth, view", [
    (0.0, 0.0, "front"), (0.0, 44.9, "front"), (0.0, -44.9, "front"), (0.0, 45.0, "side"), (0.0, 90.0, "side"),
    (0.0, 135.0, "side"), (0.0, 135.1, "back"), (0.0, 180.0, "back"), (0.0, -150.0, "back"), (0.0, 330.0, "front"),
    (60.0, 90.0, "side"), (60.1, 90.0, "overhead"),
])
def test_view_labels_at_the_thresholds(elevation, azimuth, view):
    index = view_index(torch.tensor([elevation]), torch.tensor([azimuth]), ViewPromptSpec())
    assert VIEWS[index.item()] == view


def test_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherNotFoundError, match="not a complete diffusers pipeline"):
        DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=str(tmp_path)), CPU)
    with pytest.raises(TeacherNotFoundError, match="huggingface-cli download nobody/nothing"):
        DiffusionTeacher.from_pretrained(TeacherSpec(pretrained="nobody/nothing"), CPU)
    (tmp_path / "weights.bin").write_bytes(b"")
    for path, reason in ((tmp_path / "weights.bin", "it is a file"), (tmp_path / "absent" / "teacher", "no such folder")):
        with pytest.raises(TeacherNotFoundError) as caught:  # a path is never offered for download
            DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=str(path)), CPU)
        assert reason in str(caught.value) and "huggingface-cli" not in str(caught.value)
        assert len(str(caught.value).splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_pixel_teacher(tmp_path_factory) -> str:
    from guidance.tiny_teacher import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-pixel-teacher")
    build_tiny_pipeline(pixel_space=True).save_pretrained(folder)
    return str(folder)


def test_pixel_space_teacher_loads_without_vae_and_resizes_renders(tiny_pixel_teacher):
    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=tiny_pixel_teacher), CPU)
    assert teacher.vae is None and teacher.image_size == 32
    images = torch.rand(2, 3, 20, 20)
    x0 = teacher.encode(images)
    assert x0.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x0, 2 * torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear") - 1)


def test_pixel_pipeline_samples_with_its_own_sampler(tiny_pixel_teacher):
    from guidance.pixel_pipeline import PixelDiffusionPipeline

    pipeline = PixelDiffusionPipeline.from_pretrained(tiny_pixel_teacher)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(["a red vase", "a blue cube"], num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (2, 32, 32, 3) and images.min() >= 0 and images.max() <= 1


def test_the_sampler_is_a_choice_and_names_the_sample_bank(teacher):
    from guidance.sample_bank import SampleBankSpec, bank_key

    cond = teacher.embed_text(["a red vase", "a blue cube"])
    uncond = teacher.embed_text([""]).expand_as(cond)
    ddim, dpm = (teacher.sample(cond, uncond, 3, 3.0, torch.Generator().manual_seed(0), sampler=sampler)
                 for sampler in ("ddim", "dpm-solver++"))
    assert ddim.shape == dpm.shape and torch.isfinite(dpm).all()
    assert (ddim - dpm).abs().max() > 1e-3  # the same noise, another integrator
    keys = {bank_key(teacher, ["a vase"], "", SampleBankSpec(sampler=sampler)) for sampler in ("ddim", "dpm-solver++")}
    assert len(keys) == 2
