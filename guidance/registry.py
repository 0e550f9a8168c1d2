"""The estimator registry: one plain record per estimator, read by the guidance, ``guidance.verify``
and the comparison. Adding an estimator is its function in ``guidance.estimators`` plus one entry here.

Time weights put every estimator on the scale of its classic form, as a gradient on ``x_0``:
DI-type estimators (SDS, VSD, f-distill) get ``sigma^3 / alpha`` in score units, i.e. DreamFusion's
``w(t) = sigma_t^2`` on the noise residual; Uni-Instruct's surrogate gets ``sigma^4 / (2 alpha^2)``,
which makes its reverse-KL case SiD at alpha = 1/2; SiD is already in x0 units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from guidance import estimators, gaussian
from guidance.divergences import Divergence, get_divergence
from guidance.estimators import EstimatorOptions, NoisedSample, Scores

Loss = Callable[[NoisedSample, Scores, torch.Tensor, EstimatorOptions], torch.Tensor]
TimeWeight = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # alpha [B], sigma [B] -> weight [B]
# The gradient in theta the estimator is unbiased for on the Gaussian problem of ``guidance.gaussian``,
# given the configured divergence and SiD's alpha: what ``guidance.verify`` checks it against.
Reference = Callable[[gaussian.GaussianProblem, Divergence, float], float]


def di_time_weight(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return sigma**3 / alpha


def quadratic_time_weight(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return sigma**4 / (2 * alpha**2)


def unit_time_weight(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(sigma)


def reverse_kl_gradient(problem: gaussian.GaussianProblem, divergence: Divergence, alpha_sid: float) -> float:
    return gaussian.divergence_gradient(problem, get_divergence("rkl"))


@dataclass(frozen=True)
class Estimator:
    name: str
    loss: Loss
    time_weight: TimeWeight
    reference: Reference
    needs_fake_score: bool  # queries s_p, so trains a LoRA fake score
    uses_divergence: bool  # weighted by h(r) of the configured divergence, so needs the discriminator's ratio


ESTIMATORS: dict[str, Estimator] = {entry.name: entry for entry in (
    Estimator("uni-instruct", estimators.uni_instruct, quadratic_time_weight,
              lambda problem, divergence, _: gaussian.expanded_divergence_gradient(problem, divergence),
              needs_fake_score=True, uses_divergence=True),
    Estimator("f-distill", estimators.f_distill, di_time_weight,
              lambda problem, divergence, _: gaussian.divergence_gradient(problem, divergence),
              needs_fake_score=True, uses_divergence=True),
    Estimator("vsd", estimators.vsd, di_time_weight, reverse_kl_gradient, needs_fake_score=True, uses_divergence=False),
    Estimator("sds", estimators.sds, di_time_weight, reverse_kl_gradient, needs_fake_score=False, uses_divergence=False),
    Estimator("sid", estimators.sid, unit_time_weight,
              lambda problem, _, alpha_sid: gaussian.sid_gradient(problem, alpha_sid),
              needs_fake_score=True, uses_divergence=False),
)}
ESTIMATOR_NAMES = tuple(ESTIMATORS)
