"""A frozen text-to-image diffusion teacher loaded with diffusers' ``from_pretrained``.

The same code loads Stable Diffusion (a hub id such as ``stabilityai/stable-diffusion-2-1-base``
or a local folder, latent space through its VAE) and pixel-space teachers such as the project's
own (no VAE: renders are only resized). epsilon- and v-prediction U-Nets are both supported.
``DiffusionTeacher`` is the one owner of the teacher's tokenising, classifier-free guidance and
sampling: the guidance, the sample bank, the pixel pipeline and the teacher-quality tools use it.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler,
                       UNet2DConditionModel)
from diffusers.schedulers import SchedulerMixin
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from guidance.prompts import ClosedVocabulary
from guidance.schedules import Ramp


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The samplers ``DiffusionTeacher.sample`` draws with, built from the teacher's own scheduler config.
SAMPLERS: dict[str, type[SchedulerMixin]] = {"ddim": DDIMScheduler, "dpm-solver++": DPMSolverMultistepScheduler}


def encode_text(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """prompts: n strings -> token embeddings [n, max_length, D], padded to the tokenizer's
    ``model_max_length``; differentiable in the text encoder (the teacher's training uses it so)."""
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


def why_not_loaded(name: str, error: OSError) -> str:
    """One line on why ``from_pretrained`` failed for ``name`` and what to do."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if os.path.isdir(name):
        return f"the folder is not a complete diffusers pipeline ({detail}); point teacher.pretrained at one"
    if os.path.exists(name):
        return "it is a file, not a pipeline folder; point teacher.pretrained at a diffusers pipeline folder"
    if os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") != 1:
        return "no such folder; set teacher.pretrained to a diffusers pipeline folder or a Hugging Face hub id"
    return (f"as a Hugging Face hub id it is neither in the local cache nor reachable ({detail}); download it where "
            f"there is network access (huggingface-cli download {name}) or set teacher.pretrained to a local folder")


class TeacherNotFoundError(RuntimeError):
    """The teacher named in the config is neither a loadable folder nor an available hub model."""


@dataclass
class TeacherSpec:
    pretrained: str = "stabilityai/stable-diffusion-2-1-base"
    # Classifier-free guidance of the teacher's score in distillation: a number, or a ramp over the
    # training steps ({start, end, start_step, end_step}).
    guidance_scale: Ramp = field(default_factory=lambda: Ramp(100.0), metadata={"range": (0.0, None)})
    negative_prompt: str = ""
    # The networks' precision on CUDA (the CPU uses fp32). bf16 needs no loss scaling for the estimators
    # that backpropagate through the U-Nets; with fp16 the trainer scales their loss (torch.amp.GradScaler).
    precision: str = field(default="bf16", metadata={"choices": tuple(PRECISIONS)})
    # The U-Nets' precision in distillation on the CPU: fp32, or bf16 autocast (fp32 weights, bf16 matrix
    # products); auto: bf16 where the CPU has AMX units, fp32 elsewhere. The sample bank is drawn in fp32.
    cpu_precision: str = field(default="auto", metadata={"choices": ("auto", "fp32", "bf16")})


class DiffusionTeacher(nn.Module):
    """Frozen U-Net, text encoder and (for latent teachers) VAE, with the noise schedule they were trained on."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: SchedulerMixin, vae: AutoencoderKL | None, name: str = "",
                 vocabulary: ClosedVocabulary | None = None):
        super().__init__()
        self.name = name  # the hub id or folder it was loaded from
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.tokenizer, self.scheduler, self.vocabulary = tokenizer, scheduler, vocabulary
        self.requires_grad_(False).eval()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    @classmethod
    def from_pretrained(cls, spec: TeacherSpec, device: torch.device) -> "DiffusionTeacher":
        name = spec.pretrained
        transformers_logging.disable_progress_bar()
        try:
            components = DiffusionPipeline.load_config(name)
            load = dict(pretrained_model_name_or_path=name)
            teacher = cls(
                unet=UNet2DConditionModel.from_pretrained(**load, subfolder="unet"),
                text_encoder=CLIPTextModel.from_pretrained(**load, subfolder="text_encoder"),
                tokenizer=CLIPTokenizer.from_pretrained(**load, subfolder="tokenizer"),
                scheduler=DDPMScheduler.from_pretrained(**load, subfolder="scheduler"),
                vae=AutoencoderKL.from_pretrained(**load, subfolder="vae") if components.get("vae", [None])[0] else None,
                name=os.path.abspath(name) if os.path.isdir(name) else name,
                vocabulary=ClosedVocabulary.load(Path(name)) if os.path.isdir(name) else None,
            )
        except OSError as error:
            raise TeacherNotFoundError(f"cannot load teacher {name!r}: {why_not_loaded(name, error)}") from None
        teacher.to(device).cast_networks(PRECISIONS[spec.precision] if device.type == "cuda" else torch.float32)
        if device.type == "cpu":
            teacher.unet.to(memory_format=torch.channels_last)
        return teacher

    def cast_networks(self, dtype: torch.dtype) -> "DiffusionTeacher":
        """The U-Net, text encoder and VAE in ``dtype``; the noise schedule stays float32 whatever it is
        (in fp16 alpha_bar's rounding moves sigma by 7% at t = 1)."""
        for network in (self.unet, self.text_encoder, self.vae):
            if network is not None and network.dtype != dtype:
                network.to(dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @torch.no_grad()
    def fingerprint(self) -> str:
        """A hash of the bytes of the U-Net's and text encoder's weights (not of LoRA adapters a fake score
        may have added to a shared U-Net: peft's ``lora_*`` tensors), and of the tokenizer's vocabulary and
        the noise schedule's config: changes whenever what the teacher computes does, so caches of its
        samples keyed by it go stale with retrained weights saved under the same name."""
        digest = hashlib.sha256()
        for network in (self.unet, self.text_encoder):
            for key, tensor in network.state_dict().items():
                if "lora_" not in key:
                    digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
        digest.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
        digest.update(json.dumps(dict(self.scheduler.config), sort_keys=True, default=str).encode())
        return digest.hexdigest()[:24]

    def canonical_prompt(self, prompt: str) -> str:
        """The prompt as this teacher's captions write it: unchanged for an open-vocabulary teacher; for a
        closed-vocabulary one (``ClosedVocabulary``, saved beside its model_index.json), its canonical form,
        or a ValueError that says which prompts it knows."""
        return self.vocabulary.canonical(prompt) if self.vocabulary is not None else prompt

    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    @property
    def image_size(self) -> int:
        """Side of the images the teacher was trained on, in pixels."""
        sample_size = self.unet.config.sample_size
        return sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae else sample_size

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """prompts: n strings -> token embeddings [n, max_length, cross_attention_dim]."""
        return encode_text(self.tokenizer, self.text_encoder, prompts)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1] -> clean teacher-space samples x_0 [B, C, h, w] (differentiable)."""
        images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        images = (2.0 * images - 1.0).to(self.dtype)
        if self.vae is None:
            return images
        return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t: [B] integer timesteps -> (alpha_t, sigma_t), each [B, 1, 1, 1], of x_t = alpha_t x_0 + sigma_t eps."""
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """x_t: [B, C, h, w], t: [B], text_embeddings: [B, L, D] -> predicted noise [B, C, h, w] (float32)."""
        with self._adapters_off():
            output = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=text_embeddings.to(self.dtype)).sample
        return self.output_to_eps(output.float(), x_t, t)

    @contextmanager
    def _adapters_off(self):
        """The teacher predicts with the frozen weights alone, also when a fake score's LoRA shares its U-Net."""
        has_adapters = getattr(self.unet, "_hf_peft_config_loaded", False)
        if has_adapters:
            self.unet.disable_adapters()
        try:
            yield
        finally:
            if has_adapters:
                self.unet.enable_adapters()

    def output_to_eps(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The U-Net's raw output (of this teacher's prediction type) as a noise prediction."""
        if self.scheduler.config.prediction_type == "epsilon":
            return output
        if self.scheduler.config.prediction_type == "v_prediction":
            alpha, sigma = self.alpha_sigma(t)
            return sigma * x_t.float() + alpha * output
        raise ValueError(f"unsupported prediction type {self.scheduler.config.prediction_type!r}; use epsilon or v_prediction")

    def predict_eps_cfg(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                        guidance_scale: float) -> torch.Tensor:
        """Classifier-free guided noise prediction; cond and uncond: [B, L, D]. One batched U-Net call."""
        eps = self.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, uncond: torch.Tensor, steps: int, guidance_scale: float,
               generator: torch.Generator, on_step: Callable[[], None] = lambda: None,
               sampler: str = "ddim") -> torch.Tensor:
        """cond, uncond: [n, L, D] -> clean teacher-space samples x_0 [n, C, h, w] (float32), by ``sampler``
        (``SAMPLERS``: DDIM, or the second-order multistep DPM-Solver++) with ``steps`` steps on the teacher's
        noise schedule (and its sampler's timestep spacing and clipping), classifier-free guided at
        ``guidance_scale``. ``generator`` draws the initial noise on its device; ``on_step`` is called after
        every step (progress bars)."""
        scheduler = SAMPLERS[sampler].from_config(self.scheduler.config, prediction_type="epsilon")  # we pass eps
        scheduler.set_timesteps(steps, device=cond.device)
        config = self.unet.config
        x = torch.randn(cond.shape[0], config.in_channels, config.sample_size, config.sample_size,
                        generator=generator, device=generator.device).to(cond.device)
        for t in scheduler.timesteps:
            eps = self.predict_eps_cfg(x, t.expand(cond.shape[0]), cond, uncond, guidance_scale)
            x = scheduler.step(eps, t, x).prev_sample
            on_step()
        return x.float()

    def sample_images(self, prompts: list[str], negative_prompt: str, steps: int, guidance_scale: float,
                      generator: torch.Generator) -> torch.Tensor:
        """One sample per prompt as images [n, 3, H, W] in [0, 1] (pixel-space teachers: no VAE decoding here)."""
        if self.vae is not None:
            raise ValueError("sample_images draws pixel-space teachers' images; this teacher is a latent one")
        cond = self.embed_text(prompts)
        uncond = self.embed_text([negative_prompt]).expand_as(cond)
        return (self.sample(cond, uncond, steps, guidance_scale, generator) / 2 + 0.5).clamp(0, 1)
