"""Turns rendered views into distillation losses: noise them, score them with the teacher, estimate."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from guidance.estimators import NoisedSample, sds
from guidance.prompts import PromptEmbeddings, ViewPromptSpec
from guidance.teacher import DiffusionTeacher

ESTIMATORS = ("sds",)


@dataclass
class GuidanceSpec:
    estimator: str = field(default="sds", metadata={"choices": ESTIMATORS})
    min_step_percent: float = field(default=0.02, metadata={"range": (0.0, 1.0)})
    max_step_percent: float = field(default=0.98, metadata={"range": (0.0, 1.0)})
    weight: float = field(default=1.0, metadata={"range": (0.0, None)})

    def __post_init__(self):
        if self.min_step_percent > self.max_step_percent:
            raise ValueError(f"min_step_percent ({self.min_step_percent}) must not exceed max_step_percent ({self.max_step_percent})")


@dataclass
class GuidanceOutput:
    losses: dict[str, torch.Tensor]  # named, already weighted; their sum is the generator's loss
    timesteps: torch.Tensor  # [B] the sampled teacher timesteps


class ScoreDistillation(nn.Module):
    """Holds the teacher and the prompt's embeddings (computed once) and scores batches of views."""

    def __init__(self, teacher: DiffusionTeacher, spec: GuidanceSpec, prompt: str, negative_prompt: str,
                 guidance_scale: float, views: ViewPromptSpec):
        super().__init__()
        self.teacher, self.spec, self.guidance_scale = teacher, spec, guidance_scale
        self.prompts = PromptEmbeddings(teacher.embed_text, prompt, negative_prompt, views)

    def sample_timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        n = self.teacher.num_train_timesteps
        low, high = int(self.spec.min_step_percent * n), int(self.spec.max_step_percent * n)
        return torch.randint(low, max(high, low + 1), (batch,), generator=generator, device=generator.device)

    def forward(self, images: torch.Tensor, elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor,
                generator: torch.Generator) -> GuidanceOutput:
        """images: [B, H, W, 3] renders in [0, 1] seen from cameras at [B] elevations and azimuths (degrees);
        generator draws t and eps (on the images' device)."""
        x0 = self.teacher.encode(images.permute(0, 3, 1, 2)).float()
        batch = x0.shape[0]
        t = self.sample_timesteps(batch, generator)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        alpha, sigma = self.teacher.alpha_sigma(t)
        sample = NoisedSample(x0, eps, alpha, sigma)
        cond, uncond = self.prompts(elevation_deg, azimuth_deg)

        def teacher_score(x_t: torch.Tensor) -> torch.Tensor:
            return -self.teacher.predict_eps_cfg(x_t, t, cond, uncond, self.guidance_scale) / sigma

        # DreamFusion's weighting, w(t) = sigma_t^2 on the noise residual: the gradient on x_0 is
        # w(t) (eps_teacher - eps). In score units that is a weight of sigma^2 * sigma / alpha.
        weight = (sigma**3 / alpha).flatten()
        loss = sds(sample, teacher_score, weight)
        return GuidanceOutput(losses={"sds": self.spec.weight * loss}, timesteps=t)
