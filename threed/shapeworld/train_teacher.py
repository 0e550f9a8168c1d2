"""Trains the ShapeWorld teacher: a small text-conditioned pixel-space diffusion model saved as a
standard diffusers pipeline folder (``PixelDiffusionPipeline``), which ``teacher.pretrained``
loads like Stable Diffusion.

    python -m threed.shapeworld.train_teacher assets/shapeworld-teacher --steps 20000 [--data data.npz] [--resume]
    python -m threed.shapeworld.train_teacher runs/longer --init assets/shapeworld-teacher --steps 6000 --lr 3e-4  # train on

Recipe (after the calibration notes in shapeworld.md): v-prediction on a cosine noise schedule,
AdamW with a warmed-up cosine learning rate, an EMA of the weights (what is saved), 10% caption
dropout for classifier-free guidance, optional bf16 autocast (only faster on CPUs with AMX). The
text encoder is a small CLIP trained with the U-Net; the tokenizer loads offline (see
guidance.offline_tokenizer: "torus" comes out as four tokens).
"""
from __future__ import annotations

import argparse
import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from guidance.offline_tokenizer import build_clip_tokenizer
from guidance.pixel_pipeline import PixelDiffusionPipeline
from guidance.prompts import VIEWS
from guidance.teacher import encode_text
from threed.device import default_device
from threed.files import save_torch
from threed.shapeworld.canon import COLOURS, IMAGE_SIZE, SHAPES, VOCABULARY
from threed.shapeworld.render import generate_dataset

log = logging.getLogger(__name__)
MAX_TOKENS = 12  # "<bos> a orange cylinder , overhead view <eos>" is 8


@dataclass(frozen=True)
class Architecture:
    block_out_channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]  # cross-attention per resolution level
    text_dim: int
    text_layers: int


ARCHITECTURES = {
    # 4.5 M parameters; about 1.3 s per batch of 32 on 2 CPU cores (shapeworld.md).
    "small": Architecture((24, 48, 96, 128), (False, False, False, True), text_dim=64, text_layers=2),
    "test": Architecture((8, 16), (False, True), text_dim=16, text_layers=1),
}


def build_models(architecture: Architecture, seed: int):
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(["a", *COLOURS, *SHAPES, *VIEWS, "view"], max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=architecture.text_dim, intermediate_size=4 * architecture.text_dim,
        num_attention_heads=4, num_hidden_layers=architecture.text_layers, max_position_embeddings=MAX_TOKENS,
        projection_dim=architecture.text_dim, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    # Unit-variance word embeddings (CLIP's default is 0.02): every word starts as a distinct feature.
    # At 0.02 the colour words, whose pixels dominate the loss, drifted apart while the shape words
    # stayed within 10% of each other and the U-Net never learned to read them.
    text_encoder.get_input_embeddings().weight.data.normal_(0.0, 1.0)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in architecture.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(architecture.attention_levels))
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=architecture.block_out_channels, down_block_types=down, up_block_types=up,
        cross_attention_dim=architecture.text_dim, attention_head_dim=8, norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="v_prediction", clip_sample=False)
    return tokenizer, text_encoder, unet, scheduler


def sampling_scheduler(training_scheduler: DDPMScheduler) -> DDIMScheduler:
    """The pipeline's sampler: DDIM on the training noise schedule, trailing timesteps (the first step
    starts from pure noise) and the predicted clean image clipped to the data range [-1, 1], which keeps
    the white background white."""
    return DDIMScheduler.from_config(training_scheduler.config, clip_sample=True, timestep_spacing="trailing")


