"""What the trainer trains: a 3D representation.

A representation renders a batch of cameras (differentiably, for the guidance), owns its
parameters and their learning rates, its regularisers, its checkpoint state (its ``state_dict``),
and its outputs: preview images and an exported mesh. The trainer, the run and the comparison know
only this interface. The hash-grid NeRF (``threed.nerf_representation``) is the first
implementation; a mesh stage is another.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import nn

from threed.cameras import CameraBatch
from threed.export import ExportSpec


@dataclass
class RenderedViews:
    """A training render of a camera batch."""

    images: torch.Tensor  # [B, H, W, 3] in [0, 1], differentiable in the representation's parameters
    opacity: torch.Tensor  # [B, H, W] in [0, 1]


class Representation(nn.Module, ABC):
    def prepare_step(self, step: int, generator: torch.Generator) -> None:
        """Upkeep before training step ``step`` renders (an acceleration structure's update, say); none by default."""

    @abstractmethod
    def render(self, cameras: CameraBatch, generator: torch.Generator, shading: str | None = None) -> RenderedViews:
        """A training render; ``generator`` draws what training randomises (sample jitter, backgrounds, the
        shading mode unless ``shading`` fixes it)."""

    @abstractmethod
    def regularizer_losses(self, views: RenderedViews, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Named, weighted regulariser losses of a render from ``render`` at step ``step`` (any random
        points they read drawn by ``generator``)."""

    @abstractmethod
    def parameter_groups(self) -> list[dict]:
        """Adam parameter groups ({"params": [...], "lr": base learning rate}) covering every parameter."""

    @abstractmethod
    def render_images(self, cameras: CameraBatch) -> np.ndarray:
        """Evaluation images (no gradient, the configured solid background): uint8 [B, H, W, 3]."""

    @abstractmethod
    def extract_mesh(self, spec: ExportSpec) -> trimesh.Trimesh:
        """The surface as a mesh, in the scene's frame (z up), with vertex colours."""

    @abstractmethod
    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """The surface colour [N, 3] at points [N, 3] (what export bakes into the mesh's texture)."""

