"""A text-to-image pipeline in pixel space (no VAE): a conditional U-Net, a CLIP text encoder and
tokenizer, and a scheduler. Small teachers such as the project's ShapeWorld teacher are saved as
this pipeline, so ``from_pretrained`` loads them as it loads Stable Diffusion, and it samples with
classifier-free guidance like Stable Diffusion's pipeline does.
"""
from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin
from transformers import CLIPTextModel, CLIPTokenizer


class PixelDiffusionPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """n prompts -> [n, max_length, D]."""
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str = "", num_inference_steps: int = 30,
                 guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                 output_type: str = "pil") -> ImagePipelineOutput:
        """Samples one image per prompt; output_type "pil", "np" ([n, H, W, 3] in [0, 1]) or "pt" ([n, 3, H, W]).
        The shipped ShapeWorld teacher samples best at guidance 1 (the conditional model alone); above
        about 2.5 its samples turn to saturated noise."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        cond = self.encode_prompt(prompts)
        uncond = self.encode_prompt([negative_prompt]).expand_as(cond)
        size = self.unet.config.sample_size
        image = torch.randn(len(prompts), self.unet.config.in_channels, size, size, generator=generator,
                            device=generator.device if generator is not None else "cpu").to(self.device, self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            output = self.unet(torch.cat([image, image]), t, encoder_hidden_states=torch.cat([cond, uncond])).sample
            output_cond, output_uncond = output.chunk(2)
            guided = output_uncond + guidance_scale * (output_cond - output_uncond)
            image = self.scheduler.step(guided, t, image).prev_sample
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return ImagePipelineOutput(images=image)
        array = image.permute(0, 2, 3, 1).cpu().numpy()
        return ImagePipelineOutput(images=array if output_type == "np" else self.numpy_to_pil(array))
