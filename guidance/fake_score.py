"""The fake score: the teacher's U-Net with LoRA adapters, trained to denoise the current renders.

It estimates the student's noisy score ``s_p`` for VSD and the Uni-Instruct family. Optionally it is
camera-conditioned (the flattened camera-to-world matrix enters through the U-Net's class
embedding, zero-initialised so training starts from the teacher) and it may share the teacher's
U-Net: the teacher switches the adapters off whenever it predicts.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.models.embeddings import TimestepEmbedding
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from guidance.teacher import DiffusionTeacher

ADAPTER = "fake_score"
CAMERA_DIM = 16  # a flattened 4 x 4 camera-to-world matrix


@dataclass
class FakeScoreSpec:
    lora_rank: int = field(default=4, metadata={"range": (1, 512)})
    # The U-Net modules that get adapters, by the end of their names (peft's target_modules). Stable
    # Diffusion's attention is at every resolution; a U-Net with attention only at its coarsest
    # (the ShapeWorld teacher's) needs its ResNet convolutions ("conv1", "conv2") adapted too for the
    # fake score to follow the renders at full resolution.
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    lr: float = field(default=1e-4, metadata={"range": (0.0, None)})
    camera_condition: bool = True
    condition_drop: float = field(default=0.1, metadata={"range": (0.0, 1.0)})  # camera dropped this often
    share_unet: bool = False  # one U-Net for teacher and fake score: saves memory
    # Optimiser steps of the fake score (and of the discriminator, which shares its U-Net call) per
    # step of the 3D parameters, each on a fresh t and noise: above 1 it tracks the renders faster
    # without a larger learning rate (DMD2's two time-scale update rule).
    updates_per_step: int = field(default=1, metadata={"range": (1, None)})


@dataclass
class FakePrediction:
    eps: torch.Tensor  # [B, C, h, w] predicted noise (float32)
    bottleneck: torch.Tensor  # [B, C_mid, h', w'] the U-Net's mid-block output, the discriminator's input


class FakeScore(nn.Module):
    def __init__(self, teacher: DiffusionTeacher, spec: FakeScoreSpec):
        super().__init__()
        self.spec, self.teacher = spec, teacher
        self.unet = teacher.unet if spec.share_unet else copy.deepcopy(teacher.unet)
        self.unet.add_adapter(LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_rank, init_lora_weights="gaussian",
                                         target_modules=spec.lora_targets), adapter_name=ADAPTER)
        for parameter in self.lora_parameters():
            parameter.data = parameter.data.float()
        self.camera_embedding = self._zero_camera_embedding() if spec.camera_condition else None

    def _zero_camera_embedding(self) -> TimestepEmbedding:
        time_embed_dim = self.unet.config.block_out_channels[0] * 4
        embedding = TimestepEmbedding(CAMERA_DIM, time_embed_dim).to(self.teacher.device)
        nn.init.zeros_(embedding.linear_2.weight)
        nn.init.zeros_(embedding.linear_2.bias)
        return embedding

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.unet.named_parameters() if f".{ADAPTER}." in name]

    def trainable_parameters(self) -> list[nn.Parameter]:
        camera = list(self.camera_embedding.parameters()) if self.camera_embedding is not None else []
        return self.lora_parameters() + camera

    def trainable_state_dict(self) -> dict:
        state = {"lora": get_peft_model_state_dict(self.unet, adapter_name=ADAPTER)}
        if self.camera_embedding is not None:
            state["camera_embedding"] = self.camera_embedding.state_dict()
        return state

    def load_trainable_state_dict(self, state: dict) -> None:
        set_peft_model_state_dict(self.unet, state["lora"], adapter_name=ADAPTER)
        if self.camera_embedding is not None:
            self.camera_embedding.load_state_dict(state["camera_embedding"])

    @contextmanager
    def _with_camera_embedding(self):
        """The U-Net with the camera embedding as its class embedding; the teacher never sees it, and gets
        its own class embedding (None for Stable Diffusion) back afterwards."""
        own = self.unet.class_embedding
        self.unet.class_embedding = self.camera_embedding
        try:
            yield self.unet
        finally:
            self.unet.class_embedding = own

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor,
                camera: torch.Tensor) -> FakePrediction:
        """x_t: [B, C, h, w], t: [B], text_embeddings: [B, L, D], camera: [B, 16] (zeros: unconditional)."""
        dtype = self.teacher.dtype
        class_labels = camera.float() if self.camera_embedding is not None else None  # the embedding is fp32
        captured = {}
        hook = self.unet.mid_block.register_forward_hook(lambda module, args, output: captured.update(bottleneck=output))
        try:
            with self._with_camera_embedding() as unet:
                output = unet(x_t.to(dtype), t, encoder_hidden_states=text_embeddings.to(dtype), class_labels=class_labels).sample
        finally:
            hook.remove()
        return FakePrediction(self.teacher.output_to_eps(output.float(), x_t, t), captured["bottleneck"].float())

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor,
                    camera: torch.Tensor) -> torch.Tensor:
        return self.predict(x_t, t, text_embeddings, camera).eps
