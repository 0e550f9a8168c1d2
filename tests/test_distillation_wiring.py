"""ScoreDistillation.forward's wiring, checked against closed forms: the teacher, the fake score and the
discriminator replaced by analytic stand-ins with non-linear, element-wise scores, every estimator's
gradient on the rendered images (which score goes where, the sign, the time weight, the divergence
weights, the conditional score of Uni-Instruct's surrogate) is written out by hand below and compared
with autograd through the real ``forward``. Negating any estimator's loss or changing its time weight
fails here."""
import pytest
import torch

from guidance.distillation import GuidanceSpec, ScoreDistillation, ViewBatch
from guidance.divergences import get_divergence
from guidance.fake_score import FakePrediction
from guidance.prompts import ViewPromptSpec
from guidance.sample_bank import SampleBankSpec
from guidance.schedules import Ramp
from guidance.teacher import DiffusionTeacher, TeacherSpec

STEP_PERCENT = 0.5  # t = 500 for every sample
ALPHA_SID = 0.7
LOGIT_SCALE = 2e-3  # d(x_t) = LOGIT_SCALE * sum(x_t): r = exp(d) stays well inside the ratio clamps
MAP_LOGIT_SCALE = 0.2  # a logit map's d at a location = MAP_LOGIT_SCALE * the sum of x_t's channels there


def teacher_eps(x):  # e_q, and its element-wise derivative
    return 0.8 * torch.tanh(x) + 0.1


def teacher_eps_slope(x):
    return 0.8 * (1 - torch.tanh(x) ** 2)


def fake_eps(x):  # e_p
    return 0.6 * torch.sin(x)


def fake_eps_slope(x):
    return 0.6 * torch.cos(x)


class LinearLogit(torch.nn.Module):
    """The discriminator's stand-in on the stand-in bottleneck (x_t itself): d = LOGIT_SCALE * sum(x_t)."""

    def forward(self, bottleneck):
        return LOGIT_SCALE * bottleneck.flatten(1).sum(1)


class LinearLogitMap(torch.nn.Module):
    """The stand-in of a spatial logit (``discriminator.logit_map``): one d per location of x_t, [B, 1, H, W]."""

    def forward(self, bottleneck):
        return MAP_LOGIT_SCALE * bottleneck.sum(1, keepdim=True)


@pytest.fixture(scope="module")
def pixel_teacher_folder(tmp_path_factory):
    from guidance.tiny_teacher import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("pixel-teacher")
    build_tiny_pipeline(pixel_space=True).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def pixel_teacher(pixel_teacher_folder):
    """The real teacher (encoding, noise schedule, sizes), fresh for each test: its guided prediction is replaced."""
    return DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=pixel_teacher_folder), torch.device("cpu"))


def analytic_guidance(teacher, estimator: str, divergence: str = "js", normalize: bool = False,
                      logit_map: bool = False) -> ScoreDistillation:
    spec = GuidanceSpec(estimator=estimator, divergence=divergence, alpha_sid=ALPHA_SID,
                        min_step_percent=Ramp(STEP_PERCENT), max_step_percent=Ramp(STEP_PERCENT),
                        normalize_per_sample=normalize, sample_bank=SampleBankSpec(samples_per_view=1, steps=1))
    guidance = ScoreDistillation(teacher, spec, "a vase", "", Ramp(3.0), ViewPromptSpec())
    teacher.predict_eps_cfg = lambda x_t, t, cond, uncond, scale: teacher_eps(x_t)  # the guided prediction
    if guidance.fake_score is not None:
        guidance.fake_score.predict = lambda x_t, t, text, camera: FakePrediction(fake_eps(x_t), x_t)
    if guidance.discriminator is not None:
        guidance.discriminator = LinearLogitMap() if logit_map else LinearLogit()
    return guidance


