"""Which way a run's distillation pulls the object's colour, and how big its object is, at its checkpoints (JSON).

    python -m threed.colour_pull RUN_DIR [--steps 50,100,150] [--views 12] [--seed 1]

For each checkpointed step: the mean colour of the object pixels (a channel below 0.7, as the
teacher's colour error counts them) of training views rendered from that checkpoint, the teacher's
and the fake score's one-step x0-predictions of those views noised at a t of the step's range, and
the mean descent direction of the generator's distillation loss on those pixels (the negated gradient, scaled so its largest channel is 1). A
fake score that trails the renders predicts the colour they had earlier; where it lies beyond the
teacher's prediction, the gradient pushes the renders on, away from the teacher (BENCHMARKS.md).
On a ShapeWorld prompt, also ``coverage``: the renders' object pixels (opacity at least 0.5) over the
true object's from the same cameras, 1 for an object of the right size.
Pixel-space teachers only (ShapeWorld).
"""
from __future__ import annotations

import argparse
import json

import torch

from guidance.distillation import ViewBatch
from guidance.teacher import DiffusionTeacher
from nerf.renderer import render_rays
from threed.cameras import CameraBatch, sample_cameras
from threed.checkpoint import checkpoint_path, load_checkpoint
from threed.config import load_config
from threed.runs import existing_run
from threed.shapeworld import is_canon_prompt, parse_prompt, render_shape_with_mask
from threed.teacher_quality import object_pixels
from threed.trainer import Trainer


def _view(trainer: Trainer, step: int, generator: torch.Generator) -> tuple[ViewBatch, torch.Tensor, CameraBatch]:
    """Training views rendered at ``step``: the batch (images needing a gradient), their opacity
    [B, H, W] and their cameras."""
    cameras = sample_cameras(trainer.config.camera, generator, step)
    rays = cameras.rays()
    background = trainer.background(rays.directions, len(cameras), generator)
    render = render_rays(trainer.field, rays, trainer.render_spec, generator, trainer.field.occupancy, None, background)
    render = render.as_images(len(cameras), cameras.height, cameras.width)
    images = render.rgb.detach().requires_grad_(True)
    return ViewBatch(images, cameras.elevation_deg, cameras.azimuth_deg, cameras.c2w), render.opacity[..., 0].detach(), cameras


def _x0_predictions(trainer: Trainer, views: ViewBatch, step: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The renders as the teacher sees them, and the teacher's (guided, at the run's scale) and the fake
    score's x0-predictions: each [B, h, w, 3] in [0, 1], at the teacher's resolution."""
    guidance, teacher = trainer.guidance, trainer.guidance.teacher
    x0 = teacher.encode(views.images.detach().permute(0, 3, 1, 2)).float()
    t = guidance.sample_timesteps(x0.shape[0], step, generator)
    alpha, sigma = teacher.alpha_sigma(t)
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, device=x0.device)
    cond, uncond = guidance.prompts(views.elevation_deg, views.azimuth_deg)
    teacher_eps = teacher.predict_eps_cfg(x_t, t, cond, uncond, trainer.config.teacher.guidance_scale.at(step))
    fake_eps = guidance.fake_score.predict(x_t, t, cond, views.c2w.flatten(1)).eps
    predictions = [(x_t - sigma * eps) / alpha for eps in (teacher_eps, fake_eps)]
    return tuple(x.permute(0, 2, 3, 1) * 0.5 + 0.5 for x in (x0, *predictions))


def colour_pull(trainer: Trainer, step: int, views: int, seed: int) -> dict:
    """The report's entry for the trainer's state at ``step`` (already loaded)."""
    if trainer.guidance.teacher.vae is not None or trainer.guidance.fake_score is None:
        raise ValueError("colour_pull needs a pixel-space teacher and a fake score (a VSD or Uni-Instruct run)")
    generator = torch.Generator(trainer.device).manual_seed(seed)
    sums = {name: torch.zeros(3, device=trainer.device) for name in ("render", "teacher_x0", "fake_x0", "descent")}
    canon = parse_prompt(trainer.config.prompt) if is_canon_prompt(trainer.config.prompt) else None
    object_area, true_area = 0.0, 0.0
    for _ in range(views):
        view, opacity, cameras = _view(trainer, step, generator)
        if canon is not None:
            object_area += float((opacity >= 0.5).sum())
            true_area += float(render_shape_with_mask(*canon, cameras)[1].sum())
        out = trainer.guidance(view, step, generator)
        sum(out.generator_losses.values()).backward(inputs=[view.images])
        with torch.no_grad():
            seen, teacher_x0, fake_x0 = _x0_predictions(trainer, view, step, generator)
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
    paths = existing_run(run_dir)
    config = load_config(paths.config, [])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(config, paths, DiffusionTeacher.from_pretrained(config.teacher, device))
    report = {}
    for step in steps:
        path = checkpoint_path(paths.checkpoints, step)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint of step {step} in {paths.checkpoints}: pick steps the run "
                                    f"checkpointed (trainer.checkpoint_every, trainer.keep_checkpoints)")
        trainer.load_state_dict(load_checkpoint(path, device))
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
