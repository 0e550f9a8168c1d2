"""Score-distillation estimators of the unified f-divergence family.

Each is a loss whose gradient with respect to the generator's parameters estimates the paper's
gradient, written against callables (``Scores``: teacher score ``s_q``, fake score ``s_p``,
discriminator logit ``d``) and the noise process, so the same function runs on U-Nets and on the
analytic Gaussians of ``guidance.gaussian``. All share one signature,
``(sample, scores, weight, options) -> loss``, so that ``guidance.registry`` can list them. Symbols follow ``shared/design/guidance-math.md``:
``x_t = alpha_t x_0 + sigma_t eps``, ``y = s_p - s_q``, ``r = q_t / p_t = exp(d)``, ``h = f'' r^2``.

Every function returns the batch mean of per-sample losses, each multiplied by its time weight
``weight`` [B]. Networks are frozen for these losses: autograd flows through their *inputs*
(``x_t``, and ``x_0``) into the generator, never into their parameters' use here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from guidance.divergences import Divergence

Score = Callable[[torch.Tensor], torch.Tensor]  # x_t [B, ...] -> score [B, ...]
# x_t [B, C, H, W] -> d [B], or a map d [B, 1, H, W] of one log-ratio per location (``discriminator.logit_map``)
Logit = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Scores:
    """The networks an estimator may query at a noised sample (those it does not need may be None)."""

    teacher: Score  # s_q
    fake: Score | None = None  # s_p
    logit: Logit | None = None  # d = log q_t - log p_t


@dataclass
class NoisedSample:
    """The forward process at one draw: ``x_t = alpha * x0 + sigma * eps``.

    x0, eps: [B, ...] (x0 carries the generator's graph); alpha, sigma: [B, 1, ...], broadcastable.
    ``x_t`` is built once, with the graph, when the sample is made: every callable given it sees the
    same tensor (and may cache on it).
    """

    x0: torch.Tensor
    eps: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    x_t: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.x_t = self.alpha * self.x0 + self.sigma * self.eps

    def conditional_score(self, x_t: torch.Tensor) -> torch.Tensor:
        """grad log p(x_t | x_0) = -(x_t - alpha x_0) / sigma^2 (= -eps / sigma)."""
        return -(x_t - self.alpha * self.x0) / self.sigma**2


@dataclass
class RatioSpec:
    """How the discriminator's logit becomes the density ratio: [low, high] clamps, None for none."""

    logit_clamp: list[float] | None = field(default_factory=lambda: [-10.0, 10.0])
    ratio_clamp: list[float] | None = field(default_factory=lambda: [0.1, 20.0])
    # Clamp smoothly (``soft_clamp``): the ratio keeps a gradient past its clamps, which Uni-Instruct's surrogate
    # differentiates; a hard clamp passes none there.
    soft_clamp: bool = False
    normalize: bool = False  # divide h (and r h') by the batch mean of h (needs several views a step)
    # Divide h (and r h') by a running mean of h in its band of t instead (f-distill's recipe; safe at one view a
    # step): the mean of each of ``running_bands`` equal bands of t, decayed by ``running_decay`` a step.
    running_mean: bool = False
    running_bands: int = field(default=4, metadata={"range": (1, 100)})
    running_decay: float = field(default=0.95, metadata={"range": (0.0, 1.0)})


EXACT_RATIO = RatioSpec(logit_clamp=None, ratio_clamp=None, normalize=False)


@dataclass
class EstimatorOptions:
    """The settings some estimators take: the divergence and its ratio (f-family), SiD's alpha."""

    divergence: Divergence | None = None
    ratio: RatioSpec = field(default_factory=RatioSpec)
    alpha_sid: float = 1.2
    h_scale: torch.Tensor | None = None  # [B] divisors of h from its running means (``ratio.running_mean``)


def soft_clamp(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``low + softplus(value - low) - softplus(value - high)``: about ``value`` well inside [low, high], tending to
    the bounds outside it, with the positive slope ``sigmoid(value - low) - sigmoid(value - high)`` everywhere."""
    return low + torch.nn.functional.softplus(value - low) - torch.nn.functional.softplus(value - high)


def log_ratio_bounds(spec: RatioSpec) -> tuple[float, float]:
    """The interval of log r both clamps leave (either may be None: unbounded on that side)."""
    low, high = -math.inf, math.inf
    if spec.logit_clamp is not None:
        low, high = spec.logit_clamp
    if spec.ratio_clamp is not None:
        low, high = max(low, math.log(spec.ratio_clamp[0])), min(high, math.log(spec.ratio_clamp[1]))
    return low, high


def density_ratio(logit: torch.Tensor, spec: RatioSpec) -> torch.Tensor:
    """d -> r = exp(d), element-wise ([B] or a map [B, 1, H, W]), clamped as the spec says: hard (clamping d, then
    r), or smoothly onto the same interval of log r (``soft_clamp``)."""
    if spec.soft_clamp and (spec.logit_clamp is not None or spec.ratio_clamp is not None):
        return torch.exp(soft_clamp(logit, *log_ratio_bounds(spec)))
    if spec.logit_clamp is not None:
        logit = logit.clamp(*spec.logit_clamp)
    ratio = torch.exp(logit)
    return ratio.clamp(*spec.ratio_clamp) if spec.ratio_clamp is not None else ratio


def at_clamps(logit: torch.Tensor, spec: RatioSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """d -> (at or past the lower clamp, at or past the upper clamp), booleans shaped like d: where
    ``density_ratio`` is cut off (or, soft, flattened), so its value says only that the discriminator is sure."""
    ratio = torch.exp(logit.clamp(*spec.logit_clamp) if spec.logit_clamp is not None else logit)
    low, high = torch.zeros_like(logit, dtype=torch.bool), torch.zeros_like(logit, dtype=torch.bool)
    if spec.logit_clamp is not None:
        low, high = low | (logit <= spec.logit_clamp[0]), high | (logit >= spec.logit_clamp[1])
    if spec.ratio_clamp is not None:
        low, high = low | (ratio <= spec.ratio_clamp[0]), high | (ratio >= spec.ratio_clamp[1])
    return low, high


def per_sample(values: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B], summed over every element of a sample."""
    return values.flatten(1).sum(dim=1)


def per_view(values: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B], the mean over each sample's elements (a ratio map's view-wise summary); [B] stays."""
    return values.flatten(1).mean(dim=1) if values.dim() > 1 else values


def broadcast(per_batch: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] with the rank of ``like``; a tensor of ``like``'s rank (a map [B, 1, H, W]) stays."""
    return per_batch if per_batch.dim() == like.dim() else per_batch.reshape(-1, *([1] * (like.dim() - 1)))


def inject_gradient(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient with respect to ``x`` [B, ...] is ``grad / B``; ``grad`` is not differentiated."""
    return per_sample(grad.detach() * x).mean()


def divergence_weights(divergence: Divergence, ratio: torch.Tensor, spec: RatioSpec,
                       h_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h(r), r h'(r)), each shaped like the ratio ([B] or a map [B, 1, H, W]), both divided by the batch mean of
    h when the spec normalises, or by ``h_scale`` [B] (running means of h) where given."""
    h, r_dh = divergence.h(ratio), ratio * divergence.dh(ratio)
    scale = h.mean().detach() if spec.normalize else h_scale
    if scale is not None:
        scale = broadcast(scale, h) if scale.dim() else scale
        h, r_dh = h / scale, r_dh / scale
    return h, r_dh


def di_type(sample: NoisedSample, y: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Grad(DI): ``E[w h(r) y^T dx_t/dtheta]``, with y [B, ...], weight [B] and h [B] (or a map [B, 1, H, W], one
    weight per location) computed without gradient."""
    return inject_gradient(sample.x_t, broadcast(weight, y) * broadcast(h, y) * y)


def sds(sample: NoisedSample, scores: Scores, weight: torch.Tensor, options: EstimatorOptions) -> torch.Tensor:
    """DreamFusion: VSD with the fake score replaced by the conditional score of the drawn noise, -eps / sigma."""
    x_t = sample.x_t.detach()
    with torch.no_grad():
        y = sample.conditional_score(x_t) - scores.teacher(x_t)
    return di_type(sample, y, torch.ones_like(weight), weight)


def vsd(sample: NoisedSample, scores: Scores, weight: torch.Tensor, options: EstimatorOptions) -> torch.Tensor:
    """ProlificDreamer's variational score distillation: Grad(DI) with h = 1 (reverse KL)."""
    x_t = sample.x_t.detach()
    with torch.no_grad():
        y = scores.fake(x_t) - scores.teacher(x_t)
    return di_type(sample, y, torch.ones_like(weight), weight)


def f_distill(sample: NoisedSample, scores: Scores, weight: torch.Tensor, options: EstimatorOptions) -> torch.Tensor:
    """f-distill: Grad(DI) weighted by h(r), the gradient of D_f(q_t || p_t) at this t."""
    x_t = sample.x_t.detach()
    with torch.no_grad():
        y = scores.fake(x_t) - scores.teacher(x_t)
        h, _ = divergence_weights(options.divergence, density_ratio(scores.logit(x_t), options.ratio), options.ratio,
                                  options.h_scale)
    return di_type(sample, y, h, weight)


def uni_instruct(sample: NoisedSample, scores: Scores, weight: torch.Tensor, options: EstimatorOptions) -> torch.Tensor:
    """Uni-Instruct's surrogate of the expanded f-divergence, Grad(DI) + Grad(SIM):

        L = (h(r) - r h'(r)) ||y||^2 - 2 h(r) y^T (s_p(x_t) - grad log p(x_t | x_0))

    with autograd through x_t into both scores and the logit (so into r), and through x_0. With a ratio map
    (one r per location) both products are taken location by location.
    """
    x_t = sample.x_t
    s_q, s_p = scores.teacher(x_t), scores.fake(x_t)
    y = s_p - s_q
    h, r_dh = divergence_weights(options.divergence, density_ratio(scores.logit(x_t), options.ratio), options.ratio,
                                 options.h_scale)
    cross = y * (s_p - sample.conditional_score(x_t))
    surrogate = per_sample(broadcast(h - r_dh, y) * y**2) - 2 * per_sample(broadcast(h, y) * cross)
    return (weight * surrogate).mean()


def sid(sample: NoisedSample, scores: Scores, weight: torch.Tensor, options: EstimatorOptions) -> torch.Tensor:
    """Score identity distillation, in x0-predictions f = (x_t + sigma^2 s(x_t)) / alpha:

        L = (f_q - f_p)^T [(f_q - x_0) - alpha_sid (f_q - f_p)]     (alpha_sid: ``options.alpha_sid``)

    with autograd through x_t (into both scores) and x_0. At alpha_sid = 1/2 it equals
    (sigma^4 / 2) times Uni-Instruct's reverse-KL surrogate.
    """
    x_t = sample.x_t

    def x0_prediction(score: Score) -> torch.Tensor:
        return (x_t + sample.sigma**2 * score(x_t)) / sample.alpha

    f_q, f_p = x0_prediction(scores.teacher), x0_prediction(scores.fake)
    surrogate = per_sample((f_q - f_p) * ((f_q - sample.x0) - options.alpha_sid * (f_q - f_p)))
    return (weight * surrogate).mean()
