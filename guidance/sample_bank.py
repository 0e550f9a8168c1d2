"""Samples of the teacher for each view-dependent prompt: the "real" data of the discriminator.

Drawn with the teacher's own sampler (``DiffusionTeacher.sample``: DDIM, or the second-order DPM-Solver++ on
the same schedule; classifier-free guidance).
``bank_key`` names a bank by everything that changes it, so that a caller may cache banks on disk
(the trainer does, in ``sample_bank.cache_dir``); the teacher's weights enter through a fingerprint,
so a teacher retrained in place samples afresh.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from guidance.teacher import SAMPLERS, DiffusionTeacher


@dataclass
class SampleBankSpec:
    samples_per_view: int = field(default=16, metadata={"range": (1, None)})
    steps: int = field(default=30, metadata={"range": (1, 1000)})
    sampler: str = field(default="ddim", metadata={"choices": tuple(SAMPLERS)})
    guidance_scale: float = field(default=7.5, metadata={"range": (0.0, None)})
    seed: int = 0
    cache_dir: str = "~/.cache/uni-instruct-3d/sample-bank"


def bank_key(teacher: DiffusionTeacher, prompts: list[str], negative_prompt: str, spec: SampleBankSpec) -> str:
    settings = {"teacher": teacher.name, "weights": teacher.fingerprint(), "prompts": prompts, "negative": negative_prompt,
                "n": spec.samples_per_view, "steps": spec.steps, "cfg": spec.guidance_scale, "seed": spec.seed}
    if spec.sampler != "ddim":  # DDIM banks keep the names they were cached under before samplers were a choice
        settings["sampler"] = spec.sampler
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def draw_sample_bank(teacher: DiffusionTeacher, prompts: list[str], negative_prompt: str,
                     spec: SampleBankSpec) -> torch.Tensor:
    """-> [V, N, C, h, w] teacher-space samples, N = ``spec.samples_per_view`` per prompt variant."""
    embeddings = teacher.embed_text(prompts + [negative_prompt])
    generator = torch.Generator(teacher.device).manual_seed(spec.seed)
    n = spec.samples_per_view
    with tqdm(total=len(prompts) * spec.steps, desc="teacher sample bank", dynamic_ncols=True) as progress:
        return torch.stack([
            teacher.sample(embeddings[i : i + 1].expand(n, -1, -1), embeddings[-1:].expand(n, -1, -1), spec.steps,
                           spec.guidance_scale, generator, on_step=lambda: progress.update(1), sampler=spec.sampler)
            for i in range(len(prompts))
        ])
