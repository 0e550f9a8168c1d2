"""Evaluators: ground-truth scores for the prompts of a world whose true objects are known.

The product core never imports a world. A world (``threed.shapeworld``) registers a finder, a
function from a prompt to its ``Evaluator`` or None, and runs, the comparison and the demo ask
``evaluator_for(prompt)``: a second world is a second ``register`` call, not a branch in each of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import trimesh


@dataclass(frozen=True)
class Evaluator:
    name: str  # the run's scores are written to mesh/<name>_score.json
    # A mesh -> its numbers: "chamfer", "iou", "color_error", ... A run's score file adds the numbers of the
    # initial representation's mesh ("initial") and the shape gain, 1 - chamfer / initial chamfer.
    score: Callable[[trimesh.Trimesh], dict]
    example_prompts: tuple[str, ...] = ()  # prompts of the same world, for the demo's examples

    def summary(self, score: dict) -> str:
        """The score's numbers in one line, e.g. 'chamfer 0.0166, iou 0.853, color_error 0.0432'."""
        return ", ".join(f"{key} {value:.4g}" for key, value in score.items()
                         if isinstance(value, float))


Finder = Callable[[str], Evaluator | None]
_finders: dict[str, Finder] = {}


def register(world: str, finder: Finder) -> None:
    """Makes ``finder`` answer ``evaluator_for``; registering the same world again replaces its finder."""
    _finders[world] = finder


def registered() -> dict[str, Finder]:
    """The registered worlds' finders (for processes that must register them too, such as Ray workers)."""
    return dict(_finders)


def evaluator_for(prompt: str) -> Evaluator | None:
    """The evaluator of the first registered world that knows ``prompt``; None where none does."""
    for finder in _finders.values():
        evaluator = finder(prompt)
        if evaluator is not None:
            return evaluator
    return None
