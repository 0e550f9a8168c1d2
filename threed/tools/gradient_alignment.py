"""Do the estimators push a run's renders the same way? Each method's image-space gradient, against SDS's (JSON).

    python -m threed.tools.gradient_alignment RUN_DIR [--methods vsd,uni-instruct:rkl,uni-instruct:fkl,f-distill:fkl]
                                              [--timesteps 200,500,700,900,970] [--samples 16] [--seed 0]

From the run's latest checkpoint (its field, fake score and discriminator), one batch of training views is
rendered; at each timestep, every method's distillation loss is differentiated with respect to the rendered
pixels, summed over ``--samples`` noise draws shared by all methods (common random numbers). Reported per
method and t: the cosine between that summed gradient and SDS's (1: the same push; SDS's needs no fake
score, so it is the reference), its norm, and ``self_cosine``, the cosine between the sums over the two halves
of the draws: near 1, the direction is the estimator's own and not noise. A method whose gradient has a
high self-cosine and a low cosine with SDS pushes the renders somewhere else, whatever its scale.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.nn.functional as F

from threed.cells import Method, parse_methods
from threed.errors import UserError
from threed.run import Run
from threed.trainer import Trainer


def image_gradient(trainer: Trainer, views, method: Method, t: int, seed: int) -> torch.Tensor:
    """d(the method's loss) / d(the rendered pixels) for one noise draw (``seed``) at timestep t: [B * H * W * 3]."""
    guidance, step = trainer.guidance, trainer.step
    leaf = dataclasses.replace(views, images=views.images.detach().requires_grad_(True))
    timesteps = torch.full((leaf.images.shape[0],), t, device=trainer.device)
    timesteps, sample = guidance.noised_sample(leaf, step, torch.Generator(trainer.device).manual_seed(seed), timesteps)
    scores = guidance.scores(leaf, timesteps, sample.sigma, step)
    loss = guidance.estimator_loss(sample, scores, method.estimator, method.divergence or guidance.spec.divergence_at(step))
    (gradient,) = torch.autograd.grad(loss, leaf.images)
    return gradient.flatten()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float(F.cosine_similarity(a, b, dim=0)), 3)


def alignment_report(run_dir: str, methods: list[Method], timesteps: list[int], samples: int, seed: int) -> dict:
    run = Run.open(run_dir)
    trainer = run.trainer(run.load_teacher(), resume=True)
    if trainer.guidance.fake_score is None and any(m.estimator != "sds" for m in methods):
        raise UserError(f"{run_dir} was trained with SDS: it has no fake score for {[m.label for m in methods]}")
    _, _, views = trainer.render_training_views(trainer.step, torch.Generator(trainer.device).manual_seed(seed))
    report = {}
    for t in timesteps:
        draws = range(seed, seed + samples)
        gradients = {method.label: [image_gradient(trainer, views, method, t, s) for s in draws]
                     for method in [Method("sds"), *methods]}
        reference = sum(gradients["sds"])
        report[str(t)] = {label: {"cosine_with_sds": cosine(sum(draws_of), reference),
                                  "norm": f"{float(sum(draws_of).norm()):.3g}",
                                  "self_cosine": cosine(sum(draws_of[::2]), sum(draws_of[1::2]))}
                          for label, draws_of in gradients.items()}
    return {"run": str(run_dir), "step": trainer.step, "prompt": trainer.config.prompt, "samples": samples,
            "seed": seed, "by_timestep": report}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder with a checkpoint")
    parser.add_argument("--methods", default="vsd,uni-instruct:rkl,uni-instruct:fkl,f-distill:fkl")
    parser.add_argument("--timesteps", default="200,500,700,900,970", help="comma-separated, of the teacher's schedule")
    parser.add_argument("--samples", type=int, default=16, help="noise draws per timestep (at least 2)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    try:
        methods = parse_methods(arguments.methods)
        timesteps = [int(t) for t in arguments.timesteps.split(",")]
        if arguments.samples < 2:
            raise UserError("--samples must be at least 2 (the self-cosine compares two halves)")
        print(json.dumps(alignment_report(arguments.run_dir, methods, timesteps, arguments.samples, arguments.seed), indent=1))
    except (UserError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
