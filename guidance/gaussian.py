"""The one-dimensional Gaussian check of ``shared/design/guidance-math.md``.

Teacher noisy marginal ``q = N(0, v_q)``; generator ``x_0 = theta + a z``; VE noise
``x_t = x_0 + sigma eps``; student marginal ``p = N(theta, a^2 + sigma^2)``. Scores and the logit
``d = log q - log p`` are exact, so every estimator must be unbiased. References are computed by
quadrature (float64 trapezoid on a wide grid, which is spectrally accurate for these integrands)
and differentiated in theta by autograd, through every place theta enters.
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

    # Exact callables at the current theta (frozen, as networks are in the estimators).
    def teacher_score(self, x: torch.Tensor) -> torch.Tensor:
        return -x / self.teacher_var

    def fake_score(self, x: torch.Tensor) -> torch.Tensor:
        return -(x - self.theta) / self.student_var

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1] -> d = log q(x) - log p(x), [B]."""
        return (log_normal(x, 0.0, self.teacher_var) - log_normal(x, self.theta, self.student_var))[:, 0]

    def draw(self, theta: torch.Tensor, generator: torch.Generator) -> NoisedSample:
        """theta: [B] (one leaf per sample, for per-sample gradients) -> a NoisedSample of [B, 1] tensors."""
        z = torch.randn(theta.shape[0], 1, generator=generator, dtype=theta.dtype)
        eps = torch.randn(theta.shape[0], 1, generator=generator, dtype=theta.dtype)
        ones = torch.ones_like(z)
        return NoisedSample(x0=theta[:, None] + self.gen_scale * z, eps=eps, alpha=ones, sigma=self.sigma * ones)


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
        return torch.exp(log_normal(self.x, self.theta, self.problem.student_var))

    def log_ratio(self) -> torch.Tensor:
        return log_normal(self.x, 0.0, self.problem.teacher_var) - log_normal(self.x, self.theta, self.problem.student_var)

    def score_difference(self) -> torch.Tensor:
        """y(x) = s_p(x) - s_q(x), depending on theta through s_p."""
        return -(self.x - self.theta) / self.problem.student_var + self.x / self.problem.teacher_var

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
    y_frozen = -(x - problem.theta) / problem.student_var + x / problem.teacher_var
    (dy2_dx,) = torch.autograd.grad((y_frozen**2).sum(), x)
    frozen_term = quad.integrate(quad.student_density().detach() * dy2_dx).item()
    return 0.5 * sigma4 * expanded_rkl + (0.5 - alpha_sid) * sigma4 * frozen_term
