"""The guidance module inside training: every estimator steps the field and its own networks on the
tiny pipeline; the discriminator learns log-ratios; the sample bank is cached; schedules apply."""
import pytest
import torch

from threed import trainer as trainer_module
from guidance.discriminator import DiscriminatorHead, DiscriminatorSpec, discriminator_loss
from guidance.distillation import GuidanceSpec
from guidance.sample_bank import SampleBankSpec
from guidance.schedules import Ramp, SwitchSpec
from guidance.teacher import DiffusionTeacher, TeacherSpec
from tests.test_trainer import field_and_guidance_snapshot, make_trainer
from threed.config import load_config
from threed.trainer import cached_sample_bank

ESTIMATOR_CASES = [
    ("uni-instruct", "fkl", {"uni-instruct", "fake_score", "discriminator"}),
    ("uni-instruct", "js", {"uni-instruct", "fake_score", "discriminator"}),
    ("f-distill", "chi2", {"f-distill", "fake_score", "discriminator"}),
    ("vsd", "rkl", {"vsd", "fake_score"}),
    ("sid", "rkl", {"sid", "fake_score"}),
    ("sds", "rkl", {"sds"}),
]


@pytest.mark.parametrize("estimator, divergence, expected_losses", ESTIMATOR_CASES, ids=[f"{e}-{d}" for e, d, _ in ESTIMATOR_CASES])
def test_each_estimator_trains_field_and_guidance_but_not_the_teacher(fast_overrides, estimator, divergence, expected_losses):
    config = load_config("configs/tiny.yaml", [*fast_overrides, f"guidance.estimator={estimator}",
                                               f"guidance.divergence={divergence}", "guidance.fake_score.lr=0.01",
                                               "guidance.discriminator.lr=0.01", "guidance.normalize_per_sample=true"])
    trainer = make_trainer(config)
    field_before, guidance_before, teacher_before = field_and_guidance_snapshot(trainer)
    for _ in range(2):  # LoRA's A matrices move from the second step on (its B matrices start at zero)
        result = trainer.training_step()
        assert set(result.losses) == expected_losses
        assert all(torch.isfinite(value) for value in result.losses.values()), result.losses
        if "discriminator" in expected_losses:  # the estimated q/p on the renders, within its clamps
            assert set(result.diagnostics) == {"density_ratio"}
            assert 0.1 <= result.diagnostics["density_ratio"].item() <= 20.0
        else:
            assert result.diagnostics == {}
    field_after, guidance_after, teacher_after = field_and_guidance_snapshot(trainer)
    assert all(not torch.equal(field_before[n], field_after[n]) for n in ("field.encoding.table", "field.density_net.2.weight"))
    assert len(guidance_before) == (0 if estimator == "sds" else len(guidance_after))
    assert all(not torch.equal(a, b) for a, b in zip(guidance_before, guidance_after))
    assert all(torch.equal(teacher_before[n], teacher_after[n]) for n in teacher_before)


def test_adversarial_term_and_gradient_checkpointing(fast_overrides):
    def first_step_gradients(checkpointing: bool):
        config = load_config("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=uni-instruct",
                                                   "guidance.adversarial_weight.start=0.5",
                                                   f"guidance.gradient_checkpointing={checkpointing}"])
        trainer = make_trainer(config)
        losses = trainer.training_step().losses
        return losses, trainer.representation.field.encoding.table.detach().clone()

    losses, table = first_step_gradients(False)
    assert {"uni-instruct", "adversarial"} <= set(losses)
    losses_checkpointed, table_checkpointed = first_step_gradients(True)
    torch.testing.assert_close(losses_checkpointed["uni-instruct"], losses["uni-instruct"])
    torch.testing.assert_close(table_checkpointed, table)


def test_gradient_checkpointing_is_on_in_both_u_nets(fast_overrides):
    config = load_config("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=vsd", "guidance.gradient_checkpointing=true"])
    guidance = make_trainer(config).guidance
    assert guidance.teacher.unet.is_gradient_checkpointing and guidance.fake_score.unet.is_gradient_checkpointing


def test_the_adversarial_term_pushes_renders_towards_what_the_discriminator_calls_real():
    """d is the discriminator's logit of "teacher sample": the generator's term falls as d rises, and its
    gradient on d is negative; the discriminator's own loss falls as real logits rise and fake ones fall."""
    from guidance.discriminator import adversarial_loss

    logit = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    adversarial_loss(logit).backward()
    assert (logit.grad < 0).all()
    assert adversarial_loss(torch.tensor([3.0])) < adversarial_loss(torch.tensor([-3.0]))
    assert discriminator_loss(torch.tensor([3.0]), torch.tensor([-3.0])) < discriminator_loss(torch.tensor([-3.0]), torch.tensor([3.0]))


