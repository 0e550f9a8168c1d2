"""Samples of the teacher for each view-dependent prompt: the "real" data of the discriminator.

Generated once with the teacher's own noise schedule (DDIM, classifier-free guidance) and cached
on disk under a key of the teacher (its name and a fingerprint of its weights), the prompts, the
sampler settings and the seed, so later runs with the same settings load them instead of sampling
again, and a teacher retrained in place samples afresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from tqdm import tqdm

from guidance.teacher import DiffusionTeacher

log = logging.getLogger(__name__)


@dataclass
class SampleBankSpec:
    samples_per_view: int = field(default=16, metadata={"range": (1, None)})
    steps: int = field(default=30, metadata={"range": (1, 1000)})
    guidance_scale: float = field(default=7.5, metadata={"range": (0.0, None)})
    seed: int = 0
    cache_dir: str = "~/.cache/uni-instruct-3d/sample-bank"


def bank_key(teacher: DiffusionTeacher, prompts: list[str], negative_prompt: str, spec: SampleBankSpec) -> str:
    settings = {"teacher": teacher.name, "weights": teacher.fingerprint(), "prompts": prompts, "negative": negative_prompt,
                "n": spec.samples_per_view, "steps": spec.steps, "cfg": spec.guidance_scale, "seed": spec.seed}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def sample_teacher(teacher: DiffusionTeacher, cond: torch.Tensor, uncond: torch.Tensor, spec: SampleBankSpec,
                   generator: torch.Generator, progress: tqdm) -> torch.Tensor:
    """cond, uncond: [n, L, D] -> clean teacher-space samples x_0 [n, C, h, w] (float32)."""
    scheduler = DDIMScheduler.from_config(teacher.scheduler.config, prediction_type="epsilon")  # we pass eps
    scheduler.set_timesteps(spec.steps, device=cond.device)
    config = teacher.unet.config
    x = torch.randn(cond.shape[0], config.in_channels, config.sample_size, config.sample_size,
                    generator=generator, device=generator.device).to(cond.device)
    for t in scheduler.timesteps:
        timesteps = t.expand(cond.shape[0])
        eps = teacher.predict_eps_cfg(x, timesteps, cond, uncond, spec.guidance_scale)
        x = scheduler.step(eps, t, x).prev_sample
        progress.update(1)
    return x.float()


def load_or_sample_bank(teacher: DiffusionTeacher, prompts: list[str], negative_prompt: str,
                        spec: SampleBankSpec) -> torch.Tensor:
    """-> [V, N, C, h, w] teacher-space samples, N per prompt variant, from the cache when present."""
    path = Path(spec.cache_dir).expanduser() / f"{bank_key(teacher, prompts, negative_prompt, spec)}.pt"
    device = teacher.alphas_cumprod.device
    if path.is_file():
        log.info("teacher sample bank: loaded %s", path)
        return torch.load(path, map_location=device, weights_only=True)
    embeddings = teacher.embed_text(prompts + [negative_prompt])
    generator = torch.Generator(device).manual_seed(spec.seed)
    n = spec.samples_per_view
    with tqdm(total=len(prompts) * spec.steps, desc="teacher sample bank", dynamic_ncols=True) as progress:
        bank = torch.stack([
            sample_teacher(teacher, embeddings[i : i + 1].expand(n, -1, -1), embeddings[-1:].expand(n, -1, -1), spec,
                           generator, progress)
            for i in range(len(prompts))
        ])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(bank.cpu(), partial)
    partial.replace(path)
    log.info("teacher sample bank: saved %s", path)
    return bank
