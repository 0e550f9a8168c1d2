"""The distillation loop: sample cameras, render the representation, score with the teacher, step its parameters.

Randomness on the training path (cameras, sample jitter, timesteps, noise) comes from one
``torch.Generator`` whose state is checkpointed, so a resumed run continues exactly where an
uninterrupted one would be.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from diffusers.training_utils import EMAModel
from torch.profiler import record_function
from tqdm import tqdm

from guidance.distillation import GuidanceOutput, ScoreDistillation, ViewBatch
from guidance.ratio_diagnostics import RatioMonitor
from guidance.sample_bank import SampleBankSpec, bank_key, draw_sample_bank
from guidance.teacher import DiffusionTeacher
from threed import distributed
from threed.cameras import CameraBatch, sample_cameras
from threed.checkpoint import (checkpoint_path, latest_checkpoint, load_checkpoint, load_latest_checkpoint, prune_checkpoints,
                               save_checkpoint)
from threed.config import Config, TrainerSpec, load_config
from threed.device import cpu_autocast
from threed.distributed import VIEW_SEED_STRIDE, Ranks
from threed.errors import ConfigError, NonFiniteLossError, RunDirError
from threed.files import save_torch, write_text
from threed.mesh_representation import MeshRepresentation
from threed.nerf_representation import NeRFRepresentation
from threed.representation import RenderedViews, Representation
from threed.run_folder import RunPaths, existing_run_folder
from threed.video import save_validation_strip

log = logging.getLogger(__name__)


def build_representation(config: Config, device: torch.device | str = "cpu", start: bool = True) -> Representation:
    """The representation a config trains (the one place that chooses it): the hash-grid NeRF, or a mesh
    stage. With ``start``, as its training starts (a mesh stage from the finished run ``mesh.start_from``);
    else the structure a checkpoint of the run fills, which a mesh stage builds without its source run (its
    config's ``geometry`` is the source's colour field's: ``Run.start`` carries it over)."""
    if config.representation == "nerf":
        return NeRFRepresentation(config.geometry, config.background, config.render, config.regularizers,
                                  config.optim).to(device)
    fixed = config.representation == "texture"
    if not start:
        return MeshRepresentation.for_checkpoint(config.mesh, fixed, config.geometry, config.background.color).to(device)
    source_paths = existing_run_folder(config.mesh.start_from)
    source_config = load_config(source_paths.config)
    source = trained_representation(source_config, source_paths, device)
    if isinstance(source, NeRFRepresentation):
        # The NeRF run's exported surface (at its export.threshold, its hollows filled as its export fills
        # them) and a copy of its colour field, with the NeRF run's field settings, whatever the stage's say.
        export = source_config.export
        return MeshRepresentation.from_density(config.mesh, source.field, export.threshold, config.background.color,
                                               fixed, export.fill_cavities, export.cavity_closing).to(device)
    if not fixed:
        raise ConfigError(f"mesh.start_from={config.mesh.start_from} is a mesh stage's run: the geometry stage "
                          "(representation=dmtet) starts from a NeRF run, the texture stage from either")
    return MeshRepresentation.fixed_copy(config.mesh, source).to(device)


def trained_representation(config: Config, paths: RunPaths, device: torch.device | str) -> Representation:
    """The representation of a run's latest checkpoint, with the moving average of its parameters where
    ``trainer.ema_decay`` asks for one, as the run's own outputs show it."""
    found = load_latest_checkpoint(paths.checkpoints, device)
    if found is None:
        raise RunDirError(f"{paths.root} has no checkpoint yet; train it first (--resume {paths.root})")
    _, state = found
    representation = build_representation(config, device, start=False)
    representation.load_state_dict(state["representation"])
    ema = make_ema(representation, config.trainer)
    if ema and state.get("ema"):
        ema.load_state_dict(state["ema"])
    return with_averaged_parameters(representation, ema).eval()


def scale_learning_rates(optimizer: torch.optim.Optimizer, base_lrs: list[float], scale: float) -> None:
    """Sets each parameter group's learning rate to its base rate times ``scale`` (``optim.lr_scale`` at the
    step: a function of the step alone, so a resumed run needs no scheduler state)."""
    for group, lr in zip(optimizer.param_groups, base_lrs):
        group["lr"] = lr * scale


def make_ema(representation: Representation, spec: TrainerSpec) -> EMAModel | None:
    """The moving average of the representation's parameters that ``trainer.ema_decay`` asks for (None at 0):
    a copy of them up to step ``ema_start_step + 1``, then decayed by ``ema_decay`` at every step."""
    if spec.ema_decay == 0.0:
        return None
    return EMAModel(representation.parameters(), decay=spec.ema_decay, min_decay=spec.ema_decay,
                    update_after_step=spec.ema_start_step)


def with_averaged_parameters(representation: Representation, ema: EMAModel | None) -> Representation:
    """A copy of ``representation`` (its buffers too, e.g. the occupancy grid) with the EMA's parameters;
    ``representation`` itself without an EMA."""
    if ema is None:
        return representation
    averaged = copy.deepcopy(representation)
    ema.copy_to(averaged.parameters())
    return averaged


def cached_sample_bank(teacher: DiffusionTeacher, prompts: list[str], negative_prompt: str,
                       spec: SampleBankSpec) -> torch.Tensor:
    """The teacher sample bank from ``spec.cache_dir`` when one was drawn with the same key, else drawn and saved there."""
    path = Path(spec.cache_dir).expanduser() / f"{bank_key(teacher, prompts, negative_prompt, spec)}.pt"
    if path.is_file():
        log.info("teacher sample bank: loaded %s", path)
        return torch.load(path, map_location=teacher.device, weights_only=True)
    bank = draw_sample_bank(teacher, prompts, negative_prompt, spec)
    save_torch(bank.cpu(), path)
    log.info("teacher sample bank: saved %s", path)
    return bank


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
        """Forgets entries past ``step`` (atomically): a resumed run logs those steps again."""
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            write_text(self.path, "".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class Trainer:
    """One run's representation, optimiser and guidance. The teacher is loaded by the caller (and may be reused)."""

    def __init__(self, config: Config, paths: RunPaths, teacher: DiffusionTeacher, ranks: Ranks | None = None):
        device = teacher.device
        self.config, self.paths, self.device = config, paths, device
        self.ranks = ranks or distributed.current()  # several under torchrun: see threed.distributed
        torch.manual_seed(config.seed)
        torch.use_deterministic_algorithms(config.trainer.deterministic, warn_only=True)
        # A run with a checkpoint is resumed from it, so a mesh stage's source run is no longer needed.
        self.fresh = latest_checkpoint(paths.checkpoints) is None
        self.representation = build_representation(config, device, start=self.fresh)
        self.guidance = ScoreDistillation(teacher, config.guidance, config.prompt, config.teacher.negative_prompt,
                                          config.teacher.guidance_scale, config.views, cached_sample_bank).to(device)
        groups = self.representation.parameter_groups()
        self.base_lrs = [group["lr"] for group in groups]
        self.optimizer = torch.optim.Adam(groups, betas=tuple(config.optim.betas), eps=config.optim.eps)
        self.ema = make_ema(self.representation, config.trainer)
        groups = self.guidance.parameter_groups()
        self.guidance_optimizer = torch.optim.AdamW(groups, weight_decay=0.0) if groups else None
        # Gradients through fp16 U-Nets underflow without loss scaling (torch.amp's rule); a no-op otherwise.
        fp16 = teacher.dtype == torch.float16
        self.loss_scalers = {name: torch.amp.GradScaler(device.type, enabled=fp16) for name in ("representation", "guidance")}
        self.autocast = functools.partial(cpu_autocast, device, config.teacher.cpu_precision)
        # The stream every rank shares (the occupancy grid's updates) and this rank's own (its views' draws).
        self.generator = torch.Generator(device).manual_seed(config.seed)
        self.view_generator = self.ranks.view_generator(self.generator, config.seed)
        self.metrics = MetricsLog(paths.metrics)
        self.ratio_monitor = RatioMonitor(teacher.num_train_timesteps)
        self.step = 0
        # Wall seconds of training in the run's earlier, interrupted sessions (up to the resumed
        # checkpoint); this session's are counted from the start of ``fit``.
        self.earlier_sessions_s = 0.0
        self.session_started = time.perf_counter()

    def state_dict(self) -> dict:
        return {"step": self.step, "representation": self.representation.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "guidance": self.guidance.trainable_state_dict(),
                "guidance_optimizer": self.guidance_optimizer.state_dict() if self.guidance_optimizer else None,
                "loss_scalers": {name: scaler.state_dict() for name, scaler in self.loss_scalers.items()},
                "generator": self.generator.get_state(), "training_s": self.training_seconds(),
                "view_generators": self.ranks.gather(self.view_generator.get_state()) if self.ranks.world_size > 1 else None}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.representation.load_state_dict(state["representation"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and state.get("ema"):  # a checkpoint without one (trained without) starts it afresh
            self.ema.load_state_dict(state["ema"])
        self.guidance.load_trainable_state_dict(state["guidance"])
        if self.guidance_optimizer:
            self.guidance_optimizer.load_state_dict(state["guidance_optimizer"])
        for name, scaler_state in state.get("loss_scalers", {}).items():
            if scaler_state:  # a disabled scaler's state is empty
                self.loss_scalers[name].load_state_dict(scaler_state)
        self.generator.set_state(state["generator"].cpu())
        if self.ranks.world_size > 1:
            self._load_view_generator(state.get("view_generators") or [])
        self.earlier_sessions_s = state.get("training_s", 0.0)  # absent in checkpoints before 2026-11-23

    def _load_view_generator(self, states: list[torch.Tensor]) -> None:
        """This rank's stream from a checkpoint written by as many ranks; otherwise a fresh one for the step."""
        if len(states) == self.ranks.world_size:
            self.view_generator.set_state(states[self.ranks.rank].cpu())
            return
        log.warning("the checkpoint holds %d ranks' random streams and this run has %d ranks: each rank's views "
                    "draw from a new stream", len(states), self.ranks.world_size)
        self.view_generator.manual_seed(self.config.seed + VIEW_SEED_STRIDE * (self.ranks.rank + 1) + self.step)

    def training_seconds(self) -> float:
        """Wall seconds spent training up to ``self.step``, over every session of the run."""
        return self.earlier_sessions_s + time.perf_counter() - self.session_started

    def resume(self) -> None:
        """Continues from the run's latest intact checkpoint, if it has one."""
        found = load_latest_checkpoint(self.paths.checkpoints, self.device)
        if found is None and not self.fresh:
            raise RunDirError(f"every checkpoint in {self.paths.checkpoints} is damaged: start the run again "
                              "(--train, with --from RUN_DIR for a mesh stage)")
        if found is None:
            log.info("no checkpoint in %s: starting from step 0", self.paths.checkpoints)
            return
        path, state = found
        self.load_state_dict(state)
        if self.ranks.is_main:
            self.metrics.drop_after(self.step)
        log.info("resumed from %s (step %d)", path, self.step)

    def load_step(self, step: int) -> None:
        """The run's state at checkpointed step ``step`` (the tools that read a run at several steps use it)."""
        path = checkpoint_path(self.paths.checkpoints, step)
        if not path.is_file():
            raise RunDirError(f"no checkpoint of step {step} in {self.paths.checkpoints}: pick steps the run "
                              f"checkpointed (trainer.checkpoint_every, trainer.keep_checkpoints)")
        self.load_state_dict(load_checkpoint(path, self.device))

    def render_training_views(self, step: int, generator: torch.Generator,
                              shading: str | None = None) -> tuple[CameraBatch, RenderedViews, ViewBatch]:
        """Training step ``step``'s cameras (drawn by ``generator``), their render, and the render as the
        guidance's view batch; ``shading`` fixes the shading mode (e.g. "albedo") instead of drawing it."""
        cameras = sample_cameras(self.config.camera, generator, step)
        rendered = self.representation.render(cameras, generator, shading)
        return cameras, rendered, ViewBatch(rendered.images, cameras.elevation_deg, cameras.azimuth_deg, cameras.c2w)

    def training_step(self) -> StepResult:
        """One step of the representation and of the guidance's own parameters. Its parts are labelled for
        torch.profiler (``step.*``; ``python -m threed.tools.bench step`` reads them)."""
        with record_function("step.prepare"):
            self.representation.prepare_step(self.step, self.generator)
        with record_function("step.render"):
            _, rendered, views = self.render_training_views(self.step, self.view_generator)
        with record_function("step.guidance"), self.autocast():
            out = self.guidance(views, self.step, self.view_generator)
        self.ratio_monitor.add(out.ratio)
        with record_function("step.regularizers"):
            regularizer_losses = self.representation.regularizer_losses(rendered, self.step, self.view_generator)
            generator_losses = {**out.generator_losses, **regularizer_losses}
        scale_learning_rates(self.optimizer, self.base_lrs, self.config.optim.lr_scale.at(self.step))
        self._step(self.optimizer, generator_losses, [p for group in self.optimizer.param_groups for p in group["params"]],
                   self.loss_scalers["representation"], "step.representation")
        with record_function("step.ema"):
            if self.ema:
                self.ema.step(self.representation.parameters())
        self._update_guidance(out, views, self.step)
        self.step += 1
        losses = {name: loss.detach() for name, loss in {**generator_losses, **out.auxiliary_losses}.items()}
        return StepResult(losses, out.diagnostics)

    def output_representation(self) -> Representation:
        """What validation, the video and the meshes show: the EMA's parameters (``trainer.ema_decay``) or the live ones."""
        return with_averaged_parameters(self.representation, self.ema)

    def _update_guidance(self, out: GuidanceOutput, views: ViewBatch, step: int) -> None:
        """Steps the fake score and discriminator on this step's losses, then on fresh ones as often as
        ``guidance.fake_score.updates_per_step`` asks."""
        parameters = self.guidance.trainable_parameters()
        scaler = self.loss_scalers["guidance"]
        self._step(self.guidance_optimizer, out.auxiliary_losses, parameters, scaler, "step.guidance_update")
        if out.auxiliary_losses:
            for _ in range(self.config.guidance.fake_score.updates_per_step - 1):
                with record_function("step.guidance_update.losses"), self.autocast():
                    losses, _ = self.guidance.auxiliary_losses(out.latents, views, step, self.view_generator)
                self._step(self.guidance_optimizer, losses, parameters, scaler, "step.guidance_update")

    def _step(self, optimizer: torch.optim.Optimizer | None, losses: dict[str, torch.Tensor], parameters: list[torch.Tensor],
              scaler: torch.amp.GradScaler, label: str) -> None:
        """Backpropagates ``losses`` (scaled, where ``scaler`` is enabled) into ``parameters`` only, averages the
        gradients over the ranks, then steps their optimiser (none without losses); the parts are profiled as
        ``label.backward`` and ``label.optimizer``."""
        if not losses:
            return
        optimizer.zero_grad(set_to_none=True)
        with record_function(f"{label}.backward"):
            scaler.scale(sum(losses.values())).backward(inputs=parameters)
            self.ranks.average_gradients(parameters)
        with record_function(f"{label}.optimizer"):
            scaler.step(optimizer)
            scaler.update()

    def fit(self, stop_requested: Callable[[], bool] = lambda: False,
            on_log: Callable[[dict], None] = lambda record: None) -> None:
        """Trains up to ``trainer.max_steps``; ``stop_requested`` is polled at each step to end early,
        and ``on_log`` receives each metrics record (every ``trainer.log_every`` steps).

        Losses are read back from the device only at logging steps; a non-finite loss is then
        reported, and no checkpoint is written from parameters it may have touched.
        """
        spec = self.config.trainer
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        trained = [*self.representation.parameters(), *self.guidance.trainable_parameters()]
        self.session_started, first_step = time.perf_counter(), self.step
        checkpointed_step = self.step if checkpoint_path(self.paths.checkpoints, self.step).exists() else None
        with tqdm(total=spec.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                  disable=not self.ranks.is_main) as progress:
            while self.step < spec.max_steps and not stop_requested():
                result = self.training_step()
                nonfinite |= ~torch.isfinite(sum(result.losses.values()))
                nonfinite |= ~torch.stack([parameter.isfinite().all() for parameter in trained]).all()
                progress.update(1)
                if self.step % spec.log_every == 0 or self.step == spec.max_steps:
                    self._check_finite(nonfinite)
                    record = self._log(result, (self.step - first_step) / (time.perf_counter() - self.session_started))
                    progress.set_postfix(loss=f"{record['loss']:.4g}")
                    on_log(record)
                if self.step % spec.val_every == 0 and self.ranks.is_main:
                    self.save_validation()
                if self.step % spec.checkpoint_every == 0:
                    self.save_checkpoint(nonfinite)
                    checkpointed_step = self.step
        if checkpointed_step != self.step:
            self.save_checkpoint(nonfinite)

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        if self.ranks.any(nonfinite).item():  # every rank stops together
            last = latest_checkpoint(self.paths.checkpoints)
            raise NonFiniteLossError(
                f"the loss or the parameters became NaN or infinite before step {self.step}; no checkpoint was "
                f"written from them. "
                f"Lower optim.lr_* or teacher.guidance_scale"
                + (f", then resume from {last} with --resume {self.paths.root}" if last else "")
            )

    def _log(self, result: StepResult, steps_per_second: float) -> dict:
        values = {name: loss.item() for name, loss in result.losses.items()}
        record = {"step": self.step, "loss": sum(values.values()), "losses": values, "it_per_s": steps_per_second}
        if result.diagnostics:
            record["diagnostics"] = {name: value.item() for name, value in result.diagnostics.items()}
        ratio = self.ratio_monitor.summary()  # the steps since the last record
        if ratio:
            record["ratio"] = ratio
        if self.ranks.is_main:  # rank 0's views' losses stand for the step's
            self.metrics.append(record)
        return record

    def save_checkpoint(self, nonfinite: torch.Tensor) -> None:
        """Written by rank 0 (with every rank's random stream); every rank takes part."""
        self._check_finite(nonfinite)
        state = self.state_dict()
        if self.ranks.is_main:
            save_checkpoint(state, self.paths.checkpoints, self.step)
            prune_checkpoints(self.paths.checkpoints, self.config.trainer.keep_checkpoints)
        self.ranks.barrier()  # no rank reads a checkpoint before it is written

    def save_validation(self) -> None:
        spec = self.config.trainer
        save_validation_strip(self.output_representation(), self.config.video, spec.val_views, spec.val_resolution,
                              self.paths.validation / f"step{self.step:07d}.png")
