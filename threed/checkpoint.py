"""Checkpoints: written atomically, found by step, pruned to the last few."""
from __future__ import annotations

import os
from pathlib import Path

import torch

PATTERN = "step{:07d}.pt"


def save_atomic(state: dict, path: Path) -> None:
    """Writes ``state`` so that ``path`` is always either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / PATTERN.format(step)


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return sorted(folder.glob("step*.pt"))


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink()


def load_checkpoint(path: Path, device: torch.device) -> dict:
    return torch.load(path, map_location=device, weights_only=True)
