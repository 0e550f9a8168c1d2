"""View-dependent prompting: the prompt gets a view suffix chosen by the camera's azimuth and elevation.

Thresholds follow threestudio: overhead above ``overhead_threshold_deg`` of elevation; otherwise
front within ``front_threshold_deg`` of azimuth 0, back within ``back_threshold_deg`` of azimuth
180, side in between. Text embeddings of every variant are computed once.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

VIEWS = ("front", "side", "back", "overhead")
ARTICLES = ("a", "an", "the")
VOCABULARY_FILE = "prompt_vocabulary.json"  # beside a closed-vocabulary teacher's model_index.json


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


@dataclass(frozen=True)
class ClosedVocabulary:
    """The prompts of a teacher trained on captions of one form only (the ShapeWorld teacher's "a COLOUR
    SHAPE"): one word of each slot, and nothing else. People write them many ways; ``canonical`` turns
    each into the caption form the teacher was trained on, so that they all reach the same object:
    "an orange torus", "Orange torus", "a torus, orange" and "a  orange torus" all become "a orange torus".
    Case, articles, commas and spaces are ignored and the slots may come in any order; a trailing view
    phrase ("front view") is kept, canonically. Anything else is a ValueError naming the words it knows.
    """

    template: str  # e.g. "a {colour} {shape}"
    slots: dict[str, tuple[str, ...]]  # slot -> its words

    def parse(self, prompt: str) -> tuple[dict[str, str], str | None]:
        """-> (the word of each slot, the view or None)."""
        words = [word for word in re.split(r"[\s,]+", prompt.lower()) if word and word not in ARTICLES]
        view = None
        if len(words) >= 2 and words[-1] == "view" and words[-2] in VIEWS:
            view, words = words[-2], words[:-2]
        filled: dict[str, str] = {}
        for word in words:
            slot = next((name for name, options in self.slots.items() if word in options), None)
            if slot is None or slot in filled:
                break
            filled[slot] = word
        else:
            if filled.keys() == self.slots.keys():
                return filled, view
        known = "; ".join(f"{name}: {', '.join(options)}" for name, options in self.slots.items())
        raise ValueError(f"{prompt!r} is not a prompt this teacher knows: it knows {self.template!r}, one word of "
                         f"each ({known})")

    def canonical(self, prompt: str) -> str:
        filled, view = self.parse(prompt)
        text = self.template.format(**filled)
        return view_prompt(text, view) if view else text

    def save(self, folder: Path) -> None:
        (Path(folder) / VOCABULARY_FILE).write_text(json.dumps({"template": self.template, "slots": self.slots}, indent=1))

    @classmethod
    def load(cls, folder: Path) -> "ClosedVocabulary | None":
        """The vocabulary saved in a teacher's folder; None for an open-vocabulary teacher (no file)."""
        path = Path(folder) / VOCABULARY_FILE
        if not path.is_file():
            return None
        content = json.loads(path.read_text())
        return cls(content["template"], {name: tuple(words) for name, words in content["slots"].items()})


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
