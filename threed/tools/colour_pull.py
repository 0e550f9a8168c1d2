"""Which way a run's distillation pulls the object's colour, and how big its object is, at its checkpoints (JSON).

    python -m threed.tools.colour_pull RUN_DIR [--steps 50,100,150] [--views 12] [--seed 1]

For each checkpointed step: the mean colour of the object pixels (a channel below 0.7, as the
teacher's colour error counts them) of training views rendered from that checkpoint, the teacher's
and the fake score's one-step x0-predictions of those views noised at a t of the step's range, and
the mean descent direction of the generator's distillation loss on those pixels (the negated gradient, scaled so its largest channel is 1). A
fake score that trails the renders predicts the colour they had earlier; where it lies beyond the
teacher's prediction, the gradient pushes the renders on, away from the teacher (docs/tuning-history.md).
On a ShapeWorld prompt, also ``coverage``: the renders' object pixels (opacity at least 0.5) over the
true object's from the same cameras, 1 for an object of the right size.
Pixel-space teachers only (ShapeWorld).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from threed.run import Run
from threed.shapeworld.canon import is_canon_prompt, parse_prompt
from threed.shapeworld.render import render_shape_with_mask
from threed.shapeworld.teacher_quality import object_pixels
from threed.trainer import Trainer


def as_images(x: torch.Tensor) -> torch.Tensor:
    """Pixel-space teacher samples [B, 3, h, w] in [-1, 1] -> images [B, h, w, 3] in [0, 1]."""
    return x.permute(0, 2, 3, 1) * 0.5 + 0.5


def colour_pull(trainer: Trainer, step: int, views: int, seed: int) -> dict:
    """The report's entry for the trainer's state at ``step`` (already loaded)."""
    if trainer.guidance.teacher.vae is not None or trainer.guidance.fake_score is None:
        raise ValueError("colour_pull needs a pixel-space teacher and a fake score (a VSD or Uni-Instruct run)")
    generator = torch.Generator(trainer.device).manual_seed(seed)
    sums = {name: torch.zeros(3, device=trainer.device) for name in ("render", "teacher_x0", "fake_x0", "descent")}
    canon = parse_prompt(trainer.config.prompt) if is_canon_prompt(trainer.config.prompt) else None
    object_area, true_area = 0.0, 0.0
    for _ in range(views):
        cameras, rendered, rendered_views = trainer.render_training_views(step, generator, shading="albedo")
        view = dataclasses.replace(rendered_views, images=rendered.images.detach().requires_grad_(True))
        if canon is not None:
            object_area += float((rendered.opacity >= 0.5).sum())
            true_area += float(render_shape_with_mask(*canon, cameras)[1].sum())
        out = trainer.guidance(view, step, generator)
        sum(out.generator_losses.values()).backward(inputs=[view.images])
        seen, teacher_x0, fake_x0 = map(as_images, trainer.guidance.x0_predictions(view, step, generator))
        for name, pixels, reference in (("render", view.images.detach(), view.images), ("descent", -view.images.grad, view.images),
                                        ("teacher_x0", teacher_x0, seen), ("fake_x0", fake_x0, seen)):
            inside = object_pixels(reference.detach())  # [B, H, W]
            sums[name] += pixels[inside].mean(dim=0) if inside.any() else 0.0
    descent = sums.pop("descent")
    entry = {name: [round(float(v) / views, 4) for v in total] for name, total in sums.items()}
    entry["descent_direction"] = [round(float(v), 3) for v in descent / descent.abs().max().clamp_min(1e-30)]
    if canon is not None:
        entry["coverage"] = round(object_area / max(true_area, 1.0), 4)
    return entry


def colour_pull_report(run_dir: str, steps: list[int], views: int, seed: int) -> dict:
    run = Run.open(run_dir)
    trainer = run.trainer(run.load_teacher())
    report = {}
    for step in steps:
        trainer.load_step(step)
        report[str(step)] = colour_pull(trainer, step, views, seed)
    return {"run": str(run_dir), "views": views, "seed": seed, "steps": report}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder with checkpoints of the steps asked for")
    parser.add_argument("--steps", required=True, help="comma-separated checkpointed steps")
    parser.add_argument("--views", type=int, default=12, help="training views rendered per step")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args(argv)
    steps = [int(step) for step in arguments.steps.split(",")]
    print(json.dumps(colour_pull_report(arguments.run_dir, steps, arguments.views, arguments.seed), indent=1))


if __name__ == "__main__":
    main()
