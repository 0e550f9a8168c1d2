"""Which empty voxels of a solid count as inside: the hollows of a NeRF that only its shell was trained on."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def inside_cavities(solid: np.ndarray, closing: int = 0) -> np.ndarray:
    """solid: [R, R, R] bool -> the empty voxels that count as inside: those the outside cannot reach once
    openings narrower than about ``2 * closing`` voxels are closed (``closing`` 0: sealed pockets only)."""
    sealed = ndimage.binary_closing(solid, iterations=closing) if closing else solid
    return ndimage.binary_fill_holes(sealed) & ~solid
