"""Builds a tiny, randomly initialised Stable-Diffusion-shaped pipeline and saves it as a folder.

It has every component Stable Diffusion has (CLIP text encoder and tokenizer, VAE, conditional
U-Net, DDPM scheduler) at a size that runs in milliseconds on a CPU. It exercises the real loading
and training code; being untrained, it teaches nothing recognisable.

    python -m guidance.tiny_teacher assets/tiny-teacher [--prediction-type v_prediction]
"""
from __future__ import annotations

import argparse

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from guidance.offline_tokenizer import build_clip_tokenizer
from guidance.pixel_pipeline import PixelDiffusionPipeline

MAX_TOKENS = 16


def build_tiny_pipeline(prediction_type: str = "epsilon", seed: int = 0,
                        pixel_space: bool = False) -> StableDiffusionPipeline | PixelDiffusionPipeline:
    """Stable Diffusion's components at toy size (latent, 32 x 32 images), or with ``pixel_space`` the
    pixel-space variant (no VAE; the U-Net denoises 32 x 32 RGB images directly)."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(words=[], max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=MAX_TOKENS, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    channels = 3 if pixel_space else 4
    unet = UNet2DConditionModel(
        sample_size=32 if pixel_space else 16, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False, steps_offset=1)
    if pixel_space:
        return PixelDiffusionPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=32,
    )
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="where to save the pipeline")
    parser.add_argument("--prediction-type", default="epsilon", choices=("epsilon", "v_prediction"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixel-space", action="store_true", help="no VAE: denoise 32 x 32 RGB images directly")
    args = parser.parse_args()
    build_tiny_pipeline(args.prediction_type, args.seed, args.pixel_space).save_pretrained(args.folder)
    print(f"saved a tiny random teacher to {args.folder}")


if __name__ == "__main__":
    main()
