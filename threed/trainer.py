"""The distillation loop: sample cameras, render, score with the teacher, step the field.

Randomness on the training path (cameras, sample jitter, timesteps, noise) comes from one
``torch.Generator`` whose state is checkpointed, so a resumed run continues exactly where an
uninterrupted one would be.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from guidance.distillation import GuidanceOutput, ScoreDistillation, ViewBatch
from guidance.teacher import DiffusionTeacher
from nerf.background import Background
from nerf.field import RadianceField
from nerf.renderer import render_rays
from nerf.shading import Lighting, sample_shading_mode
from threed.cameras import sample_cameras
from threed.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_atomic
from threed.config import Config, OptimSpec, TrainerSpec
from threed.errors import NonFiniteLossError
from threed.regularizers import regularizer_losses
from threed.runs import RunPaths
from threed.video import save_validation_strip

log = logging.getLogger(__name__)


def make_optimizer(field: RadianceField, background: Background, spec: OptimSpec) -> torch.optim.Adam:
    """Adam with the hash grid at ``lr_encoding`` and the field's and background's networks at ``lr_networks``."""
    networks = [p for name, p in field.named_parameters() if not name.startswith("encoding.")] + list(background.parameters())
    groups = [{"params": field.encoding.parameters(), "lr": spec.lr_encoding}, {"params": networks, "lr": spec.lr_networks}]
    return torch.optim.Adam(groups, betas=tuple(spec.betas), eps=spec.eps)


def scale_learning_rates(optimizer: torch.optim.Adam, spec: OptimSpec, step: int) -> None:
    """Sets ``make_optimizer``'s groups to their learning rates times ``spec.lr_scale`` at ``step``
    (a function of the step alone, so a resumed run needs no scheduler state)."""
    scale = spec.lr_scale.at(step)
    for group, lr in zip(optimizer.param_groups, (spec.lr_encoding, spec.lr_networks)):
        group["lr"] = lr * scale


def make_ema(field: RadianceField, spec: TrainerSpec) -> EMAModel | None:
    """The moving average of the field's parameters that ``trainer.ema_decay`` asks for (None at 0):
    a copy of them up to step ``ema_start_step + 1``, then decayed by ``ema_decay`` at every step."""
    if spec.ema_decay == 0.0:
        return None
    return EMAModel(field.parameters(), decay=spec.ema_decay, min_decay=spec.ema_decay, update_after_step=spec.ema_start_step)


def with_averaged_parameters(field: RadianceField, ema: EMAModel | None) -> RadianceField:
    """A new field with ``field``'s buffers (its occupancy grid) and the EMA's parameters; ``field`` itself without an EMA."""
    if ema is None:
        return field
    averaged = RadianceField(field.spec).to(field.encoding.table.device)
    averaged.load_state_dict(field.state_dict())
    ema.copy_to(averaged.parameters())
    return averaged


@dataclasses.dataclass
class StepResult:
    """What one training step reports, without autograd graphs: the named losses and the guidance's
    diagnostics (computed from detached values by the guidance)."""

    losses: dict[str, torch.Tensor]
    diagnostics: dict[str, torch.Tensor]


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl``."""

    def __init__(self, path: Path):
        self.path = path

    def drop_after(self, step: int) -> None:
        """Forgets entries past ``step``: a resumed run logs those steps again."""
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class Trainer:
    """One run's field, optimiser and guidance. The teacher is loaded by the caller (and may be reused)."""

    def __init__(self, config: Config, paths: RunPaths, teacher: DiffusionTeacher):
        device = teacher.alphas_cumprod.device
        self.config, self.paths, self.device = config, paths, device
        torch.manual_seed(config.seed)
        torch.use_deterministic_algorithms(config.trainer.deterministic, warn_only=True)
        self.field = RadianceField(config.geometry).to(device)
        self.background = Background(config.background).to(device)
        self.render_spec = dataclasses.replace(config.render,
                                               normals=config.render.normals or config.regularizers.needs_normals())
        self.guidance = ScoreDistillation(teacher, config.guidance, config.prompt, config.teacher.negative_prompt,
                                          config.teacher.guidance_scale, config.views).to(device)
        self.optimizer = make_optimizer(self.field, self.background, config.optim)
        self.ema = make_ema(self.field, config.trainer)
        groups = self.guidance.parameter_groups()
        self.guidance_optimizer = torch.optim.AdamW(groups, weight_decay=0.0) if groups else None
        self.generator = torch.Generator(device).manual_seed(config.seed)
        self.metrics = MetricsLog(paths.metrics)
        self.step = 0
        # Wall seconds of training in the run's earlier, interrupted sessions (up to the resumed
        # checkpoint); this session's are counted from the start of ``fit``.
        self.earlier_sessions_s = 0.0
        self.session_started = time.perf_counter()

    def state_dict(self) -> dict:
        return {"step": self.step, "field": self.field.state_dict(), "background": self.background.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "guidance": self.guidance.trainable_state_dict(),
                "guidance_optimizer": self.guidance_optimizer.state_dict() if self.guidance_optimizer else None,
                "generator": self.generator.get_state(), "training_s": self.training_seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and state.get("ema"):  # a checkpoint without one (older, or trained without) starts it afresh
            self.ema.load_state_dict(state["ema"])
        self.guidance.load_trainable_state_dict(state["guidance"])
        if self.guidance_optimizer:
            self.guidance_optimizer.load_state_dict(state["guidance_optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.earlier_sessions_s = state.get("training_s", 0.0)  # absent in checkpoints before 2026-11-23

    def training_seconds(self) -> float:
        """Wall seconds spent training up to ``self.step``, over every session of the run."""
        return self.earlier_sessions_s + time.perf_counter() - self.session_started

    def resume(self) -> None:
        """Continues from the run's latest checkpoint, if it has one."""
        found = latest_checkpoint(self.paths.checkpoints)
        if found is None:
            log.info("no checkpoint in %s: starting from step 0", self.paths.checkpoints)
            return
        self.load_state_dict(load_checkpoint(found, self.device))
        self.metrics.drop_after(self.step)
        log.info("resumed from %s (step %d)", found, self.step)

    def training_step(self) -> StepResult:
        """One step of the field and of the guidance's own parameters."""
        occupancy = self.field.occupancy
        if occupancy is not None and self.step % occupancy.spec.update_every == 0:
            occupancy.update(self.field.density, self.generator)
        cameras = sample_cameras(self.config.camera, self.generator, self.step)
        rays = cameras.rays()
        mode = sample_shading_mode(self.render_spec.shading, self.generator)
        pixels = cameras.height * cameras.width
        lighting = None if mode == "albedo" else Lighting(cameras.light_positions.repeat_interleave(pixels, dim=0), mode)
        background = self.background(rays.directions, len(cameras), self.generator)
        render = render_rays(self.field, rays, self.render_spec, self.generator, occupancy, lighting, background)
        images = render.as_images(len(cameras), cameras.height, cameras.width).rgb
        views = ViewBatch(images, cameras.elevation_deg, cameras.azimuth_deg, cameras.c2w)
        out = self.guidance(views, self.step, self.generator)
        generator_losses = {**out.generator_losses, **regularizer_losses(render, self.config.regularizers, self.step)}
        scale_learning_rates(self.optimizer, self.config.optim, self.step)
        self._step(self.optimizer, generator_losses, [p for group in self.optimizer.param_groups for p in group["params"]])
        if self.ema:
            self.ema.step(self.field.parameters())
        self._update_guidance(out, views)
        self.step += 1
        losses = {name: loss.detach() for name, loss in {**generator_losses, **out.auxiliary_losses}.items()}
        return StepResult(losses, out.diagnostics)

    def output_field(self) -> RadianceField:
        """The field that validation, the video and the meshes show: the EMA's (``trainer.ema_decay``) or the live one."""
        return with_averaged_parameters(self.field, self.ema)

    def _update_guidance(self, out: GuidanceOutput, views: ViewBatch) -> None:
        """Steps the fake score and discriminator on this step's losses, then on fresh ones as often as
        ``guidance.fake_score.updates_per_step`` asks."""
        parameters = self.guidance.trainable_parameters()
        self._step(self.guidance_optimizer, out.auxiliary_losses, parameters)
        if out.auxiliary_losses:
            for _ in range(self.config.guidance.fake_score.updates_per_step - 1):
                losses, _ = self.guidance.auxiliary_losses(out.latents, views, self.generator)
                self._step(self.guidance_optimizer, losses, parameters)

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer | None, losses: dict[str, torch.Tensor], parameters: list[torch.Tensor]) -> None:
        """Backpropagates ``losses`` into ``parameters`` only, then steps their optimiser (none without losses)."""
        if not losses:
            return
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward(inputs=parameters)
        optimizer.step()

    def fit(self, stop_requested: Callable[[], bool] = lambda: False,
            on_log: Callable[[dict], None] = lambda record: None) -> None:
        """Trains up to ``trainer.max_steps``; ``stop_requested`` is polled at each step to end early,
        and ``on_log`` receives each metrics record (every ``trainer.log_every`` steps).

        Losses are read back from the device only at logging steps; a non-finite loss is then
        reported, and no checkpoint is written from parameters it may have touched.
        """
        spec = self.config.trainer
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.session_started, first_step = time.perf_counter(), self.step
        with tqdm(total=spec.max_steps, initial=self.step, desc="train", dynamic_ncols=True) as progress:
            while self.step < spec.max_steps and not stop_requested():
                result = self.training_step()
                nonfinite |= ~torch.isfinite(sum(result.losses.values()))
                progress.update(1)
                if self.step % spec.log_every == 0 or self.step == spec.max_steps:
                    self._check_finite(nonfinite)
                    record = self._log(result, (self.step - first_step) / (time.perf_counter() - self.session_started))
                    progress.set_postfix(loss=f"{record['loss']:.4g}")
                    on_log(record)
                if self.step % spec.val_every == 0:
                    self.save_validation()
                if self.step % spec.checkpoint_every == 0:
                    self.save_checkpoint(nonfinite)
        if not checkpoint_path(self.paths.checkpoints, self.step).exists():
            self.save_checkpoint(nonfinite)

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        if nonfinite.item():
            last = latest_checkpoint(self.paths.checkpoints)
            raise NonFiniteLossError(
                f"the loss became NaN or infinite before step {self.step}; no checkpoint was written from it. "
                f"Lower optim.lr_* or teacher.guidance_scale"
                + (f", then resume from {last} with --resume {self.paths.root}" if last else "")
            )

    def _log(self, result: StepResult, steps_per_second: float) -> dict:
        values = {name: loss.item() for name, loss in result.losses.items()}
        record = {"step": self.step, "loss": sum(values.values()), "losses": values, "it_per_s": steps_per_second}
        if result.diagnostics:
            record["diagnostics"] = {name: value.item() for name, value in result.diagnostics.items()}
        self.metrics.append(record)
        return record

    def save_checkpoint(self, nonfinite: torch.Tensor) -> None:
        self._check_finite(nonfinite)
        save_atomic(self.state_dict(), checkpoint_path(self.paths.checkpoints, self.step))
        prune_checkpoints(self.paths.checkpoints, self.config.trainer.keep_checkpoints)

    def save_validation(self) -> None:
        spec = self.config.trainer
        save_validation_strip(self.output_field(), self.config.render, self.config.background.color, self.config.video,
                              spec.val_views, spec.val_resolution, self.paths.validation / f"step{self.step:07d}.png")
