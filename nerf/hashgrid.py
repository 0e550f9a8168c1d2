"""Multi-resolution hash-grid encoding (Instant-NGP) with tiny-cuda-nn's semantics, in PyTorch.

Level ``l`` has scale ``s_l = base_resolution * per_level_scale**l - 1`` and resolution
``ceil(s_l) + 1``. A point ``x`` in [0, 1]^3 maps to ``x * s_l + 0.5``; the eight surrounding
grid vertices are looked up (directly while the level's grid fits in its table, through the
XOR-of-primes hash otherwise) and interpolated trilinearly. Parameters are one flat table of
shape [sum of level sizes, n_features], laid out level after level as tiny-cuda-nn lays them out,
each level's size rounded up to a multiple of 8 and capped at ``2**log2_hashmap_size``.

Three backends compute the same thing: tiny-cuda-nn's fused kernel on CUDA, this project's fused C
kernel on the CPU (``nerf/hashgrid_cpu.py``), and the PyTorch ops below, which run anywhere, give
gradients with respect to the points too, and are the reference the others are tested against.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from nerf import hashgrid_cpu

log = logging.getLogger(__name__)

# tiny-cuda-nn's coherent primes; the first dimension is not scrambled.
HASH_PRIMES = (1, 2654435761, 805459861)
# Index arithmetic runs in int32, which wraps like tiny-cuda-nn's uint32 (the same bits); hashed
# levels have power-of-two sizes, so the remainder of the (possibly negative) int32 is the same too.
INT32_PRIMES = tuple(p - 2**32 if p >= 2**31 else p for p in HASH_PRIMES)


@dataclass
class HashGridSpec:
    """Defaults are ProlificDreamer's. Field metadata gives the valid range of each value."""

    n_levels: int = field(default=16, metadata={"range": (1, 32)})
    n_features_per_level: int = field(default=2, metadata={"choices": (1, 2, 4, 8)})
    log2_hashmap_size: int = field(default=19, metadata={"range": (8, 24)})
    base_resolution: int = field(default=16, metadata={"range": (2, None)})
    finest_resolution: int = field(default=4096, metadata={"range": (2, None)})
    # auto: tiny-cuda-nn on CUDA if installed, the fused C kernel on the CPU if a compiler builds it, else torch.
    backend: str = field(default="auto", metadata={"choices": ("auto", "torch", "tcnn", "cpu")})

    @property
    def per_level_scale(self) -> float:
        if self.n_levels == 1:
            return 1.0
        return math.exp(math.log(self.finest_resolution / self.base_resolution) / (self.n_levels - 1))

    def level_scales(self) -> list[float]:
        return [self.base_resolution * self.per_level_scale**level - 1.0 for level in range(self.n_levels)]

    def level_resolutions(self) -> list[int]:
        return [math.ceil(scale) + 1 for scale in self.level_scales()]

    def level_sizes(self) -> list[int]:
        """Number of table rows of each level, as tiny-cuda-nn allocates them."""
        dense_sizes = (-(-resolution**3 // 8) * 8 for resolution in self.level_resolutions())
        return [min(size, 2**self.log2_hashmap_size) for size in dense_sizes]


@functools.cache
def tcnn_available() -> bool:
    available = importlib.util.find_spec("tinycudann") is not None and torch.cuda.is_available()
    log.info("hash grid: %s", "tiny-cuda-nn on CUDA" if available else "PyTorch (tiny-cuda-nn not importable or no CUDA)")
    return available


class HashGridEncoding(nn.Module):
    """Encodes points in [0, 1]^3 into ``n_levels * n_features_per_level`` features.

    On CUDA with tiny-cuda-nn installed (``backend`` auto or tcnn), its fused kernel runs on this
    module's own table, so checkpoints are the same for both backends.
    """

    def __init__(self, spec: HashGridSpec):
        super().__init__()
        self.spec = spec
        sizes = torch.tensor(spec.level_sizes(), dtype=torch.int32)
        resolutions = torch.tensor(spec.level_resolutions(), dtype=torch.int32)
        self.table = nn.Parameter(torch.empty(int(sizes.sum()), spec.n_features_per_level).uniform_(-1e-4, 1e-4))
        buffers = {
            "level_offsets": torch.cumsum(sizes, 0) - sizes,
            "level_sizes": sizes,
            "level_scales": torch.tensor(spec.level_scales(), dtype=torch.float32),
            "dense_strides": torch.stack([torch.ones_like(resolutions), resolutions, resolutions**2], dim=-1),
            "primes": torch.tensor(INT32_PRIMES, dtype=torch.int32),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)
        # Levels grow finer, so those whose whole grid fits in the table (indexed directly) come first.
        self.n_dense_levels = sum(r**3 <= size for r, size in zip(spec.level_resolutions(), spec.level_sizes()))

    @property
    def n_output_dims(self) -> int:
        return self.spec.n_levels * self.spec.n_features_per_level

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points: [N, 3] in [0, 1] -> features [N, n_levels * n_features_per_level]."""
        if points.is_cuda and self.spec.backend in ("auto", "tcnn") and tcnn_available():
            return self._tcnn_forward(points)
        if self._fused_cpu_applies(points):
            return self._fused_cpu_forward(points)
        return self._torch_forward(points)

    def _fused_cpu_applies(self, points: torch.Tensor) -> bool:
        """The C kernel takes float32 CPU tensors and differentiates with respect to the table only."""
        return (self.spec.backend in ("auto", "cpu") and not points.is_cuda and points.dtype == self.table.dtype == torch.float32
                and not (points.requires_grad and torch.is_grad_enabled()) and hashgrid_cpu.available())

    def _fused_cpu_forward(self, points: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "_cpu_levels"):
            levels = hashgrid_cpu.LevelTables(self.level_scales, self.level_sizes, self.level_offsets,
                                              self.dense_strides[:, 1], self.n_dense_levels)
            object.__setattr__(self, "_cpu_levels", levels)  # constants, not state: kept out of state dicts
        return hashgrid_cpu.FusedLookup.apply(self.table, points, self._cpu_levels)

    def _tcnn_forward(self, points: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "_tcnn"):
            import tinycudann as tcnn

            config = {"otype": "HashGrid", "n_levels": self.spec.n_levels, "n_features_per_level": self.spec.n_features_per_level,
                      "log2_hashmap_size": self.spec.log2_hashmap_size, "base_resolution": self.spec.base_resolution,
                      "per_level_scale": self.spec.per_level_scale, "interpolation": "Linear"}
            module = tcnn.Encoding(3, config, dtype=torch.float32)
            if module.params.numel() != self.table.numel():
                raise RuntimeError(f"tiny-cuda-nn allocates {module.params.numel()} hash-grid parameters, this table has "
                                   f"{self.table.numel()}; set geometry.grid.backend=torch")
            del module.params  # it runs on this module's table instead (not registered: state dicts stay as they are)
            object.__setattr__(self, "_tcnn", module)
        self._tcnn.params = self.table.view(-1)
        return self._tcnn(points.contiguous()).float()

    def _torch_forward(self, points: torch.Tensor) -> torch.Tensor:
        scaled = points[:, None, :] * self.level_scales[:, None] + 0.5  # [N, L, 3]
        floor = scaled.floor()
        frac = scaled - floor
        # Per axis, the two surrounding grid coordinates and their interpolation weights.
        grid_coords = floor.int()[..., None] + torch.arange(2, device=points.device, dtype=torch.int32)  # [N, L, 3, 2]
        axis_weights = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
        rows = self._table_rows(grid_coords) + self.level_offsets[:, None]  # [N, L, 8]
        weights = combine_over_corners(axis_weights, torch.mul)  # [N, L, 8]
        # index_select, not table[rows]: on the CPU its forward and backward (index_add_) are 2-3x faster.
        corner_features = self.table.index_select(0, rows.reshape(-1)).view(*rows.shape, self.table.shape[1])  # [N, L, 8, F]
        features = (weights[..., None].to(self.table.dtype) * corner_features).sum(dim=2)  # [N, L, F]
        return features.flatten(1).to(points.dtype)

    def _table_rows(self, grid_coords: torch.Tensor) -> torch.Tensor:
        """grid_coords: [N, L, 3, 2] integer coordinates -> [N, L, 8] row within each level's table.
        Each level is indexed one way only: directly (the coarse levels) or through the hash."""
        dense = self.n_dense_levels
        dense_index = combine_over_corners(grid_coords[:, :dense] * self.dense_strides[:dense, :, None], torch.add)
        hash_index = combine_over_corners(grid_coords[:, dense:] * self.primes[:, None], torch.bitwise_xor)
        return torch.cat([dense_index, hash_index], dim=1) % self.level_sizes[:, None]


def combine_over_corners(per_axis: torch.Tensor, combine) -> torch.Tensor:
    """[..., 3, 2] values per axis and side -> [..., 8], combined over the cube's eight corners."""
    x, y, z = per_axis.unbind(-2)
    return combine(combine(x[..., :, None, None], y[..., None, :, None]), z[..., None, None, :]).flatten(-3)
