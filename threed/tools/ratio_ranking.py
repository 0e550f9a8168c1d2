"""Is the density ratio informative? At a ShapeWorld run's checkpoints, does the discriminator's log-ratio
rank renders of the prompt's true object above renders of a wrong one, from the same cameras (JSON)?

    python -m threed.tools.ratio_ranking RUN_DIR [--steps 150,300] [--views 16] [--bands 4] [--seed 0]

For each checkpointed step and each of ``--bands`` equal bands of t: ``--views`` cameras of the run's own
distribution; the true object (the prompt's shape and colour, as the canon renders it), and wrong ones
seen by the same cameras: each other shape in the same colour, each other colour on the same shape, and
the true object at 0.7 and 1.4 times its size; all noised with the same noise at the same t, drawn within
the band; the discriminator's log-ratio d of each (from the fake score's bottleneck, as in training).
The ranking AUC of a kind of wrongness is the fraction of (view, wrong object) pairs in which the true
object's d is the higher (ties count half): 0.5 says the ratio does not tell them apart, 1 that it always
prefers the truth. d estimates log q_t / p_t with q the teacher's distribution, so the true object should
look more like the teacher's (higher d). Needs a run with a discriminator. The report also sums up the
run's own ratio diagnostics (``metrics.jsonl``): per estimator phase, the fraction of the training views
whose ratio was off both clamps.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from guidance.distillation import ViewBatch
from guidance.estimators import per_view
from guidance.ratio_diagnostics import band_edges
from threed.cameras import CameraBatch, sample_cameras
from threed.errors import UserError
from threed.run import Run
from threed.shapeworld.canon import COLOURS, SHAPES, SIGNED_DISTANCES, is_canon_prompt, parse_prompt
from threed.shapeworld.render import render_sdf_in_colour
from threed.trainer import Trainer

SIZES = (0.7, 1.4)


def wrong_objects(shape: str, colour: str) -> dict[str, list[tuple]]:
    """Per kind of wrongness, the wrong objects as (signed distance, colour name): the truth's neighbours."""
    scaled = [lambda points, s=s: s * SIGNED_DISTANCES[shape](points / s) for s in SIZES]
    return {"shape": [(SIGNED_DISTANCES[other], colour) for other in SHAPES if other != shape],
            "colour": [(SIGNED_DISTANCES[shape], other) for other in COLOURS if other != colour],
            "size": [(distance, colour) for distance in scaled]}


def ranking_auc(true_scores: torch.Tensor, wrong_scores: torch.Tensor) -> float:
    """true_scores [B], wrong_scores [K, B] (K wrong objects, the same B views): the fraction of pairs of a view's
    true and wrong score in which the true one is higher, ties counting half."""
    higher = (true_scores > wrong_scores).double() + 0.5 * (true_scores == wrong_scores).double()
    return float(higher.mean())


@torch.no_grad()
def encoded_render(trainer: Trainer, distance, colour: str, cameras: CameraBatch) -> torch.Tensor:
    """A surface in a canon colour seen by ``cameras``, in the teacher's space: x_0 [B, C, h, w]."""
    images = render_sdf_in_colour(distance, colour, cameras)[0]
    return trainer.guidance.teacher.encode(images.permute(0, 3, 1, 2)).float()


@torch.no_grad()
def log_ratios(trainer: Trainer, x0: torch.Tensor, cameras: CameraBatch, t: torch.Tensor, eps: torch.Tensor,
               step: int) -> torch.Tensor:
    """The discriminator's log-ratio [B] of encoded views x0 [B, C, h, w] seen by ``cameras``, noised with ``eps`` at
    t [B] (a logit map's mean over the view)."""
    guidance = trainer.guidance
    views = ViewBatch(x0, cameras.elevation_deg, cameras.azimuth_deg, cameras.c2w)  # scores read only the cameras
    alpha, sigma = guidance.teacher.alpha_sigma(t)
    return per_view(guidance.scores(views, t, sigma, step).logit(alpha * x0 + sigma * eps).float())


