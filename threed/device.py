"""The one device choice of every command: CUDA when PyTorch sees a GPU, else the CPU (same code path)."""
from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
