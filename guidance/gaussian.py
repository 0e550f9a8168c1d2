"""The one-dimensional Gaussian check of ``shared/design/guidance-math.md``, and a two-mode variant.

Teacher noisy marginal ``q = N(0, v_q)``; generator ``x_0 = theta + a z``; VE noise
``x_t = x_0 + sigma eps``; student marginal ``p = N(theta, a^2 + sigma^2)``. Scores and the logit
``d = log q - log p`` are exact, so every estimator must be unbiased. References are computed by
quadrature (float64 trapezoid on a wide grid, which is spectrally accurate for these integrands)
and differentiated in theta by autograd, through every place theta enters. ``MixtureProblem``
keeps the teacher and makes the generator two-moded, so the student's score is non-linear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from guidance.divergences import Divergence, get_divergence
from guidance.estimators import NoisedSample


@dataclass(frozen=True)
class GaussianProblem:
    teacher_var: float = 1.3  # v_q
    gen_scale: float = 0.8  # a
    sigma: float = 0.5
    theta: float = 0.4

    @property
    def student_var(self) -> float:
        return self.gen_scale**2 + self.sigma**2

    # The noisy marginals as functions of x (and of theta for the student's, so quadrature can differentiate).
    def teacher_log_density(self, x: torch.Tensor) -> torch.Tensor:
        return log_normal(x, 0.0, self.teacher_var)

    def student_log_density(self, x: torch.Tensor, theta) -> torch.Tensor:
        return log_normal(x, theta, self.student_var)

    def student_score_at(self, x: torch.Tensor, theta) -> torch.Tensor:
        return -(x - theta) / self.student_var

    def generator_offset(self, n: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """x_0 - theta - a z: none for the Gaussian generator. [n, 1]."""
        return torch.zeros(n, 1, dtype=dtype)

    # Exact callables at the current theta (frozen, as networks are in the estimators).
    def teacher_score(self, x: torch.Tensor) -> torch.Tensor:
        return -x / self.teacher_var

    def fake_score(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_score_at(x, self.theta)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1] -> d = log q(x) - log p(x), [B]."""
        return (self.teacher_log_density(x) - self.student_log_density(x, self.theta))[:, 0]

    def draw(self, theta: torch.Tensor, generator: torch.Generator) -> NoisedSample:
        """theta: [B] (one leaf per sample, for per-sample gradients) -> a NoisedSample of [B, 1] tensors."""
        offset = self.generator_offset(theta.shape[0], generator, theta.dtype)
        z = torch.randn(theta.shape[0], 1, generator=generator, dtype=theta.dtype)
        eps = torch.randn(theta.shape[0], 1, generator=generator, dtype=theta.dtype)
        ones = torch.ones_like(z)
        return NoisedSample(x0=theta[:, None] + offset + self.gen_scale * z, eps=eps, alpha=ones, sigma=self.sigma * ones)


@dataclass(frozen=True)
class MixtureProblem(GaussianProblem):
    """The same teacher with a two-mode generator, ``x_0 = theta + m s + a z`` with a random sign s, +1 with
    probability w: the student's noisy marginal ``w N(theta + m, S) + (1 - w) N(theta - m, S)``,
    S = a^2 + sigma^2, has the non-linear score ``-(x - theta) / S + (m / S) tanh(m (x - theta) / S + logit(w) / 2)``.
    Where scores are linear (the Gaussian problem) some terms of an estimator have zero expectation and
    their mistakes go unseen, and with symmetric modes (w = 1/2) some odd moments of the score vanish
    too; with unequal ones they do not."""

    mode_offset: float = 1.0  # m
    mode_weight: float = 0.7  # w

    def student_log_density(self, x: torch.Tensor, theta) -> torch.Tensor:
        modes = torch.stack([log_normal(x, theta + self.mode_offset, self.student_var) + math.log(self.mode_weight),
                             log_normal(x, theta - self.mode_offset, self.student_var) + math.log(1 - self.mode_weight)])
        return torch.logsumexp(modes, dim=0)

    def student_score_at(self, x: torch.Tensor, theta) -> torch.Tensor:
        m, variance = self.mode_offset, self.student_var
        half_log_odds = 0.5 * math.log(self.mode_weight / (1 - self.mode_weight))
        return -(x - theta) / variance + (m / variance) * torch.tanh(m * (x - theta) / variance + half_log_odds)

    def generator_offset(self, n: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        sign = 2.0 * (torch.rand(n, 1, generator=generator, dtype=dtype) < self.mode_weight).to(dtype) - 1.0
        return self.mode_offset * sign


def log_normal(x: torch.Tensor, mean, var) -> torch.Tensor:
    return -0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * torch.as_tensor(var, dtype=x.dtype))


