"""Cells: one run per method and seed of a prompt, in a folder named by them (no timestamp), under
``<outputs>/compare/<config name>/<prompt slug>/<method>/seed<S>/``, and its mesh stages, if any, each
started from the run before it, beside it in ``seed<S>.<stage config name>/``. A run is finished once its
record (cell.json: wall time, threads) exists; an unfinished one resumes from its checkpoint; one made
with another config is refused. The comparison, the quality table and the batch runs share these cells.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from guidance.divergences import DIVERGENCES
from guidance.registry import ESTIMATORS
from threed.config import Config, flat_config, load_config
from threed.errors import ConfigError
from threed.files import write_json
from threed.run import Run, stage_overrides, with_source_field
from threed.run_folder import RunPaths, prompt_slug


@dataclass(frozen=True)
class Method:
    estimator: str
    divergence: str = ""  # for the estimators that use one (uni-instruct, f-distill)

    @property
    def label(self) -> str:
        return f"{self.estimator}:{self.divergence}" if self.divergence else self.estimator

    @classmethod
    def of(cls, config: Config) -> "Method":
        """The method a config ends on (after any ``guidance.switch``)."""
        final_step = config.trainer.max_steps
        estimator = config.guidance.estimator_at(final_step)
        divergence = config.guidance.divergence_at(final_step) if ESTIMATORS[estimator].uses_divergence else ""
        return cls(estimator, divergence)

    def overrides(self, base: Config) -> list[str]:
        """Config overrides that run this method on ``base``. Every divergence of the estimator ``base`` ends
        on keeps its schedule (a warm start through ``guidance.switch``), only the final divergence
        replaced, so that divergences are compared from the same start; any other estimator runs alone
        from the first step."""
        guidance = base.guidance
        if self.estimator != guidance.estimator_at(base.trainer.max_steps):
            divergence = [f"guidance.divergence={self.divergence}"] if self.divergence else []
            return [f"guidance.estimator={self.estimator}", *divergence, "guidance.switch.step=-1"]
        if not self.divergence or self.divergence == guidance.divergence_at(base.trainer.max_steps):
            return []
        switched = guidance.switch.step >= 0 and guidance.switch.divergence
        return [f"guidance.{'switch.divergence' if switched else 'divergence'}={self.divergence}"]


def parse_methods(text: str) -> list[Method]:
    """"uni-instruct:fkl,vsd,sds" -> methods; a divergence is required exactly where the estimator uses one."""
    methods = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        estimator, _, divergence = item.partition(":")
        if estimator not in ESTIMATORS:
            raise ConfigError(f"--methods: unknown estimator {estimator!r}; use one of {list(ESTIMATORS)}")
        uses_divergence = ESTIMATORS[estimator].uses_divergence
        if uses_divergence and divergence not in DIVERGENCES:
            raise ConfigError(f"--methods: {estimator} needs a divergence, e.g. {estimator}:fkl; one of {list(DIVERGENCES)}")
        if not uses_divergence and divergence:
            raise ConfigError(f"--methods: {estimator} takes no divergence (got {item!r})")
        methods.append(Method(estimator, divergence))
    if not methods:
        raise ConfigError("--methods is empty; e.g. --methods uni-instruct:fkl,vsd,sds")
    return methods


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not seeds:
        raise ConfigError("--seeds is empty; e.g. --seeds 0,1,2")
    return seeds


@dataclass
class Cell:
    method: Method
    seed: int
    paths: RunPaths
    config: Config
    stages: list["Cell"] = field(default_factory=list)  # the mesh stages after this run, in order

    @property
    def record(self) -> Path:
        return self.paths.root / "cell.json"

    @property
    def final(self) -> "Cell":
        """The run whose mesh and video the cell shows: its last stage's, or its own."""
        return self.stages[-1] if self.stages else self

    def finished(self) -> bool:
        return all(run.record.is_file() for run in (self, *self.stages))

    def _recorded(self) -> dict:
        return json.loads(self.record.read_text())

    @property
    def wall_time_s(self) -> float:
        """The run's wall time and its stages'."""
        return sum(run._recorded()["wall_time_s"] for run in (self, *self.stages))

    @property
    def threads(self) -> int | None:
        """The CPU threads the cell trained with (None in records from before 2026-12-02)."""
        return self._recorded().get("threads")

    @property
    def mesh(self) -> Path:
        """The final run's mesh (its first export format)."""
        return self.final.paths.mesh(self.final.config.export.formats[0])


def run_cell(cell: Cell) -> None:
    """Trains one cell's unfinished runs (resuming a partial one), its stages after it, and records each
    run's wall time: this call's, plus the training time of the interrupted calls before it up to the
    checkpoint it resumed from, and the CPU threads it ran with (wall times of 1- and 2-thread runs are
    not comparable)."""
    for run_of_cell in (cell, *cell.stages):
        if run_of_cell.record.is_file():
            continue
        resume = run_of_cell.paths.config.is_file()
        started = time.perf_counter()
        run, teacher = Run.start(run_of_cell.config, root=run_of_cell.paths.root)  # a teacher per run: LoRA may share its U-Net
        trainer = run.train(teacher, resume=resume)
        write_json(run_of_cell.record, {"method": cell.method.label, "seed": cell.seed,
                                        "wall_time_s": time.perf_counter() - started + trainer.earlier_sessions_s,
                                        "threads": torch.get_num_threads()})


def plan_cells(config_path: str, overrides: list[str], methods: list[Method], seeds: list[int],
               stages: list[str] = ()) -> tuple[Config, Path, list[Cell]]:
    """The base config, the comparison folder of its prompt and one cell per method and seed, each with the
    mesh ``stages`` (config files) after it, the method's overrides applied to each stage's own schedule."""
    base = load_config(config_path, overrides)
    root = Path(base.outputs) / "compare" / base.name / prompt_slug(base.prompt)
    cells = []
    for method, seed in itertools.product(methods, seeds):
        folder = root / method.label.replace(":", "-")
        cell = Cell(method, seed, RunPaths(folder / f"seed{seed}"),
                    load_config(config_path, [*overrides, *method.overrides(base), f"seed={seed}"]))
        source = cell
        for stage in stages:
            carried = [*overrides, *stage_overrides(source.paths.root, source.config)]
            stage_config = load_config(stage, carried)
            planned = with_source_field(load_config(stage, [*carried, *method.overrides(stage_config)]), source.config)
            source = Cell(method, seed, RunPaths(folder / f"seed{seed}.{stage_config.name}"), planned)
            cell.stages.append(source)
        cells.append(cell)
    for run in (run for cell in cells for run in (cell, *cell.stages)):
        refuse_stale_cell(run)
    return base, root, cells


def refuse_stale_cell(cell: Cell) -> None:
    """A cell folder made with another config is neither reused nor resumed: its numbers would not be
    this config's."""
    if not cell.paths.config.is_file():
        return
    saved, planned = (flat_config(c) for c in (load_config(cell.paths.config), cell.config))
    changed = [f"{key}: {saved.get(key)!r} -> {planned.get(key)!r}"
               for key in sorted(saved.keys() | planned.keys()) if saved.get(key) != planned.get(key)]
    if changed:
        raise ConfigError(f"{cell.paths.root} was run with another config ({'; '.join(changed[:5])}). Delete that "
                          f"folder to run the cell again with this config, or compare under a new outputs= folder")
