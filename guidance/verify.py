"""Checks an estimator on the 1-D Gaussian problem (or, with --mode-offset, its two-mode generator's
variant, whose scores are non-linear) against its quadrature reference.

    python -m guidance.verify --estimator uni-instruct --divergence fkl --teacher-var 1.3 \\
        --gen-scale 0.8 --sigma 0.5 --theta 0.4 --samples 1000000 --seed 0 [--mode-offset 1.0]

prints one JSON object: the Monte Carlo mean of the project's own estimator's gradient in theta
(exact scores and logit as the callables, ratio clamps and normalisation off, w = 1), its
standard error, and the reference. For ``sds`` and ``vsd`` the divergence is reverse KL by
construction and ``--divergence`` is ignored; ``sid`` uses ``--alpha-sid``.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from guidance import estimators
from guidance.divergences import DIVERGENCES, get_divergence
from guidance.gaussian import GaussianProblem, MixtureProblem
from guidance.registry import ESTIMATORS


def estimator_loss(name: str, problem: GaussianProblem, divergence: str, alpha_sid: float):
    """The registered estimator as a function of a NoisedSample, with the problem's exact callables."""
    scores = estimators.Scores(problem.teacher_score, problem.fake_score, problem.logit)
    options = estimators.EstimatorOptions(get_divergence(divergence), estimators.EXACT_RATIO, alpha_sid)

    def loss(sample, weight):
        return ESTIMATORS[name].loss(sample, scores, weight, options)

    return loss


def reference(name: str, problem: GaussianProblem, divergence: str, alpha_sid: float) -> float:
    """The exact gradient the estimator is unbiased for (``guidance.registry``)."""
    return ESTIMATORS[name].reference(problem, get_divergence(divergence), alpha_sid)


def monte_carlo(name: str, problem: GaussianProblem, divergence: str, alpha_sid: float, samples: int, seed: int,
                chunk: int = 250_000) -> tuple[float, float]:
    """Mean and standard error of the per-sample gradient of the estimator's loss in theta (float64)."""
    loss_fn = estimator_loss(name, problem, divergence, alpha_sid)
    generator = torch.Generator().manual_seed(seed)
    total, total_sq = 0.0, 0.0
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        theta = torch.full((n,), problem.theta, dtype=torch.float64, requires_grad=True)
        loss = loss_fn(problem.draw(theta, generator), torch.ones(n, dtype=torch.float64))
        (grad,) = torch.autograd.grad(loss, theta)
        per_sample = grad * n  # the loss is a batch mean
        total, total_sq = total + per_sample.sum().item(), total_sq + (per_sample**2).sum().item()
    mean = total / samples
    variance = max(total_sq / samples - mean**2, 0.0) * samples / max(samples - 1, 1)
    return mean, math.sqrt(variance / samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimator", choices=list(ESTIMATORS), required=True)
    parser.add_argument("--divergence", choices=sorted(DIVERGENCES), default="rkl")
    parser.add_argument("--teacher-var", type=float, default=1.3)
    parser.add_argument("--gen-scale", type=float, default=0.8)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--theta", type=float, default=0.4)
    parser.add_argument("--alpha-sid", type=float, default=0.5)
    parser.add_argument("--mode-offset", type=float, default=0.0,
                        help="m of the two-mode generator x_0 = theta + m s + a z (0: the Gaussian problem)")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.teacher_var, args.gen_scale, args.sigma) <= 0 or args.samples < 2:
        parser.error("--teacher-var, --gen-scale and --sigma must be positive and --samples at least 2")
    problem = (MixtureProblem(args.teacher_var, args.gen_scale, args.sigma, args.theta, args.mode_offset)
               if args.mode_offset else GaussianProblem(args.teacher_var, args.gen_scale, args.sigma, args.theta))
    estimate, stderr = monte_carlo(args.estimator, problem, args.divergence, args.alpha_sid, args.samples, args.seed)
    print(json.dumps({
        "estimator": args.estimator, "divergence": args.divergence, "estimate": estimate, "stderr": stderr,
        "reference": reference(args.estimator, problem, args.divergence, args.alpha_sid),
    }))


if __name__ == "__main__":
    main()