class Quadrature:
    """Integrals over x of the problem's densities, as differentiable functions of theta."""

    def __init__(self, problem: GaussianProblem, half_width: float = 25.0, points: int = 200_001):
        self.problem = problem
        self.theta = torch.tensor(problem.theta, dtype=torch.float64, requires_grad=True)
        self.x = torch.linspace(problem.theta - half_width, problem.theta + half_width, points, dtype=torch.float64)

    def integrate(self, values: torch.Tensor) -> torch.Tensor:
        return torch.trapezoid(values, self.x)

    def student_density(self) -> torch.Tensor:
        return torch.exp(self.problem.student_log_density(self.x, self.theta))

    def log_ratio(self) -> torch.Tensor:
        return self.problem.teacher_log_density(self.x) - self.problem.student_log_density(self.x, self.theta)

    def score_difference(self) -> torch.Tensor:
        """y(x) = s_p(x) - s_q(x), depending on theta through s_p."""
        return self.problem.student_score_at(self.x, self.theta) - self.problem.teacher_score(self.x)

    def d_dtheta(self, value: torch.Tensor) -> float:
        (grad,) = torch.autograd.grad(value, self.theta)
        return grad.item()


def divergence_gradient(problem: GaussianProblem, divergence: Divergence) -> float:
    """d/dtheta of D_f(q_t || p_t) = E_p[f(r)]: what f-distill (and, for rkl, VSD and SDS) estimates."""
    quad = Quadrature(problem)
    ratio = torch.exp(quad.log_ratio())
    return quad.d_dtheta(quad.integrate(quad.student_density() * divergence.f(ratio)))


def expanded_divergence_gradient(problem: GaussianProblem, divergence: Divergence) -> float:
    """d/dtheta of J_h = E_p[h(r) ||s_p - s_q||^2]: what Uni-Instruct estimates."""
    quad = Quadrature(problem)
    ratio = torch.exp(quad.log_ratio())
    return quad.d_dtheta(quad.integrate(quad.student_density() * divergence.h(ratio) * quad.score_difference() ** 2))


def sid_gradient(problem: GaussianProblem, alpha_sid: float) -> float:
    """Expected gradient of SiD's loss. L_SiD(alpha) = L_SiD(1/2) + (1/2 - alpha) sigma^4 ||y||^2, and
    L_SiD(1/2) = (sigma^4 / 2) L(rkl); the second term's expected gradient, with y frozen and
    d x_t / d theta = 1, is E_p[d(y^2)/dx]."""
    sigma4 = problem.sigma**4
    expanded_rkl = expanded_divergence_gradient(problem, get_divergence("rkl"))
    quad = Quadrature(problem)
    x = quad.x.clone().requires_grad_(True)
    y_frozen = problem.student_score_at(x, problem.theta) - problem.teacher_score(x)
    (dy2_dx,) = torch.autograd.grad((y_frozen**2).sum(), x)
    frozen_term = quad.integrate(quad.student_density().detach() * dy2_dx).item()
    return 0.5 * sigma4 * expanded_rkl + (0.5 - alpha_sid) * sigma4 * frozen_term
