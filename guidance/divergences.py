"""The f-divergences of the Uni-Instruct family, in the ratio ``r = q_t / p_t`` (teacher over student).

Each is ``D_f(q || p) = E_p[f(r)]`` with its weight ``h(r) = f''(r) r^2`` and the derivatives of
``h`` in closed form (the table of ``shared/design/guidance-math.md``; the tests check them
against autograd of ``f``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Divergence:
    name: str
    f: Fn
    h: Fn  # f''(r) r^2
    dh: Fn  # h'(r)
    d2h: Fn  # h''(r)


def _constant(value: float) -> Fn:
    return lambda r: torch.full_like(r, value)


DIVERGENCES: dict[str, Divergence] = {
    d.name: d
    for d in (
        Divergence("rkl", f=lambda r: -torch.log(r), h=_constant(1.0), dh=_constant(0.0), d2h=_constant(0.0)),
        Divergence("fkl", f=lambda r: r * torch.log(r), h=lambda r: r, dh=_constant(1.0), d2h=_constant(0.0)),
        Divergence("jkl", f=lambda r: (r - 1) * torch.log(r), h=lambda r: 1 + r, dh=_constant(1.0), d2h=_constant(0.0)),
        Divergence(
            "js",
            f=lambda r: r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2),
            h=lambda r: r / (1 + r),
            dh=lambda r: 1 / (1 + r) ** 2,
            d2h=lambda r: -2 / (1 + r) ** 3,
        ),
        Divergence("chi2", f=lambda r: (r - 1) ** 2, h=lambda r: 2 * r**2, dh=lambda r: 4 * r, d2h=_constant(4.0)),
        Divergence(
            "hellinger",
            f=lambda r: (torch.sqrt(r) - 1) ** 2,
            h=lambda r: torch.sqrt(r) / 2,
            dh=lambda r: 1 / (4 * torch.sqrt(r)),
            d2h=lambda r: -1 / (8 * r**1.5),
        ),
    )
}


def get_divergence(name: str) -> Divergence:
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; use one of {sorted(DIVERGENCES)}")
    return DIVERGENCES[name]
