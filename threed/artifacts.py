"""What a finished run leaves behind: its trained field, turntable video and meshes."""
from __future__ import annotations

import json
import logging
from typing import Callable

import torch

from guidance.teacher import DiffusionTeacher
from nerf.field import RadianceField
from threed.checkpoint import latest_checkpoint, load_checkpoint
from threed.config import Config
from threed.errors import RunDirError
from threed.export import extract_mesh, save_mesh
from threed.runs import RunPaths
from threed.shapeworld import evaluate_mesh, is_canon_prompt
from threed.trainer import Trainer, make_ema, with_averaged_parameters
from threed.video import save_turntable_video

log = logging.getLogger(__name__)


def load_trained_field(config: Config, paths: RunPaths, device: torch.device) -> RadianceField:
    """The field of the run's latest checkpoint (no teacher is loaded): its moving average where
    ``trainer.ema_decay`` asks for one, as the run's own outputs show it."""
    found = latest_checkpoint(paths.checkpoints)
    if found is None:
        raise RunDirError(f"{paths.root} has no checkpoint yet; train it first (--resume {paths.root})")
    state = load_checkpoint(found, device)
    field = RadianceField(config.geometry).to(device)
    field.load_state_dict(state["field"])
    ema = make_ema(field, config.trainer)
    if ema and state.get("ema"):
        ema.load_state_dict(state["ema"])
    return with_averaged_parameters(field, ema).eval()


def write_video(field: RadianceField, config: Config, paths: RunPaths) -> None:
    save_turntable_video(field, config.render, config.background.color, config.video, paths.video)
    log.info("turntable video: %s", paths.video)


def write_meshes(field: RadianceField, config: Config, paths: RunPaths, formats: list[str]) -> None:
    """The meshes, and for a ShapeWorld prompt the evaluator's score of them (``mesh/shapeworld_score.json``)."""
    mesh = extract_mesh(field, config.export)
    for file_format in formats:
        save_mesh(mesh, paths.mesh(file_format))
        log.info("mesh (%d vertices): %s", len(mesh.vertices), paths.mesh(file_format))
    if is_canon_prompt(config.prompt):
        score = evaluate_mesh(mesh, config.prompt)
        paths.shapeworld_score.write_text(json.dumps(score) + "\n")
        log.info("ShapeWorld evaluator: Chamfer %.4f, IoU %.3f, colour error %.4f (%s)",
                 score["chamfer"], score["iou"], score["color_error"], paths.shapeworld_score)


def train_and_export(config: Config, paths: RunPaths, teacher: DiffusionTeacher, resume: bool = False,
                     stop_requested: Callable[[], bool] = lambda: False,
                     on_log: Callable[[dict], None] = lambda record: None) -> Trainer:
    """Trains (from the run's last checkpoint with ``resume``), then writes the video and the meshes;
    returns the finished trainer. ``stop_requested`` and ``on_log`` are passed to ``Trainer.fit``."""
    trainer = Trainer(config, paths, teacher)
    if resume:
        trainer.resume()
    trainer.fit(stop_requested, on_log)
    export_outputs(trainer, config, paths, config.export.formats)
    return trainer


def export_outputs(trainer: Trainer, config: Config, paths: RunPaths, formats: list[str]) -> None:
    """The turntable video and the meshes (in ``formats``) of the trainer's output field."""
    field = trainer.output_field().eval()
    write_video(field, config, paths)
    write_meshes(field, config, paths, formats)
