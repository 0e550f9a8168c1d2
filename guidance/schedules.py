"""Values that change with the training step: linear ramps, and the estimator / divergence switch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Ramp:
    """``start`` until ``start_step``, linearly to ``end`` at ``end_step``, then ``end``. Constant when end is None."""

    start: float
    end: float | None = None
    start_step: int = 0
    end_step: int = 0

    def __post_init__(self):
        if self.end is not None and self.end_step < self.start_step:
            raise ValueError(f"a ramp's end_step ({self.end_step}) must not precede its start_step ({self.start_step})")

    def at(self, step: int) -> float:
        if self.end is None or step <= self.start_step:
            return self.start
        if step >= self.end_step:
            return self.end
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        return self.start + progress * (self.end - self.start)


@dataclass
class SwitchSpec:
    """From ``step`` on (never when negative), use this estimator and/or divergence ("" keeps the current one)."""

    step: int = -1
    estimator: str = ""
    divergence: str = ""
