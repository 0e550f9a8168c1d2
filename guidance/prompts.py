"""View-dependent prompting: the prompt gets a view suffix chosen by the camera's azimuth and elevation.

Thresholds follow threestudio: overhead above ``overhead_threshold_deg`` of elevation; otherwise
front within ``front_threshold_deg`` of azimuth 0, back within ``back_threshold_deg`` of azimuth
180, side in between. Text embeddings of every variant are computed once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

VIEWS = ("front", "side", "back", "overhead")


@dataclass
class ViewPromptSpec:
    enabled: bool = True
    front_threshold_deg: float = field(default=45.0, metadata={"range": (0.0, 180.0)})
    back_threshold_deg: float = field(default=45.0, metadata={"range": (0.0, 180.0)})
    overhead_threshold_deg: float = field(default=60.0, metadata={"range": (-90.0, 90.0)})


def view_index(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, spec: ViewPromptSpec) -> torch.Tensor:
    """[B] angles in degrees -> [B] indices into VIEWS."""
    azimuth = torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0  # wrapped to [-180, 180)
    index = torch.full_like(azimuth, VIEWS.index("side"), dtype=torch.long)
    index = torch.where(azimuth.abs() < spec.front_threshold_deg, VIEWS.index("front"), index)
    index = torch.where(azimuth.abs() > 180.0 - spec.back_threshold_deg, VIEWS.index("back"), index)
    return torch.where(elevation_deg > spec.overhead_threshold_deg, VIEWS.index("overhead"), index)


def view_prompt(prompt: str, view: str) -> str:
    return f"{prompt}, {view} view"


class PromptEmbeddings(nn.Module):
    """Conditional embeddings of every view variant of a prompt, and the negative prompt's."""

    def __init__(self, embed_text, prompt: str, negative_prompt: str, spec: ViewPromptSpec):
        """embed_text: list of n strings -> [n, L, D] (the teacher's text encoder)."""
        super().__init__()
        self.spec = spec
        variants = [view_prompt(prompt, view) for view in VIEWS] if spec.enabled else [prompt]
        embeddings = embed_text(variants + [negative_prompt])
        self.register_buffer("conditional", embeddings[:-1], persistent=False)  # [V, L, D]
        self.register_buffer("unconditional", embeddings[-1:], persistent=False)  # [1, L, D]

    def forward(self, elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] camera angles -> (conditional, unconditional) embeddings, each [B, L, D]."""
        batch = elevation_deg.shape[0]
        if not self.spec.enabled:
            return self.conditional.expand(batch, -1, -1), self.unconditional.expand(batch, -1, -1)
        return self.conditional[view_index(elevation_deg, azimuth_deg, self.spec)], self.unconditional.expand(batch, -1, -1)
