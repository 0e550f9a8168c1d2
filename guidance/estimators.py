"""Score-distillation estimators, written against callables so that they run on U-Nets and on
analytic distributions alike. Symbols follow ``shared/design/guidance-math.md``:
``x_t = alpha_t * x_0 + sigma_t * eps``.
"""
from __future__ import annotations

from typing import Callable

import torch

NoisePredictor = Callable[[torch.Tensor], torch.Tensor]  # x_t -> predicted eps


def inject_gradient(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient with respect to ``x0`` is ``grad / batch`` (``grad`` is not differentiated)."""
    target = (x0 - grad).detach()
    return 0.5 * ((x0 - target) ** 2).sum() / x0.shape[0]


def sds(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
        teacher_eps: NoisePredictor, weight: torch.Tensor) -> torch.Tensor:
    """DreamFusion's score distillation: gradient ``w(t) * (eps_teacher(x_t) - eps)`` on ``x_0``.

    x0, eps: [B, ...]; alpha, sigma, weight: broadcastable to x0. No U-Net is back-propagated through.
    """
    with torch.no_grad():
        x_t = alpha * x0 + sigma * eps
        grad = weight * (teacher_eps(x_t) - eps)
    return inject_gradient(x0, grad)
