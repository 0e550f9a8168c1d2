"""A run's one owner: its folder, config and device; loading its teacher, training it (from scratch or
from its last checkpoint), and what a finished run leaves behind (its turntable video, its meshes and,
where an evaluator knows the prompt, their scores). ``launch.py``, the demo, the comparison and the
tools all go through it.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Callable

import torch

from guidance.teacher import DiffusionTeacher
from threed import distributed
from threed.checkpoint import latest_checkpoint
from threed.config import Config, flat_config, load_config, override, save_config
from threed.device import default_device
from threed.errors import ConfigError, RunDirError
from threed.evaluation import evaluator_for
from threed.export import TEXTURED_FORMATS, load_mesh, save_mesh, with_texture
from threed.files import write_json
from threed.representation import Representation
from threed.run_folder import RunPaths, create_run_folder, existing_run_folder
from threed.trainer import Trainer, build_representation, trained_representation
from threed.video import save_turntable_video

log = logging.getLogger(__name__)


def stage_overrides(source_root: Path, source: Config) -> list[str]:
    """What a mesh stage takes from the finished run it starts from (its folder ``source_root``, its config
    ``source``): the folder itself, the prompt and the seed."""
    return [override("mesh.start_from", str(source_root)), override("prompt", source.prompt), f"seed={source.seed}"]


def with_source_field(config: Config, source: Config) -> Config:
    """A mesh stage's config with its source run's field settings: its colour field is the source's field."""
    return dataclasses.replace(config, geometry=source.geometry)