def expected_image_gradient(estimator: str, x0, eps, alpha, sigma, divergence: str = "js",
                            logit_map: bool = False) -> torch.Tensor:
    """d loss / d images, written out from guidance-math.md and the registry's time weights. x0 = 2 image - 1.
    With a logit map, r and the surrogate's products are taken location by location (sums over channels)."""
    batch = x0.shape[0]
    x_t = alpha * x0 + sigma * eps
    s_q, s_p = -teacher_eps(x_t) / sigma, -fake_eps(x_t) / sigma
    ds_q, ds_p = -teacher_eps_slope(x_t) / sigma, -fake_eps_slope(x_t) / sigma  # element-wise Jacobians
    s_c = -(x_t - alpha * x0) / sigma**2
    if logit_map:
        per_sample, logit_scale = (lambda v: v.sum(1, keepdim=True)), MAP_LOGIT_SCALE  # per location
    else:
        per_sample, logit_scale = (lambda v: v.flatten(1).sum(1).view(-1, 1, 1, 1)), LOGIT_SCALE
    f = get_divergence(divergence)
    r = torch.exp(logit_scale * per_sample(x_t))
    if estimator in ("sds", "vsd", "f-distill"):
        weight = sigma**3 / alpha
        y = (s_c if estimator == "sds" else s_p) - s_q
        h = f.h(r) if estimator == "f-distill" else torch.ones_like(r)
        grad_x0 = alpha * weight * h * y
    elif estimator == "uni-instruct":
        weight = sigma**4 / (2 * alpha**2)
        y, dy = s_p - s_q, ds_p - ds_q
        h, dh, d2h = f.h(r), f.dh(r), f.d2h(r)
        quadratic, cross = per_sample(y**2), per_sample(y * (s_p - s_c))
        # L = w [(h - r h') |y|^2 - 2 h y.(s_p - s_c)], r = exp(d(x_t)): dr/dx_t = r * LOGIT_SCALE
        d_by_r = (dh - (dh + r * d2h)) * quadratic - 2 * dh * cross
        grad_x_t = d_by_r * r * logit_scale + (h - r * dh) * 2 * y * dy - 2 * h * (dy * (s_p - s_c) + y * (ds_p + 1 / sigma**2))
        grad_x0 = weight * (alpha * grad_x_t + 2 * h * y * alpha / sigma**2)  # s_c's own x0 term
    else:  # sid: L = (f_q - f_p).[(f_q - x0) - a (f_q - f_p)], f = (x_t + sigma^2 s) / alpha
        difference = sigma * (fake_eps(x_t) - teacher_eps(x_t)) / alpha
        d_difference = sigma * (fake_eps_slope(x_t) - teacher_eps_slope(x_t)) / alpha
        f_q = (x_t - sigma * teacher_eps(x_t)) / alpha
        df_q = (1 - sigma * teacher_eps_slope(x_t)) / alpha
        grad_x_t = d_difference * (f_q - x0 - ALPHA_SID * difference) + difference * (df_q - ALPHA_SID * d_difference)
        grad_x0 = alpha * grad_x_t - difference
    return 2 * grad_x0 / batch  # through x0 = 2 image - 1; the loss is a batch mean


def run_forward(guidance: ScoreDistillation, seed: int = 0):
    """The real forward on two 32 x 32 views; returns its loss, the image gradient and the draw (x0, eps, t)."""
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    views = ViewBatch(images, torch.zeros(2), torch.tensor([0.0, 180.0]), torch.eye(4).repeat(2, 1, 1))
    generator = torch.Generator().manual_seed(seed)
    t, sample = guidance.noised_sample(views, 0, torch.Generator().set_state(generator.get_state()))  # forward's draw
    out = guidance(views, 0, generator)
    (loss,) = out.generator_losses.values()
    loss.backward()
    assert torch.equal(out.timesteps, t) and (t == 500).all()
    return images.grad, sample.x0.detach(), sample.eps, t


@pytest.mark.parametrize("estimator", ["sds", "vsd", "f-distill", "uni-instruct", "sid"])
def test_forward_gives_the_closed_form_gradient(pixel_teacher, estimator):
    guidance = analytic_guidance(pixel_teacher, estimator)
    gradient, x0, eps, t = run_forward(guidance)
    alpha_bar = pixel_teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = expected_image_gradient(estimator, x0, eps, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())
    assert expected.abs().max() > 1e-6  # the check has something to see
    torch.testing.assert_close(gradient, expected.permute(0, 2, 3, 1), rtol=1e-3, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("estimator", ["f-distill", "uni-instruct"])
def test_a_logit_map_weights_each_location_by_its_own_ratio(pixel_teacher, estimator):
    guidance = analytic_guidance(pixel_teacher, estimator, logit_map=True)
    gradient, x0, eps, t = run_forward(guidance)
    alpha_bar = pixel_teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = expected_image_gradient(estimator, x0, eps, alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), logit_map=True)
    one_ratio = expected_image_gradient(estimator, x0, eps, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())
    assert (expected - one_ratio).abs().max() > 0.1 * expected.abs().max()  # the map's weights differ from one r's
    torch.testing.assert_close(gradient, expected.permute(0, 2, 3, 1), rtol=1e-3, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("timesteps, in_guidance_range", [("guidance", True), ("uniform", False)])
def test_the_discriminator_learns_at_the_guidance_timesteps_when_asked(pixel_teacher, timesteps, in_guidance_range):
    guidance = analytic_guidance(pixel_teacher, "uni-instruct")  # its guidance draws t = 500 only
    guidance.spec.discriminator.timesteps = timesteps
    seen = []
    guidance.fake_score.predict = lambda x_t, t, text, camera: seen.append(t) or FakePrediction(fake_eps(x_t), x_t)
    views = ViewBatch(torch.rand(8, 32, 32, 3), torch.zeros(8), torch.zeros(8), torch.eye(4).repeat(8, 1, 1))
    guidance.auxiliary_losses(torch.rand(8, 3, 32, 32), views, 0, torch.Generator().manual_seed(0))
    on_renders, on_teacher_samples = seen
    assert torch.equal(on_renders, on_teacher_samples)
    assert (on_renders == 500).all() == in_guidance_range


def test_per_sample_normalisation_divides_by_the_teacher_residual(pixel_teacher):
    plain, _, _, _ = run_forward(analytic_guidance(pixel_teacher, "vsd"))
    normalised, x0, eps, t = run_forward(analytic_guidance(pixel_teacher, "vsd", normalize=True))
    alpha_bar = pixel_teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x_t = alpha * x0 + sigma * eps
    f_teacher = (x_t - sigma * teacher_eps(x_t)) / alpha
    scale = (x0 - f_teacher).abs().flatten(1).mean(1).view(-1, 1, 1, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(normalised, plain / scale, rtol=1e-3, atol=1e-4 * plain.abs().max().item())