def test_the_camera_changes_the_fake_score_once_its_embedding_has_learned(tiny_teacher):
    from guidance.fake_score import FakeScore, FakeScoreSpec

    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=tiny_teacher), torch.device("cpu"))
    fake = FakeScore(teacher, FakeScoreSpec())
    x_t, t, text = torch.randn(2, 4, 16, 16), torch.tensor([500, 500]), teacher.embed_text(["a vase"] * 2)
    front, back = torch.eye(4).flatten()[None].repeat(2, 1), -torch.eye(4).flatten()[None].repeat(2, 1)
    # Zero-initialised: at first the camera changes nothing, so training starts from the teacher.
    torch.testing.assert_close(fake.predict_eps(x_t, t, text, front), fake.predict_eps(x_t, t, text, back))
    with torch.no_grad():
        for parameter in fake.camera_embedding.parameters():
            parameter.normal_(0.0, 0.1)  # what training does to it
    assert not torch.allclose(fake.predict_eps(x_t, t, text, front), fake.predict_eps(x_t, t, text, back), atol=1e-4)
    assert teacher.unet.class_embedding is None  # the teacher never sees it


def test_discriminator_head_learns_the_log_ratio_of_two_gaussians():
    torch.manual_seed(0)
    dim, mean_p, var_q, var_p = 4, 0.6, 1.5, 0.7

    def draw(n, mean, var):
        return mean + var**0.5 * torch.randn(n, dim, 1, 1)

    def true_log_ratio(x):  # log q(x) - log p(x), q = N(0, var_q I), p = N(mean_p, var_p I)
        x = x.flatten(1)
        log_q = -0.5 * (x**2).sum(1) / var_q - 0.5 * dim * torch.log(torch.tensor(var_q))
        log_p = -0.5 * ((x - mean_p) ** 2).sum(1) / var_p - 0.5 * dim * torch.log(torch.tensor(var_p))
        return log_q - log_p

    head = DiscriminatorHead(dim, DiscriminatorSpec(hidden_channels=64))
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(600):
        loss = discriminator_loss(head(draw(256, 0.0, var_q)), head(draw(256, mean_p, var_p)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = torch.cat([draw(1000, 0.0, var_q), draw(1000, mean_p, var_p)])
    with torch.no_grad():
        correlation = torch.corrcoef(torch.stack([head(held_out), true_log_ratio(held_out)]))[0, 1]
    assert correlation > 0.95


def test_teacher_sample_bank_is_reused_from_disk(tiny_teacher, tmp_path, monkeypatch):
    teacher = DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=tiny_teacher), torch.device("cpu"))
    spec = SampleBankSpec(samples_per_view=3, steps=2, cache_dir=str(tmp_path))
    prompts = ["a vase, front view", "a vase, back view"]
    first = cached_sample_bank(teacher, prompts, "", spec)
    assert first.shape == (2, 3, 4, 16, 16) and torch.isfinite(first).all()
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def no_sampling(*args, **kwargs):
        raise AssertionError("the cached bank should have been loaded")

    monkeypatch.setattr(trainer_module, "draw_sample_bank", no_sampling)
    torch.testing.assert_close(cached_sample_bank(teacher, prompts, "", spec), first)
    with pytest.raises(AssertionError, match="cached bank"):  # other settings, another key
        cached_sample_bank(teacher, prompts, "", SampleBankSpec(samples_per_view=3, steps=3, cache_dir=str(tmp_path)))
    with torch.no_grad():  # retrained weights saved under the same name: the cached bank is stale
        teacher.unet.conv_out.bias.add_(0.01)
    with pytest.raises(AssertionError, match="cached bank"):
        cached_sample_bank(teacher, prompts, "", spec)


def test_ramps_and_the_divergence_switch():
    ramp = Ramp(start=0.98, end=0.5, start_step=100, end_step=300)
    assert [ramp.at(s) for s in (0, 100, 200, 300, 1000)] == pytest.approx([0.98, 0.98, 0.74, 0.5, 0.5])
    assert Ramp(0.3).at(10_000) == 0.3
    spec = GuidanceSpec(estimator="uni-instruct", divergence="rkl", switch=SwitchSpec(step=500, divergence="fkl"))
    assert (spec.estimator_at(499), spec.divergence_at(499)) == ("uni-instruct", "rkl")
    assert (spec.estimator_at(500), spec.divergence_at(500)) == ("uni-instruct", "fkl")
    with pytest.raises(ValueError, match="switch.estimator"):
        GuidanceSpec(switch=SwitchSpec(step=1, estimator="magic"))


