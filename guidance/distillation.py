"""Turns rendered views into distillation losses: encode, noise, score with the teacher, the fake
score and the discriminator, estimate. Also returns the losses that train the fake score and the
discriminator.

Which estimator runs, what it needs and its time weight come from ``guidance.registry``. With
``normalize_per_sample`` each sample's time weight is further divided by SiD's ``mean |x_0 - f_teacher|``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from guidance import estimators
from guidance.discriminator import DiscriminatorHead, DiscriminatorSpec, adversarial_loss, discriminator_loss
from guidance.divergences import DIVERGENCES, get_divergence
from guidance.estimators import EstimatorOptions, NoisedSample, RatioSpec, Scores
from guidance.fake_score import FakeScore, FakeScoreSpec
from guidance.prompts import VIEWS, PromptEmbeddings, ViewPromptSpec, view_index, view_prompt
from guidance.ratio_diagnostics import RatioReading, RunningMeans
from guidance.registry import ESTIMATOR_NAMES, ESTIMATORS
from guidance.sample_bank import SampleBankSpec, draw_sample_bank
from guidance.schedules import Ramp, SwitchSpec
from guidance.teacher import DiffusionTeacher

T = TypeVar("T")
# (teacher, view prompts, negative prompt, spec) -> the bank [V, N, C, h, w]: drawn, or read from a cache
BankSource = Callable[[DiffusionTeacher, list[str], str, SampleBankSpec], torch.Tensor]


@dataclass
class GuidanceSpec:
    estimator: str = field(default="sds", metadata={"choices": ESTIMATOR_NAMES})
    divergence: str = field(default="fkl", metadata={"choices": tuple(DIVERGENCES)})
    alpha_sid: float = 1.2
    switch: SwitchSpec = field(default_factory=SwitchSpec)
    min_step_percent: Ramp = field(default_factory=lambda: Ramp(0.02))
    max_step_percent: Ramp = field(default_factory=lambda: Ramp(0.98))
    weight: Ramp = field(default_factory=lambda: Ramp(1.0))
    adversarial_weight: Ramp = field(default_factory=lambda: Ramp(0.0))
    normalize_per_sample: bool = False
    gradient_checkpointing: bool = False
    ratio: RatioSpec = field(default_factory=RatioSpec)
    fake_score: FakeScoreSpec = field(default_factory=FakeScoreSpec)
    discriminator: DiscriminatorSpec = field(default_factory=DiscriminatorSpec)
    sample_bank: SampleBankSpec = field(default_factory=SampleBankSpec)

    def __post_init__(self):
        for name in ("min_step_percent", "max_step_percent"):
            ramp = getattr(self, name)
            if not all(0.0 <= value <= 1.0 for value in (ramp.start, ramp.end) if value is not None):
                raise ValueError(f"guidance.{name} must stay within [0, 1], got start={ramp.start}, end={ramp.end}")
        for name, allowed in (("estimator", ESTIMATOR_NAMES), ("divergence", tuple(DIVERGENCES))):
            value = getattr(self.switch, name)
            if value and value not in allowed:
                raise ValueError(f"switch.{name} = {value!r} is not one of {list(allowed)}")

    def estimator_at(self, step: int) -> str:
        return self.switch.estimator if self.switch.estimator and 0 <= self.switch.step <= step else self.estimator

    def divergence_at(self, step: int) -> str:
        return self.switch.divergence if self.switch.divergence and 0 <= self.switch.step <= step else self.divergence

    def estimators_used(self) -> set[str]:
        return {self.estimator, self.switch.estimator} - {""}

    def uses_discriminator(self) -> bool:
        adversarial = self.adversarial_weight.start > 0 or (self.adversarial_weight.end or 0) > 0
        return adversarial or any(ESTIMATORS[name].uses_divergence for name in self.estimators_used())

    def uses_fake_score(self) -> bool:
        return self.uses_discriminator() or any(ESTIMATORS[name].needs_fake_score for name in self.estimators_used())


def profiled(label: str, function: Callable[[torch.Tensor], T]) -> Callable[[torch.Tensor], T]:
    """``function`` with its calls labelled for torch.profiler (a no-op when no profiler runs)."""
    def call(x_t: torch.Tensor) -> T:
        with record_function(label):
            return function(x_t)

    return call


def once_per_input(network: Callable[[torch.Tensor], T]) -> Callable[[torch.Tensor], T]:
    """``network`` evaluated once per input within one training step, however many of its outputs
    (the fake U-Net's eps and the logit; the teacher's score for an estimator and for SiD's
    normaliser) are asked for. Inputs are the same when they share storage and shape (``x_t`` and
    ``x_t.detach()``); a call that must carry the graph never reuses one that does not, and one that need
    not reuses one that does (the ratio's diagnostics read the estimator's own logit)."""
    cache: dict[tuple, T] = {}

    def evaluate(x_t: torch.Tensor) -> T:
        same_input = (x_t.data_ptr(), tuple(x_t.shape))
        key = (*same_input, torch.is_grad_enabled() and x_t.requires_grad)
        key = (*same_input, True) if (*same_input, True) in cache else key
        if key not in cache:
            cache[key] = network(x_t)
        return cache[key]

    return evaluate


@dataclass
class ViewBatch:
    """Rendered views and where they were seen from."""

    images: torch.Tensor  # [B, H, W, 3] in [0, 1], differentiable
    elevation_deg: torch.Tensor  # [B]
    azimuth_deg: torch.Tensor  # [B]
    c2w: torch.Tensor  # [B, 4, 4] camera-to-world


@dataclass
class GuidanceOutput:
    generator_losses: dict[str, torch.Tensor]  # named and weighted; their sum trains the 3D parameters
    auxiliary_losses: dict[str, torch.Tensor]  # their sum trains the guidance's own parameters
    timesteps: torch.Tensor  # [B] the sampled teacher timesteps
    latents: torch.Tensor  # [B, C, h, w] the encoded renders, detached: input to further auxiliary updates
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # logged, not trained on
    ratio: RatioReading | None = None  # with a discriminator: the ratio at these renders (RatioMonitor sums it up)


class ScoreDistillation(nn.Module):
    """The teacher, the prompt's embeddings (computed once) and, as the estimators need them, the
    LoRA fake score, the discriminator head and the teacher sample bank (from ``bank_source``)."""

    def __init__(self, teacher: DiffusionTeacher, spec: GuidanceSpec, prompt: str, negative_prompt: str,
                 guidance_scale: Ramp, views: ViewPromptSpec, bank_source: BankSource = draw_sample_bank):
        super().__init__()
        self.teacher, self.spec, self.guidance_scale, self.views = teacher, spec, guidance_scale, views
        prompt = teacher.canonical_prompt(prompt)  # "an orange torus" as a closed-vocabulary teacher's captions say it
        self.prompts = PromptEmbeddings(teacher.embed_text, prompt, negative_prompt, views)
        self.fake_score = FakeScore(teacher, spec.fake_score) if spec.uses_fake_score() else None
        self.discriminator = None
        if spec.uses_discriminator():
            bottleneck_channels = teacher.unet.config.block_out_channels[-1]
            self.discriminator = DiscriminatorHead(bottleneck_channels, spec.discriminator).to(teacher.device)
            variants = [view_prompt(prompt, v) for v in VIEWS] if views.enabled else [prompt]
            bank = bank_source(teacher, variants, negative_prompt, spec.sample_bank)
            self.register_buffer("sample_bank", bank, persistent=False)  # [V, N, C, h, w]
        ratio = spec.ratio
        self.running_means = RunningMeans(teacher.num_train_timesteps, ratio.running_bands, ratio.running_decay).to(
            teacher.device) if ratio.running_mean and self.discriminator is not None else None
        if spec.gradient_checkpointing:
            teacher.unet.enable_gradient_checkpointing()
            if self.fake_score is not None:
                self.fake_score.unet.enable_gradient_checkpointing()

    def parameter_groups(self) -> list[dict]:
        """The guidance's trainable parameters, grouped with their learning rates."""
        groups = []
        if self.fake_score is not None:
            groups.append({"params": self.fake_score.trainable_parameters(), "lr": self.spec.fake_score.lr})
        if self.discriminator is not None:
            groups.append({"params": list(self.discriminator.parameters()), "lr": self.spec.discriminator.lr})
        return groups

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for group in self.parameter_groups() for p in group["params"]]

    def trainable_state_dict(self) -> dict:
        state = {}
        if self.fake_score is not None:
            state["fake_score"] = self.fake_score.trainable_state_dict()
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
        if self.running_means is not None:
            state["ratio_running_means"] = self.running_means.state_dict()
        return state

    def load_trainable_state_dict(self, state: dict) -> None:
        if self.fake_score is not None:
            self.fake_score.load_trainable_state_dict(state["fake_score"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
        if self.running_means is not None and "ratio_running_means" in state:  # else they start afresh
            self.running_means.load_state_dict(state["ratio_running_means"])

    def sample_timesteps(self, batch: int, step: int, generator: torch.Generator) -> torch.Tensor:
        n = self.teacher.num_train_timesteps
        low, high = int(self.spec.min_step_percent.at(step) * n), int(self.spec.max_step_percent.at(step) * n)
        return torch.randint(low, max(high, low + 1), (batch,), generator=generator, device=generator.device)

    def noised_sample(self, views: ViewBatch, step: int, generator: torch.Generator,
                      t: torch.Tensor | None = None) -> tuple[torch.Tensor, NoisedSample]:
        """The encoded views noised at a t of step ``step``'s range (or at the given t [B]): (t, the sample).
        ``generator`` draws t, then eps."""
        x0 = self.teacher.encode(views.images.permute(0, 3, 1, 2)).float()
        t = self.sample_timesteps(x0.shape[0], step, generator) if t is None else t
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        alpha, sigma = self.teacher.alpha_sigma(t)
        return t, NoisedSample(x0, eps, alpha, sigma)

    def scores(self, views: ViewBatch, t: torch.Tensor, sigma: torch.Tensor, step: int) -> Scores:
        """The teacher's guided score (at step ``step``'s scale), the fake score and the discriminator's logit
        for these views at timesteps t [B]; each network runs once per input however often it is asked."""
        cond, uncond = self.prompts(views.elevation_deg, views.azimuth_deg)
        camera = views.c2w.flatten(1)
        scale = self.guidance_scale.at(step)
        teacher_eps = once_per_input(profiled("guidance.teacher", lambda x_t: self.teacher.predict_eps_cfg(
            x_t, t, cond, uncond, scale)))
        if self.fake_score is None:
            return Scores(teacher=lambda x_t: -teacher_eps(x_t) / sigma)
        fake = once_per_input(profiled("guidance.fake_score", lambda x_t: self.fake_score.predict(x_t, t, cond, camera)))
        logit = None if self.discriminator is None else \
            profiled("guidance.discriminator", lambda x_t: self.logit_at(fake(x_t).bottleneck, x_t))
        return Scores(teacher=lambda x_t: -teacher_eps(x_t) / sigma, fake=lambda x_t: -fake(x_t).eps / sigma, logit=logit)

    def logit_at(self, bottleneck: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit at x_t [B, C, H, W] from the fake U-Net's bottleneck there: [B], or with
        ``discriminator.logit_map`` its map brought to x_t's locations, [B, 1, H, W] (each latent pixel takes the
        logit of the bottleneck cell it lies in)."""
        logit = self.discriminator(bottleneck)
        return F.interpolate(logit, size=x_t.shape[-2:], mode="nearest") if logit.dim() == 4 else logit

    def forward(self, views: ViewBatch, step: int, generator: torch.Generator) -> GuidanceOutput:
        """The losses at training step ``step``; generator draws t and eps (on the images' device)."""
        t, sample = self.noised_sample(views, step, generator)
        scores = self.scores(views, t, sample.sigma, step)
        estimator = self.spec.estimator_at(step)
        h_scale = self.running_h_scale(sample, scores, t, step) if ESTIMATORS[estimator].uses_divergence else None
        generator_losses = {estimator: self.spec.weight.at(step) * self.estimator_loss(
            sample, scores, estimator, self.spec.divergence_at(step), h_scale)}
        adversarial_weight = self.spec.adversarial_weight.at(step)
        if adversarial_weight > 0:
            generator_losses["adversarial"] = adversarial_weight * adversarial_loss(scores.logit(sample.x_t))
        latents = sample.x0.detach()
        ratio = self.ratio_reading(sample, scores, t, step) if self.discriminator is not None else None
        with record_function("guidance.auxiliary_losses"):
            auxiliary, diagnostics = ({}, {}) if self.fake_score is None else \
                self.auxiliary_losses(latents, views, step, generator)
        return GuidanceOutput(generator_losses, auxiliary, t, latents, diagnostics, ratio)

    @torch.no_grad()
    def ratio_reading(self, sample: NoisedSample, scores: Scores, t: torch.Tensor, step: int) -> RatioReading:
        """The density ratio at this step's noisy renders, as the f-divergence weight sees it (the estimator's
        own logit: no further network call where it asked for one). A ratio map is read view by view: its mean h
        and the fractions of its locations at either clamp."""
        logit = scores.logit(sample.x_t.detach()).float()
        at_low, at_high = (estimators.per_view(at.float()) for at in estimators.at_clamps(logit, self.spec.ratio))
        return RatioReading(t, self.raw_weight(logit, step), at_low, at_high)

    def raw_weight(self, logit: torch.Tensor, step: int) -> torch.Tensor:
        """h(r) [B] of step ``step``'s divergence at the clamped ratio of ``logit`` ([B], or a map: its mean over
        the view), before any normalisation."""
        ratio = estimators.density_ratio(logit, self.spec.ratio)
        return estimators.per_view(get_divergence(self.spec.divergence_at(step)).h(ratio))

    def running_h_scale(self, sample: NoisedSample, scores: Scores, t: torch.Tensor, step: int) -> torch.Tensor | None:
        """With ``ratio.running_mean``: this step's h at its renders taken into the running means of its bands of t,
        and each view's band mean [B], which divides its h. The logit is evaluated as the estimators ask for it
        (with its graph), so they reuse it."""
        if self.running_means is None:
            return None
        return self.running_means.update(t, self.raw_weight(scores.logit(sample.x_t).detach(), step))

    def estimator_loss(self, sample: NoisedSample, scores: Scores, estimator: str, divergence: str,
                       h_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The named estimator's loss (``guidance.registry``) with its time weight, for ``divergence`` where it uses
        one (its h divided by ``h_scale`` [B] where given)."""
        entry = ESTIMATORS[estimator]
        options = EstimatorOptions(get_divergence(divergence), self.spec.ratio, self.spec.alpha_sid, h_scale)
        return entry.loss(sample, scores, self._time_weight(entry.time_weight, sample, scores.teacher), options)

    @torch.no_grad()
    def x0_predictions(self, views: ViewBatch, step: int, generator: torch.Generator, t: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What a training step at ``step`` sees: the encoded views x_0, and the teacher's (guided) and the
        fake score's (None without one) one-step x0-predictions f = (x_t + sigma^2 s(x_t)) / alpha from them
        noised as ``forward`` noises them (at the given t [B], if any); each [B, C, h, w] in teacher space."""
        t, sample = self.noised_sample(views, step, generator, t)
        scores = self.scores(views, t, sample.sigma, step)

        def x0_prediction(score) -> torch.Tensor | None:
            return None if score is None else (sample.x_t + sample.sigma**2 * score(sample.x_t)) / sample.alpha

        return sample.x0, x0_prediction(scores.teacher), x0_prediction(scores.fake)

    def _time_weight(self, time_weight, sample: NoisedSample, teacher_score) -> torch.Tensor:
        """[B] weights that put the estimator on its classic x0-gradient scale (``guidance.registry``)."""
        weight = time_weight(sample.alpha.flatten(), sample.sigma.flatten())
        if self.spec.normalize_per_sample:
            with torch.no_grad():
                x_t = sample.x_t.detach()
                f_teacher = (x_t + sample.sigma**2 * teacher_score(x_t)) / sample.alpha
                weight = weight / (sample.x0.detach() - f_teacher).abs().flatten(1).mean(1).clamp_min(1e-8)
        return weight

    def auxiliary_losses(self, x0: torch.Tensor, views: ViewBatch, step: int,
                         generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Denoising loss of the fake score on the detached encoded renders ``x0`` [B, C, h, w] and, with
        a discriminator, its GAN loss against teacher samples of the same views, at a fresh t drawn uniformly
        (or, with ``discriminator.timesteps: guidance``, from step ``step``'s range of the estimator's t).
        Both share one fake-U-Net call on the renders.

        Also returns, with a discriminator, the diagnostic ``density_ratio``: the batch mean of the
        estimated r = q_t / p_t on the renders (clamped as ``guidance.ratio`` says), at this loss's
        uniformly drawn t. Near 1 the discriminator cannot tell renders from teacher samples; at the
        lower clamp it tells them apart easily, and an f-divergence weight h(r) sits at its floor."""
        batch = x0.shape[0]
        cond, _ = self.prompts(views.elevation_deg, views.azimuth_deg)
        camera = views.c2w.flatten(1)
        t = self.sample_timesteps(batch, step, generator) \
            if self.discriminator is not None and self.spec.discriminator.timesteps == "guidance" else \
            torch.randint(0, self.teacher.num_train_timesteps, (batch,), generator=generator, device=generator.device)
        alpha, sigma = self.teacher.alpha_sigma(t)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        keep = torch.rand(batch, 1, generator=generator, device=x0.device) >= self.spec.fake_score.condition_drop
        camera = camera * keep
        on_renders = self.fake_score.predict(alpha * x0 + sigma * eps, t, cond, camera)
        losses, diagnostics = {"fake_score": ((on_renders.eps - eps) ** 2).mean()}, {}
        if self.discriminator is not None:
            real_x0 = self._real_samples(views, generator)
            real_eps = torch.randn(real_x0.shape, generator=generator, device=x0.device)
            on_real = self.fake_score.predict(alpha * real_x0 + sigma * real_eps, t, cond, camera)
            render_logit = self.discriminator(on_renders.bottleneck)
            losses["discriminator"] = discriminator_loss(self.discriminator(on_real.bottleneck), render_logit)
            diagnostics["density_ratio"] = estimators.density_ratio(render_logit.detach(), self.spec.ratio).mean()
        return losses, diagnostics

    def _real_samples(self, views: ViewBatch, generator: torch.Generator) -> torch.Tensor:
        """One bank sample per view, of the same view-dependent prompt: [B, C, h, w]."""
        batch = views.elevation_deg.shape[0]
        variant = view_index(views.elevation_deg, views.azimuth_deg, self.views) if self.views.enabled else \
            torch.zeros(batch, dtype=torch.long, device=views.elevation_deg.device)
        pick = torch.randint(0, self.sample_bank.shape[1], (batch,), generator=generator, device=generator.device)
        return self.sample_bank[variant, pick.to(variant.device)]
