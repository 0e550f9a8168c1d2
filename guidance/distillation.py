"""Turns rendered views into distillation losses: encode, noise, score with the teacher (and the
fake score), estimate. Also returns the fake score's own training loss."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from guidance.estimators import NoisedSample, sds, vsd
from guidance.fake_score import FakeScore, FakeScoreSpec
from guidance.prompts import PromptEmbeddings, ViewPromptSpec
from guidance.teacher import DiffusionTeacher

ESTIMATORS = ("sds", "vsd")
NEEDS_FAKE_SCORE = ("vsd",)


@dataclass
class GuidanceSpec:
    estimator: str = field(default="sds", metadata={"choices": ESTIMATORS})
    min_step_percent: float = field(default=0.02, metadata={"range": (0.0, 1.0)})
    max_step_percent: float = field(default=0.98, metadata={"range": (0.0, 1.0)})
    weight: float = field(default=1.0, metadata={"range": (0.0, None)})
    fake_score: FakeScoreSpec = field(default_factory=FakeScoreSpec)

    def __post_init__(self):
        if self.min_step_percent > self.max_step_percent:
            raise ValueError(f"min_step_percent ({self.min_step_percent}) must not exceed max_step_percent ({self.max_step_percent})")


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
    auxiliary_losses: dict[str, torch.Tensor]  # their sum trains the guidance's own parameters (fake score)
    timesteps: torch.Tensor  # [B] the sampled teacher timesteps


class ScoreDistillation(nn.Module):
    """Holds the teacher, the prompt's embeddings (computed once) and, for VSD, the fake score."""

    def __init__(self, teacher: DiffusionTeacher, spec: GuidanceSpec, prompt: str, negative_prompt: str,
                 guidance_scale: float, views: ViewPromptSpec):
        super().__init__()
        self.teacher, self.spec, self.guidance_scale = teacher, spec, guidance_scale
        self.prompts = PromptEmbeddings(teacher.embed_text, prompt, negative_prompt, views)
        self.fake_score = FakeScore(teacher, spec.fake_score) if spec.estimator in NEEDS_FAKE_SCORE else None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.fake_score.trainable_parameters() if self.fake_score is not None else []

    def trainable_state_dict(self) -> dict:
        return {"fake_score": self.fake_score.trainable_state_dict()} if self.fake_score is not None else {}

    def load_trainable_state_dict(self, state: dict) -> None:
        if self.fake_score is not None:
            self.fake_score.load_trainable_state_dict(state["fake_score"])

    def sample_timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        n = self.teacher.num_train_timesteps
        low, high = int(self.spec.min_step_percent * n), int(self.spec.max_step_percent * n)
        return torch.randint(low, max(high, low + 1), (batch,), generator=generator, device=generator.device)

    def forward(self, views: ViewBatch, generator: torch.Generator) -> GuidanceOutput:
        """generator draws t and eps (on the images' device)."""
        x0 = self.teacher.encode(views.images.permute(0, 3, 1, 2)).float()
        batch = x0.shape[0]
        t = self.sample_timesteps(batch, generator)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        alpha, sigma = self.teacher.alpha_sigma(t)
        sample = NoisedSample(x0, eps, alpha, sigma)
        cond, uncond = self.prompts(views.elevation_deg, views.azimuth_deg)
        camera = views.c2w.flatten(1)

        def teacher_score(x_t: torch.Tensor) -> torch.Tensor:
            return -self.teacher.predict_eps_cfg(x_t, t, cond, uncond, self.guidance_scale) / sigma

        def fake_score(x_t: torch.Tensor) -> torch.Tensor:
            return -self.fake_score.predict_eps(x_t, t, cond, camera) / sigma

        # DreamFusion's and ProlificDreamer's weighting, w(t) = sigma_t^2 on the noise residual: the
        # gradient on x_0 is w(t) (eps_teacher - eps_other). In score units: sigma^2 * sigma / alpha.
        weight = (sigma**3 / alpha).flatten()
        if self.spec.estimator == "sds":
            return GuidanceOutput({"sds": self.spec.weight * sds(sample, teacher_score, weight)}, {}, t)
        loss = vsd(sample, teacher_score, fake_score, weight)
        fake_loss = self.fake_score.denoising_loss(x0, cond, camera, generator)
        return GuidanceOutput({"vsd": self.spec.weight * loss}, {"fake_score": fake_loss}, t)
