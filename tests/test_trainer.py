import numpy as np
import pytest
import torch
import trimesh

from guidance.distillation import GuidanceOutput
from guidance.teacher import DiffusionTeacher
from threed.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from threed.config import load_config
from threed.errors import NonFiniteLossError
from threed.representation import RenderedViews, Representation
from threed.run_folder import create_run_folder, prompt_slug


def make_trainer(config):
    from threed.trainer import Trainer

    teacher = DiffusionTeacher.from_pretrained(config.teacher, torch.device("cpu"))
    return Trainer(config, create_run_folder(config.outputs, config.name, config.prompt), teacher)


def test_nan_loss_stops_the_run_before_any_checkpoint(fast_overrides, tmp_path):
    config = load_config("configs/tiny.yaml", fast_overrides)
    trainer = make_trainer(config)

    def nan_guidance(views, step, generator):
        return GuidanceOutput({"sds": views.images.sum() * float("nan")}, {}, timesteps=torch.zeros(1),
                              latents=views.images.detach())

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
    first, second = (create_run_folder(tmp_path, "cfg", "a vase") for _ in range(2))
    assert first.root != second.root and first.root.parent == second.root.parent


def test_outputs_show_the_moving_average_of_the_field(fast_overrides):
    plain = make_trainer(load_config("configs/tiny.yaml", fast_overrides))
    assert plain.output_representation() is plain.representation  # no EMA asked for
    config = load_config("configs/tiny.yaml", [*fast_overrides, "trainer.ema_decay=0.5", "trainer.ema_start_step=1"])
    trainer = make_trainer(config)
    tables = []
    for _ in range(4):
        trainer.training_step()
        tables.append(trainer.representation.field.encoding.table.detach().clone())
    averaged = trainer.output_representation().field
    live = trainer.representation.field
    # A copy of the field up to step 2 (ema_start_step + 1), then halfway towards it at steps 3 and 4.
    torch.testing.assert_close(averaged.encoding.table, 0.5 * (0.5 * tables[1] + 0.5 * tables[2]) + 0.5 * tables[3])
    assert not torch.equal(averaged.encoding.table, live.encoding.table)
    assert torch.equal(averaged.occupancy.occupied, live.occupancy.occupied)  # the live grid's buffers
    assert live.encoding.table.requires_grad and averaged is not live


def field_and_guidance_snapshot(trainer):
    teacher_base = {n: p.detach().clone() for n, p in trainer.guidance.teacher.unet.named_parameters() if "fake_score" not in n}
    return ({n: p.detach().clone() for n, p in trainer.representation.named_parameters()},
            [p.detach().clone() for p in trainer.guidance.trainable_parameters()], teacher_base)


@pytest.mark.parametrize("share_unet", [False, True])
def test_vsd_steps_train_field_and_lora_but_not_the_teacher(fast_overrides, share_unet):
    config = load_config("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=vsd",
                                               f"guidance.fake_score.share_unet={share_unet}", "guidance.fake_score.lr=0.01"])
    trainer = make_trainer(config)
    x_t, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    text = trainer.guidance.prompts.conditional[:1]
    teacher_before = trainer.guidance.teacher.predict_eps(x_t, t, text)
    field_before, lora_before, teacher_weights = field_and_guidance_snapshot(trainer)
    for _ in range(2):  # LoRA's A matrices and the camera embedding's first layer move from the second step on
        losses = trainer.training_step().losses
        assert set(losses) == {"vsd", "fake_score"} and all(torch.isfinite(v) for v in losses.values())
    field_after, lora_after, teacher_weights_after = field_and_guidance_snapshot(trainer)
    assert any(not torch.equal(field_before[n], field_after[n]) for n in field_before)
    assert len(lora_before) > 0 and all(not torch.equal(a, b) for a, b in zip(lora_before, lora_after))
    assert all(torch.equal(teacher_weights[n], teacher_weights_after[n]) for n in teacher_weights)
    # The teacher's prediction ignores the trained adapters, also when the U-Net is shared.
    torch.testing.assert_close(trainer.guidance.teacher.predict_eps(x_t, t, text), teacher_before)
    fake = trainer.guidance.fake_score.predict_eps(x_t, t, text, torch.eye(4).flatten()[None])
    assert not torch.allclose(fake, teacher_before)


def test_fake_score_takes_as_many_updates_per_step_as_asked(fast_overrides):
    config = load_config("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=vsd",
                                               "guidance.fake_score.updates_per_step=3"])
    trainer = make_trainer(config)
    trainer.training_step()

    def steps_taken(optimizer):
        return {int(state["step"]) for state in optimizer.state.values()}

    assert steps_taken(trainer.guidance_optimizer) == {3} and steps_taken(trainer.optimizer) == {1}


