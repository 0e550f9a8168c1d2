"""Checkpoints: written atomically, found by step, pruned to the last few."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from threed.errors import RunDirError
from threed.files import save_torch

log = logging.getLogger(__name__)
PATTERN = "step{:07d}.pt"


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / PATTERN.format(step)


def save_checkpoint(state: dict, folder: Path, step: int) -> None:
    save_torch(state, checkpoint_path(folder, step))


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (files being written have a hidden temporary name)."""
    return sorted(folder.glob("step*.pt"))


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink()


def load_checkpoint(path: Path, device: torch.device) -> dict:
    return upgraded(torch.load(path, map_location=device, weights_only=True))


def load_latest_checkpoint(folder: Path, device: torch.device) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, and its state; a damaged one (truncated, say, by a full disk or a
    copy cut short) is passed over with a warning that names it. None when the folder has none at all."""
    found = list_checkpoints(folder)
    for path in reversed(found):
        try:
            return path, load_checkpoint(path, device)
        except Exception as error:  # torch.load's errors for a damaged file vary: zip, pickle, EOF
            log.warning("checkpoint %s is damaged and was passed over (%s)", path, str(error).splitlines()[0])
    if found:
        raise RunDirError(f"no checkpoint in {folder} can be read ({len(found)} damaged); start the run again with --train")
    return None


def upgraded(state: dict) -> dict:
    """A checkpoint of the layout before representations (2026-12-05: "field" and "background" at the top)
    in today's layout ("representation"); its moving average, of the field alone, cannot be carried over
    and starts afresh."""
    if "representation" in state:
        return state
    parts = {"field": state.pop("field"), "background": state.pop("background")}
    state["representation"] = {f"{part}.{key}": value for part, values in parts.items() for key, value in values.items()}
    if state.get("ema"):
        log.warning("this checkpoint's moving average (trainer.ema_decay) predates representations: it starts afresh")
        state["ema"] = None
    return state
