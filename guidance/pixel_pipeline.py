"""A text-to-image pipeline in pixel space (no VAE): a conditional U-Net, a CLIP text encoder and
tokenizer, and a scheduler. Small teachers such as the project's ShapeWorld teacher are saved as
this pipeline, so ``from_pretrained`` loads them as it loads Stable Diffusion; it samples through
``DiffusionTeacher`` (classifier-free guided DDIM), the same sampler as the rest of the project.
"""
from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin
from transformers import CLIPTextModel, CLIPTokenizer

from guidance.teacher import DiffusionTeacher


class PixelDiffusionPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def as_teacher(self) -> DiffusionTeacher:
        """This pipeline's models as a (frozen) teacher on the pipeline's device."""
        return DiffusionTeacher(self.unet, self.text_encoder, self.tokenizer, self.scheduler, vae=None).to(self.device)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str = "", num_inference_steps: int = 30,
                 guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                 output_type: str = "pil") -> ImagePipelineOutput:
        """Samples one image per prompt; output_type "pil", "np" ([n, H, W, 3] in [0, 1]) or "pt" ([n, 3, H, W]).
        The shipped ShapeWorld teacher samples best at guidance 1 (the conditional model alone); above
        about 2.5 its samples turn to saturated noise."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        generator = generator if generator is not None else torch.Generator()
        image = self.as_teacher().sample_images(prompts, negative_prompt, num_inference_steps, guidance_scale, generator)
        if output_type == "pt":
            return ImagePipelineOutput(images=image)
        array = image.permute(0, 2, 3, 1).cpu().numpy()
        return ImagePipelineOutput(images=array if output_type == "np" else self.numpy_to_pil(array))
