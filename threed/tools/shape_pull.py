"""Does the teacher ask for the true shape? At a ShapeWorld run's checkpoints, on the pixels where the run's
renders and the prompt's true object disagree, how far the teacher's guided x0-prediction moves toward the
truth, per band of t (JSON).

    python -m threed.tools.shape_pull RUN_DIR --steps 300 [--views 16] [--bands 4] [--draws 4] [--seed 0]

For each checkpointed step: ``--views`` cameras of the run's own distribution, the run's render from each (its
training shading) and the true object's (the canon's render). The pixels fall in three kinds: ``extra``, object
in the render (opacity at least 0.5) but background in the truth (a torus's lid over its hole, a bell's
shoulders where a cone narrows); ``missing``, the other way round; ``agree``, object in both. For each band
of t (a t drawn within the band per view), the teacher's guided x0-prediction f of the noised render (as a
training step sees it, averaged over ``--draws`` noise draws), and on each kind of pixel:

- ``closed``: the fraction of the colour gap to the truth that f closes, 1 - mean|f - truth| / mean|render -
  truth| (L2 over RGB per pixel): 1 where f is the truth, 0 where it keeps the render, negative if further off;
- ``toward``: the fraction of those pixels where f lies nearer the truth than the render does;
- ``pixels``: how many there are (over all views).

A teacher that asks for the right shape closes much of the extra and missing gaps at large t. On ``agree``
pixels the truth is shaded and an unshaded render is not, so there ``closed`` mixes shape with shading.
Pixel-space teachers only (ShapeWorld).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from guidance.distillation import ViewBatch
from guidance.ratio_diagnostics import band_edges
from threed.cameras import sample_cameras
from threed.errors import UserError
from threed.run import Run
from threed.shapeworld.canon import is_canon_prompt, parse_prompt
from threed.shapeworld.render import render_shape_with_mask
from threed.tools.colour_pull import as_images
from threed.trainer import Trainer


def pixel_kinds(opacity: torch.Tensor, true_silhouette: torch.Tensor) -> dict[str, torch.Tensor]:
    """Render opacity [B, H, W] and the truth's silhouette [B, H, W] (bool) -> masks [B, H, W] of each kind."""
    in_render = opacity >= 0.5
    return {"extra": in_render & ~true_silhouette, "missing": ~in_render & true_silhouette,
            "agree": in_render & true_silhouette}


def gap_closed(render: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> dict:
    """Images [B, H, W, 3] and a mask [B, H, W]: how much nearer the truth the prediction lies than the render, there."""
    render_gap = (render - truth).norm(dim=-1)[mask]
    prediction_gap = (prediction - truth).norm(dim=-1)[mask]
    if render_gap.numel() == 0:
        return {"pixels": 0}
    closed = 1.0 - prediction_gap.mean() / render_gap.mean().clamp_min(1e-8)
    return {"pixels": render_gap.numel(), "closed": round(float(closed), 4),
            "toward": round(float((prediction_gap < render_gap).double().mean()), 4)}


@torch.no_grad()
def shape_pull(trainer: Trainer, step: int, views: int, bands: int, draws: int, seed: int) -> dict:
    """The report's entry for the trainer's state at ``step`` (already loaded): per band of t, per kind of pixel."""
    teacher = trainer.guidance.teacher
    if teacher.vae is not None:
        raise UserError("shape_pull compares pixels: it needs a pixel-space teacher (ShapeWorld), not a latent one")
    generator = torch.Generator(trainer.device).manual_seed(seed)
    spec = dataclasses.replace(trainer.config.camera, batch_size=views, height=teacher.image_size,
                               width=teacher.image_size, resolution_schedule=[])
    cameras = sample_cameras(spec, generator, step)
    rendered = trainer.representation.render(cameras, generator)
    truth, silhouette = render_shape_with_mask(*parse_prompt(trainer.config.prompt), cameras)
    kinds = pixel_kinds(rendered.opacity, silhouette)
    batch = ViewBatch(rendered.images, cameras.elevation_deg, cameras.azimuth_deg, cameras.c2w)
    n = teacher.num_train_timesteps
    entry = {}
    for low, high in band_edges(n, bands):
        t = torch.randint(low, high, (views,), generator=generator, device=generator.device)
        prediction = sum(as_images(trainer.guidance.x0_predictions(batch, step, generator, t)[1])
                         for _ in range(draws)) / draws
        entry[f"{low}-{high - 1}"] = {kind: gap_closed(rendered.images, prediction, truth, mask)
                                      for kind, mask in kinds.items()}
    return entry


def shape_pull_report(run_dir: str, steps: list[int], views: int, bands: int, draws: int, seed: int) -> dict:
    run = Run.open(run_dir)
    if not is_canon_prompt(run.config.prompt):
        raise UserError(f"{run.config.prompt!r} is not a ShapeWorld prompt: the pull is measured against the true object")
    trainer = run.trainer(run.load_teacher())
    report = {}
    for step in steps:
        trainer.load_step(step)
        report[str(step)] = shape_pull(trainer, step, views, bands, draws, seed)
    return {"run": str(run_dir), "prompt": run.config.prompt, "views": views, "draws": draws, "seed": seed,
            "steps": report}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a ShapeWorld run folder with checkpoints of the steps asked for")
    parser.add_argument("--steps", required=True, help="comma-separated checkpointed steps")
    parser.add_argument("--views", type=int, default=16, help="cameras of the run's distribution")
    parser.add_argument("--bands", type=int, default=4, help="equal bands of t")
    parser.add_argument("--draws", type=int, default=4, help="noise draws averaged per x0-prediction")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    steps = [int(step) for step in arguments.steps.split(",")]
    try:
        report = shape_pull_report(arguments.run_dir, steps, arguments.views, arguments.bands, arguments.draws,
                                   arguments.seed)
    except UserError as error:
        parser.exit(2, f"error: {error}\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