def ratio_ranking(trainer: Trainer, step: int, views: int, bands: int, seed: int) -> dict:
    """The report's entry for the trainer's state at ``step`` (already loaded): AUCs per band of t and kind."""
    shape, colour = parse_prompt(trainer.config.prompt)
    generator = torch.Generator(trainer.device).manual_seed(seed)
    cameras = sample_cameras(dataclasses.replace(trainer.config.camera, batch_size=views), generator, step)
    true_x0 = encoded_render(trainer, SIGNED_DISTANCES[shape], colour, cameras)  # each object encoded once
    wrong_x0 = {kind: [encoded_render(trainer, d, c, cameras) for d, c in objects]
                for kind, objects in wrong_objects(shape, colour).items()}
    n = trainer.guidance.teacher.num_train_timesteps
    entry = {}
    for low, high in band_edges(n, bands):
        t = torch.randint(low, high, (views,), generator=generator, device=generator.device)
        eps = torch.randn(true_x0.shape, generator=generator, device=generator.device)
        true_d = log_ratios(trainer, true_x0, cameras, t, eps, step)
        aucs = {kind: ranking_auc(true_d, torch.stack([log_ratios(trainer, x0, cameras, t, eps, step) for x0 in wrong]))
                for kind, wrong in wrong_x0.items()}
        entry[f"{low}-{high - 1}"] = {kind: round(auc, 4) for kind, auc in aucs.items()}
    return entry


def clamp_summary(run: Run) -> dict:
    """From the run's ``metrics.jsonl``: per estimator (as in force at each record's step), the views its
    "ratio" records summed up and the fraction of them with the ratio off both clamps."""
    views, off = {}, {}
    with open(run.paths.metrics) as records:
        for record in map(json.loads, records):
            if "ratio" in record:
                estimator = run.config.guidance.estimator_at(record["step"] - 1)  # a record sums up the steps before it
                views[estimator] = views.get(estimator, 0) + record["ratio"]["views"]
                off[estimator] = off.get(estimator, 0.0) + record["ratio"]["off_clamps"] * record["ratio"]["views"]
    return {estimator: {"views": views[estimator], "off_clamps": round(off[estimator] / views[estimator], 4)}
            for estimator in views}


def ratio_ranking_report(run_dir: str, steps: list[int], views: int, bands: int, seed: int) -> dict:
    run = Run.open(run_dir)
    summary = {"run": str(run_dir), "prompt": run.config.prompt, "off_clamps_by_estimator": clamp_summary(run)}
    if not steps:
        return summary
    if not is_canon_prompt(run.config.prompt):
        raise UserError(f"{run.config.prompt!r} is not a ShapeWorld prompt: the ranking needs the true object's shape")
    trainer = run.trainer(run.load_teacher())
    if trainer.guidance.discriminator is None:
        raise UserError(f"{run_dir} trained without a discriminator (method {run.config.guidance.estimator}): "
                        "there is no density ratio to rank with; pick a Uni-Instruct or f-distill run")
    report = {}
    for step in steps:
        trainer.load_step(step)
        report[str(step)] = ratio_ranking(trainer, step, views, bands, seed)
    return {**summary, "views": views, "seed": seed, "steps": report}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a ShapeWorld run folder with a discriminator and checkpoints of the steps")
    parser.add_argument("--steps", default="", help="comma-separated checkpointed steps (none: only the run's "
                        "off-clamp fractions, read from its metrics)")
    parser.add_argument("--views", type=int, default=16, help="cameras per band of t")
    parser.add_argument("--bands", type=int, default=4, help="equal bands of t")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    steps = [int(step) for step in arguments.steps.split(",") if step]
    try:
        report = ratio_ranking_report(arguments.run_dir, steps, arguments.views, arguments.bands, arguments.seed)
    except UserError as error:
        parser.exit(2, f"error: {error}\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