def test_learning_rates_follow_their_scale_ramp(fast_overrides):
    config = load_config("configs/tiny.yaml", [*fast_overrides, "optim.lr_encoding=0.02", "optim.lr_networks=0.004",
                                               "optim.lr_scale={start: 1.0, end: 0.5, start_step: 1, end_step: 3}"])
    trainer = make_trainer(config)
    learning_rates = []
    for _ in range(4):
        trainer.training_step()
        learning_rates += [group["lr"] for group in trainer.optimizer.param_groups]
    # Steps 0 to 3 are taken at scales 1, 1, 0.75 and 0.5 of each group's own rate.
    expected = [lr * scale for scale in (1.0, 1.0, 0.75, 0.5) for lr in (0.02, 0.004)]
    assert learning_rates == pytest.approx(expected)


def test_fake_score_adapts_the_modules_it_is_asked_to(fast_overrides):
    config = load_config("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=vsd", "guidance.fake_score.lr=0.01",
                                               "guidance.fake_score.lora_targets=[to_q,conv1]"])
    trainer = make_trainer(config)
    lora = {n: p.detach().clone() for n, p in trainer.guidance.fake_score.unet.named_parameters() if ".fake_score." in n}
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == {"to_q", "conv1"}
    assert any("resnets" in n for n in lora)
    for _ in range(2):
        trainer.training_step()
    after = dict(trainer.guidance.fake_score.unet.named_parameters())
    assert all(not torch.equal(lora[n], after[n]) for n in lora if "resnets" in n)  # the convolutions' adapters train


class FlatColour(Representation):
    """The smallest representation: one learnable colour filling every view, exported as a coloured ball."""

    def __init__(self):
        super().__init__()
        self.logit = torch.nn.Parameter(torch.zeros(3))

    def render(self, cameras, generator, shading=None):
        images = torch.sigmoid(self.logit).expand(len(cameras), cameras.height, cameras.width, 3)
        return RenderedViews(images, torch.ones(images.shape[:3]))

    def regularizer_losses(self, views, step, generator):
        return {}

    def parameter_groups(self):
        return [{"params": [self.logit], "lr": 0.1}]

    def rgb8(self) -> np.ndarray:
        return (torch.sigmoid(self.logit) * 255).round().byte().detach().numpy()

    def render_images(self, cameras):
        return np.broadcast_to(self.rgb8(), (len(cameras), cameras.height, cameras.width, 3)).copy()

    def extract_mesh(self, spec):
        ball = trimesh.creation.icosphere(subdivisions=1, radius=0.3)
        ball.visual.vertex_colors = np.append(self.rgb8(), 255)
        return ball

    def albedo(self, points):
        return torch.sigmoid(self.logit).detach().expand(len(points), 3)


def test_the_trainer_and_the_run_know_only_the_representation_interface(fast_overrides, monkeypatch):
    from threed import run as run_module
    from threed import trainer as trainer_module
    from threed.run import Run

    for module in (trainer_module, run_module):
        monkeypatch.setattr(module, "build_representation", lambda config, device="cpu", start=True: FlatColour().to(device))
    config = load_config("configs/tiny.yaml", [*fast_overrides, "guidance.estimator=vsd", "trainer.max_steps=2",
                                               "export.formats=[ply]"])
    run, teacher = Run.start(config)
    trainer = run.train(teacher)
    assert not torch.equal(trainer.representation.logit.detach(), torch.zeros(3))  # the guidance moved it
    state = load_checkpoint(latest_checkpoint(run.paths.checkpoints), torch.device("cpu"))
    assert torch.equal(state["representation"]["logit"], trainer.representation.logit.detach())
    assert run.paths.video.is_file() and run.paths.mesh("ply").is_file()
    exported = run.trained_representation()
    assert isinstance(exported, FlatColour) and torch.equal(exported.logit, trainer.representation.logit)


def test_a_checkpoint_from_before_representations_resumes(fast_overrides, tmp_path):
    trainer = make_trainer(load_config("configs/tiny.yaml", fast_overrides))
    trainer.training_step()
    state = trainer.state_dict()
    old = {key: value for key, value in state.items() if key != "representation"}
    for part in ("field", "background"):  # the layout of checkpoints written before 2026-12-05
        old[part] = {k.removeprefix(part + "."): v for k, v in state["representation"].items() if k.startswith(part + ".")}
    torch.save(old, tmp_path / "old.pt")
    fresh = make_trainer(load_config("configs/tiny.yaml", fast_overrides))
    fresh.load_state_dict(load_checkpoint(tmp_path / "old.pt", torch.device("cpu")))
    for name, value in trainer.representation.state_dict().items():
        assert torch.equal(fresh.representation.state_dict()[name], value), name


def test_the_initial_representation_is_the_trainers_at_step_0(fast_overrides):
    from threed.run import Run

    config = load_config("configs/tiny.yaml", fast_overrides)
    trainer = make_trainer(config)
    initial = Run(config, trainer.paths).initial_representation()
    random_state = torch.random.get_rng_state()
    for name, value in trainer.representation.state_dict().items():
        assert torch.equal(initial.state_dict()[name], value), name
    Run(config, trainer.paths).initial_representation()
    assert torch.equal(torch.random.get_rng_state(), random_state)  # the global random state is left alone
