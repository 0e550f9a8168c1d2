"""The one device choice of every command: CUDA when PyTorch sees a GPU, else the CPU (same code path);
and the CPU's precision for the U-Nets."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tile units (Linux reports them as the ``amx_bf16`` flag)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def cpu_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the CPU for ``precision`` bf16, or auto on a CPU with AMX (there bf16 matrix products
    run about twice as fast; without AMX they run slower than fp32); no change otherwise, and never on CUDA,
    whose networks are cast to ``teacher.precision`` instead."""
    use_bf16 = device.type == "cpu" and (precision == "bf16" or (precision == "auto" and cpu_has_amx()))
    return torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
