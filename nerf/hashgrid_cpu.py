"""The hash grid's fused CPU kernel (``hashgrid_cpu.c``), built with the system's C compiler on first use.

PyTorch's ops make the lookup many passes over [N, levels, 8] temporaries and a scatter of the table's
gradient; the fused kernel computes each point's corners, gathers and interpolates in one pass, and in
the backward pass recomputes the corners and accumulates the table's gradient into one buffer per
thread. The shared library is cached under ``$THREED_CACHE`` (default ``~/.cache/threed``), keyed by
the source and the flags, and written atomically. Without a C compiler the PyTorch path runs instead
(one warning). The kernel gives the table's gradient only; gradients with respect to the points (the
``autograd`` normals) take the PyTorch path.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("hashgrid_cpu.c")
# -ffp-contract=off: no fused multiply-adds, so the kernel rounds as PyTorch's separate ops do.
FLAGS = ("-O3", "-fPIC", "-shared", "-pthread", "-ffp-contract=off")
# Below this many points, one thread: starting threads and summing their buffers costs more than it saves.
MIN_POINTS_PER_THREAD = 8192


def cache_dir() -> Path:
    return Path(os.environ.get("THREED_CACHE") or Path.home() / ".cache" / "threed")


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled kernel, or None (logged once) when no C compiler can build it."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + os.uname().machine.encode()).hexdigest()[:16]
    library = cache_dir() / f"hashgrid_cpu-{key}.so"
    if not library.exists():
        if compiler is None:
            log.warning("hash grid: no C compiler (set CC) to build the fused CPU kernel; using the slower PyTorch path")
            return None
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
            built = Path(scratch) / library.name
            error = compile_library(compiler, built)
            if error:
                log.warning("hash grid: building the fused CPU kernel with %s failed; using the slower PyTorch path:\n%s",
                            compiler, error)
                return None
            os.replace(built, library)
    return declare(ctypes.CDLL(str(library)))


def compile_library(compiler: str, output: Path) -> str:
    """Builds the kernel into ``output``; returns the compiler's complaint, empty on success."""
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", str(output), str(SOURCE), "-lm"], capture_output=True, text=True)
    except OSError as error:
        return str(error)
    return result.stderr[-2000:] if result.returncode != 0 else ""


def declare(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    levels = [pointer, pointer, pointer, pointer, i32, i32, i32]
    library.hashgrid_forward.argtypes = [pointer, i64, pointer, pointer, *levels, i32]
    library.hashgrid_backward.argtypes = [pointer, i64, pointer, pointer, i64, *levels, i32]
    for function in (library.hashgrid_forward, library.hashgrid_backward):
        function.restype = None
    return library


def available() -> bool:
    return kernel() is not None


class LevelTables:
    """The per-level constants the kernel reads, as contiguous CPU tensors (kept alive with the encoding)."""

    def __init__(self, scales: torch.Tensor, sizes: torch.Tensor, offsets: torch.Tensor, resolutions: torch.Tensor,
                 n_dense_levels: int):
        self.scales = scales.float().contiguous()
        self.sizes, self.offsets, self.resolutions = (t.to(torch.int32).contiguous() for t in (sizes, offsets, resolutions))
        self.n_dense_levels = n_dense_levels

    def arguments(self, n_features: int) -> list:
        tensors = (self.scales, self.sizes, self.offsets, self.resolutions)
        return [*(t.data_ptr() for t in tensors), len(self.scales), self.n_dense_levels, n_features]


def thread_count(n_points: int) -> int:
    return max(1, min(torch.get_num_threads(), n_points // MIN_POINTS_PER_THREAD))


class FusedLookup(torch.autograd.Function):
    """table [rows, F] float32, points [N, 3] float32 in [0, 1] -> features [N, L * F]; gradient to the table."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, points: torch.Tensor, levels: LevelTables) -> torch.Tensor:
        points, table = points.contiguous(), table.contiguous()
        n_features = table.shape[1]
        features = torch.empty(points.shape[0], len(levels.scales) * n_features)
        kernel().hashgrid_forward(points.data_ptr(), points.shape[0], table.data_ptr(), features.data_ptr(),
                                  *levels.arguments(n_features), thread_count(points.shape[0]))
        ctx.save_for_backward(points)
        ctx.levels, ctx.table_shape = levels, table.shape
        return features

    @staticmethod
    def backward(ctx, grad_features: torch.Tensor):
        (points,) = ctx.saved_tensors
        n_rows, n_features = ctx.table_shape
        threads = thread_count(points.shape[0])
        grad_tables = torch.zeros(threads, n_rows, n_features)
        grad_features = grad_features.float().contiguous()
        kernel().hashgrid_backward(points.data_ptr(), points.shape[0], grad_features.data_ptr(), grad_tables.data_ptr(),
                                   n_rows, *ctx.levels.arguments(n_features), threads)
        return grad_tables.sum(0) if threads > 1 else grad_tables[0], None, None