def test_uni_instruct_trains_on_a_pixel_space_teacher(fast_overrides, tmp_path):
    from guidance.tiny_teacher import build_tiny_pipeline

    build_tiny_pipeline(pixel_space=True).save_pretrained(tmp_path / "pixel")
    overrides = [o for o in fast_overrides if not o.startswith("teacher.pretrained")]
    config = load_config("configs/tiny.yaml", [*overrides, f"teacher.pretrained={tmp_path / 'pixel'}",
                                               "guidance.estimator=uni-instruct", "guidance.divergence=jkl"])
    trainer = make_trainer(config)
    assert trainer.guidance.sample_bank.shape == (4, 2, 3, 32, 32)  # views x samples x RGB pixels
    losses = trainer.training_step().losses
    assert all(torch.isfinite(value) for value in losses.values())


@pytest.mark.parametrize("estimator, teacher_calls, fake_calls", [
    ("vsd", 1, 2),  # estimator and SiD normaliser share the teacher call; fake: estimator, denoising loss
    ("uni-instruct", 2, 3),  # the estimator's teacher call carries the graph; fake: eps + logit once, renders, bank
    ("f-distill", 1, 3),  # the logit (for the running means, then the estimator) at the renders, renders, bank
])
def test_each_network_runs_once_per_input_in_a_step(fast_overrides, estimator, teacher_calls, fake_calls):
    config = load_config("configs/tiny.yaml", [*fast_overrides, f"guidance.estimator={estimator}",
                                               "guidance.normalize_per_sample=true", "guidance.ratio.running_mean=true"])
    trainer = make_trainer(config)
    calls = {"teacher": 0, "fake": 0}
    trainer.guidance.teacher.unet.register_forward_hook(lambda *_: calls.__setitem__("teacher", calls["teacher"] + 1))
    trainer.guidance.fake_score.unet.register_forward_hook(lambda *_: calls.__setitem__("fake", calls["fake"] + 1))
    trainer.training_step()
    assert calls == {"teacher": teacher_calls, "fake": fake_calls}


def test_running_means_of_h_scale_the_weight_and_resume_with_the_run(fast_overrides):
    config = load_config("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=uni-instruct", "camera.batch_size=1",
                                               "guidance.ratio.running_mean=true", "guidance.ratio.running_decay=0.5"])
    trainer = make_trainer(config)
    running = trainer.guidance.running_means
    for _ in range(3):
        assert all(torch.isfinite(value) for value in trainer.training_step().losses.values())
    assert running.seen.any() and not torch.equal(running.means[running.seen], torch.ones(int(running.seen.sum())))
    state = trainer.guidance.trainable_state_dict()
    restored = make_trainer(config)
    restored.guidance.load_trainable_state_dict(state)
    assert torch.equal(restored.guidance.running_means.means, running.means)


def test_the_published_recipes_options_train_together(fast_overrides):
    """A logit map, a soft clamp, the discriminator at the guidance's t and a DPM-Solver++ bank, in one run:
    the discriminator's logit is a map, the ratio reads as fractions of its locations, and every part learns."""
    config = load_config("configs/tiny.yaml", [
        *fast_overrides, "guidance.estimator=uni-instruct", "guidance.divergence=fkl",
        "guidance.discriminator.logit_map=true", "guidance.discriminator.timesteps=guidance",
        "guidance.ratio.soft_clamp=true", "guidance.sample_bank.sampler=dpm-solver++"])
    trainer = make_trainer(config)
    field_before, guidance_before, _ = field_and_guidance_snapshot(trainer)
    bottleneck = torch.zeros(2, trainer.guidance.teacher.unet.config.block_out_channels[-1], 2, 2)
    assert trainer.guidance.discriminator(bottleneck).shape == (2, 1, 2, 2)
    for _ in range(2):
        result = trainer.training_step()
        assert all(torch.isfinite(value) for value in result.losses.values()), result.losses
    reading = trainer.ratio_monitor.summary()
    assert reading["views"] >= 2 and 0.0 <= reading["off_clamps"] <= 1.0  # (the metrics record may have read some)
    field_after, guidance_after, _ = field_and_guidance_snapshot(trainer)
    assert not torch.equal(field_before["field.encoding.table"], field_after["field.encoding.table"])
    assert all(not torch.equal(a, b) for a, b in zip(guidance_before, guidance_after))