class Run:
    def __init__(self, config: Config, paths: RunPaths, device: torch.device | None = None, changed: list[str] = ()):
        self.config, self.paths = config, paths
        self.device = device or default_device()
        self.changed = list(changed)  # "key: saved -> now" for each key an override changed on an existing run

    @classmethod
    def start(cls, config: Config, root: Path | None = None) -> tuple["Run", DiffusionTeacher]:
        """A new run of ``config`` and its loaded teacher. The teacher loads first, so a missing one leaves no
        empty run folder behind; the folder is a new timestamped one under ``config.outputs``, or ``root``
        (made if missing: the comparison names its cells' folders). The config is saved in it."""
        device = default_device()
        if config.representation != "nerf":
            config = with_source_field(config, load_config(existing_run_folder(config.mesh.start_from).config))
        teacher = DiffusionTeacher.from_pretrained(config.teacher, device)
        try:
            teacher.canonical_prompt(config.prompt)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        ranks = distributed.current()  # under torchrun, rank 0 makes the folder and the others join it
        if ranks.is_main:
            paths = create_run_folder(config.outputs, config.name, config.prompt) if root is None else RunPaths(Path(root))
            paths.root.mkdir(parents=True, exist_ok=True)
            save_config(config, paths.config)
            root = paths.root
        return cls(config, RunPaths(Path(ranks.from_main(root))), device), teacher

    @classmethod
    def open(cls, run_dir: str | Path, overrides: list[str] = ()) -> "Run":
        """An existing run folder, its saved config with ``overrides`` applied."""
        paths = existing_run_folder(run_dir)
        config = load_config(paths.config, overrides)
        saved, now = flat_config(load_config(paths.config)), flat_config(config)
        changed = [f"{key}: {saved[key]!r} -> {now[key]!r}" for key in saved if saved[key] != now[key]]
        return cls(config, paths, changed=changed)

    def load_teacher(self) -> DiffusionTeacher:
        return DiffusionTeacher.from_pretrained(self.config.teacher, self.device)

    def trainer(self, teacher: DiffusionTeacher, resume: bool = False) -> Trainer:
        """The run's trainer, at its latest checkpoint with ``resume``."""
        trainer = Trainer(self.config, self.paths, teacher)
        if resume:
            try:
                trainer.resume()
            except (RuntimeError, KeyError, ValueError) as error:  # load_state_dict: shapes or keys differ
                if not self.changed:
                    raise
                raise ConfigError(f"{self.paths.root}'s checkpoint cannot take what the overrides changed "
                                  f"({'; '.join(self.changed)}): resume without them, or --train a new run "
                                  f"({str(error).splitlines()[0][:120]})") from None
        return trainer

    def train(self, teacher: DiffusionTeacher, resume: bool = False,
              stop_requested: Callable[[], bool] = lambda: False,
              on_log: Callable[[dict, Trainer], None] = lambda record, trainer: None,
              formats: list[str] | None = None) -> Trainer:
        """Trains (from the latest checkpoint with ``resume``) until ``trainer.max_steps`` or ``stop_requested()``,
        then writes the video and the meshes (``formats``, default ``export.formats``) of the trainer's output;
        ``on_log`` gets each metrics record and the trainer. Returns the finished trainer."""
        trainer = self.trainer(teacher, resume)
        trainer.fit(stop_requested, lambda record: on_log(record, trainer))
        if trainer.ranks.is_main:
            self.export(trainer.output_representation().eval(), formats or self.config.export.formats)
        trainer.ranks.barrier()  # a next stage on every rank starts from what rank 0 wrote
        return trainer

    def trained_representation(self) -> Representation:
        """The representation of the run's latest checkpoint (no teacher is loaded), with the moving average of
        its parameters where ``trainer.ema_decay`` asks for one, as the run's own outputs show it."""
        return trained_representation(self.config, self.paths, self.device)

    def discard_if_unstarted(self) -> None:
        """Removes the run folder if no checkpoint was ever written to it: a start that failed leaves nothing behind."""
        if latest_checkpoint(self.paths.checkpoints) is None and distributed.current().is_main:
            shutil.rmtree(self.paths.root, ignore_errors=True)
            log.info("removed %s: the run stopped before its first checkpoint", self.paths.root)

    def export(self, representation: Representation, formats: list[str]) -> None:
        """The turntable video and the meshes (in ``formats``) of ``representation``."""
        self.write_video(representation)
        self.write_meshes(representation, formats)

    def write_video(self, representation: Representation) -> None:
        save_turntable_video(representation, self.config.video, self.paths.video)
        log.info("turntable video: %s", self.paths.video)

    def write_meshes(self, representation: Representation, formats: list[str]) -> None:
        """The meshes and, where a registered evaluator knows the prompt, its score of them (``mesh/<name>_score.json``)."""
        spec = self.config.export
        mesh = representation.extract_mesh(spec)
        textured = with_texture(mesh, representation.albedo, spec, self.device) if TEXTURED_FORMATS & set(formats) else None
        for file_format in formats:
            save_mesh(textured if file_format in TEXTURED_FORMATS else mesh, self.paths.mesh(file_format))
            log.info("mesh (%d vertices): %s", len(mesh.vertices), self.paths.mesh(file_format))
        evaluator = evaluator_for(self.config.prompt)
        if evaluator is not None:
            # Scored as a viewer shows it: the GLB's texture where one was written.
            score = evaluator.score(load_mesh(self.paths.mesh("glb")) if "glb" in formats else mesh)
            try:
                initial = evaluator.score(self.initial_representation().extract_mesh(self.config.export))
            except RunDirError as error:  # a mesh stage whose source run is gone: no start to compare with
                log.warning("no shape gain: the run's start cannot be rebuilt (%s)", error)
            else:
                score["initial"] = {key: value for key, value in initial.items() if isinstance(value, float)}
                score["shape_gain"] = 1.0 - score["chamfer"] / initial["chamfer"]
            write_json(self.paths.score(evaluator.name), score)
            log.info("%s evaluator: %s (%s)", evaluator.name, evaluator.summary(score), self.paths.score(evaluator.name))

    def initial_representation(self) -> Representation:
        """The representation as the run's training starts it (step 0), built as the trainer builds it: what
        the shape gain measures the final mesh against. The global random state is left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return build_representation(self.config, self.device).eval()