def load_data(path: Path | None, per_prompt: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """-> images [N, 3, 64, 64] in [-1, 1] and their captions."""
    data = dict(np.load(path)) if path is not None else generate_dataset(per_prompt, seed, show_progress=True)
    images = torch.from_numpy(np.asarray(data["images"])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, [str(c) for c in data["captions"]]


class TeacherTrainer:
    """Trains on ``device``; the random draws (batches, timesteps, noise, caption dropout) come from one CPU
    generator, so a run is the same sequence of batches on any device."""

    def __init__(self, out: Path, architecture: Architecture, steps: int, batch: int, lr: float, seed: int,
                 bf16: bool, warmup: int = 200, device: torch.device = torch.device("cpu")):
        self.out, self.steps, self.batch, self.bf16, self.device = out, steps, batch, bf16, torch.device(device)
        self.tokenizer, self.text_encoder, self.unet, self.scheduler = build_models(architecture, seed)
        self.text_encoder.to(self.device)
        self.unet.to(self.device)
        parameters = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2)
        self.lr_schedule = get_cosine_schedule_with_warmup(self.optimizer, min(warmup, steps // 10), steps)
        self.ema = EMAModel(parameters, decay=0.999, use_ema_warmup=True)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0

    def initialise_from(self, pipeline_folder: Path) -> None:
        """Starts from a saved teacher's weights (its EMA), with this run's fresh optimiser, learning-rate
        schedule and EMA: training a shipped teacher further. The architecture must be the same."""
        pipeline = PixelDiffusionPipeline.from_pretrained(pipeline_folder)
        if pipeline.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"{pipeline_folder} has another vocabulary than this script's tokenizer; train it from scratch")
        for name, model in (("unet", self.unet), ("text_encoder", self.text_encoder)):
            try:
                model.load_state_dict(getattr(pipeline, name).state_dict())
            except RuntimeError as error:
                raise ValueError(f"{pipeline_folder}'s {name} is not the --architecture given ({error})") from None
        parameters = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.ema = EMAModel(parameters, decay=self.ema.decay, use_ema_warmup=True)
        log.info("initialised from %s", pipeline_folder)

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {"step": self.step, "unet": self.unet.state_dict(), "text_encoder": self.text_encoder.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                "ema": self.ema.state_dict(), "generator": self.generator.get_state()}

    def resume(self) -> None:
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        self.step = state["step"]
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.ema.load_state_dict(state["ema"])
        self.generator.set_state(state["generator"].cpu())
        log.info("resumed at step %d", self.step)

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """n captions -> the text encoder's token features [n, MAX_TOKENS, cross_attention_dim]."""
        return encode_text(self.tokenizer, self.text_encoder, captions)

    def loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """v-prediction loss on a batch; a tenth of the captions are dropped for classifier-free guidance."""
        drop = torch.rand(len(captions), generator=self.generator) < 0.1
        captions = ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist())]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(images),), generator=self.generator)
        noise = torch.randn(images.shape, generator=self.generator)
        images, noise, t = images.to(self.device), noise.to(self.device), t.to(self.device)
        noisy = self.scheduler.add_noise(images, noise, t)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            prediction = self.unet(noisy, t, encoder_hidden_states=self.encode_captions(captions)).sample
        return F.mse_loss(prediction.float(), self.scheduler.get_velocity(images, noise, t))

    def train_step(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """One optimiser, learning-rate and EMA step on a batch; returns its (finite) loss."""
        loss = self.loss(images, captions)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher loss is {loss.item()} at step {self.step}; resume from {self.checkpoint}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.step(list(self.unet.parameters()) + list(self.text_encoder.parameters()))
        self.step += 1
        return loss

    def fit(self, images: torch.Tensor, captions: list[str], checkpoint_every: int) -> None:
        with tqdm(total=self.steps, initial=self.step, desc="teacher", dynamic_ncols=True) as progress:
            while self.step < self.steps:
                pick = torch.randint(0, len(images), (self.batch,), generator=self.generator)
                loss = self.train_step(images[pick], [captions[i] for i in pick.tolist()])
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
                if self.step % checkpoint_every == 0:
                    self.save()

    def save(self) -> None:
        """The resumable checkpoint, and the EMA weights as the pipeline folder ``pipeline/`` with the
        sampler of ``sampling_scheduler``."""
        save_torch(self.state_dict(), self.checkpoint)
        unet, text_encoder = copy.deepcopy(self.unet), copy.deepcopy(self.text_encoder)
        self.ema.copy_to(list(unet.parameters()) + list(text_encoder.parameters()))
        pipeline = PixelDiffusionPipeline(unet=unet, text_encoder=text_encoder, tokenizer=self.tokenizer,
                                          scheduler=sampling_scheduler(self.scheduler))
        pipeline.save_pretrained(self.out / "pipeline")
        VOCABULARY.save(self.out / "pipeline")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="run folder: checkpoint.pt and the pipeline/ folder")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=200, help="learning-rate warmup steps")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="small")
    parser.add_argument("--data", type=Path, help="an npz from `python -m threed.shapeworld generate` (default: render now)")
    parser.add_argument("--per-prompt", type=int, default=160, help="images per prompt when rendering now")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on GPUs and on CPUs with AMX)")
    parser.add_argument("--device", type=torch.device, default=default_device(), help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--init", type=Path, help="start from this saved teacher pipeline's weights (fresh optimiser)")
    args = parser.parse_args(argv)
    if args.init and args.resume:
        parser.error("--init starts a new run from a saved teacher, --resume continues OUT's run: give one")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = TeacherTrainer(args.out, ARCHITECTURES[args.architecture], args.steps, args.batch, args.lr, args.seed,
                             args.bf16, args.warmup, args.device)
    if args.resume:
        trainer.resume()
    elif args.init:
        trainer.initialise_from(args.init)
    images, captions = load_data(args.data, args.per_prompt, args.seed)
    trainer.fit(images, captions, args.checkpoint_every)
    trainer.save()  # also re-exports the pipeline of a finished run resumed with the same --steps
    log.info("teacher pipeline: %s", args.out / "pipeline")


if __name__ == "__main__":
    main()
