"""Side-by-side comparison of estimators and divergences on one prompt over several seeds.

Every method x seed cell is a run folder under ``<outputs>/compare/<config name>/<prompt slug>/``,
named by method and seed (no timestamp), so a second call skips the finished cells and resumes an
interrupted one from its checkpoint. Then: a turntable grid video and a grid image (rows: methods,
columns: seeds, each cell labelled) and a table (Markdown and CSV) with each method's wall time,
the numbers of a registered evaluator that knows the prompt (ShapeWorld's, for its canon), and the diversity across seeds
(mean pairwise Chamfer distance between the seeds' meshes).
"""
from __future__ import annotations

import csv
import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import trimesh
from PIL import Image, ImageDraw
from scipy.spatial import cKDTree

from guidance.divergences import DIVERGENCES
from guidance.registry import ESTIMATORS
from threed.config import Config, flat_config, load_config
from threed.errors import ConfigError
from threed.evaluation import evaluator_for
from threed.files import write_json
from threed.mesh_metrics import chamfer, surface_samples
from threed.run import Run
from threed.run_folder import RunPaths, prompt_slug
from threed.video import write_mp4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    estimator: str
    divergence: str = ""  # for the estimators that use one (uni-instruct, f-distill)

    @property
    def label(self) -> str:
        return f"{self.estimator}:{self.divergence}" if self.divergence else self.estimator

    def overrides(self, base: Config) -> list[str]:
        """Config overrides that run this method on ``base``. The method ``base`` ends on keeps its
        schedule (a warm start through ``guidance.switch``); any other runs alone from the first step."""
        final_step = base.trainer.max_steps
        is_base_method = self.estimator == base.guidance.estimator_at(final_step) and (
            not ESTIMATORS[self.estimator].uses_divergence or self.divergence == base.guidance.divergence_at(final_step))
        if is_base_method:
            return []
        divergence = [f"guidance.divergence={self.divergence}"] if self.divergence else []
        return [f"guidance.estimator={self.estimator}", *divergence, "guidance.switch.step=-1"]


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

    @property
    def record(self) -> Path:
        return self.paths.root / "cell.json"

    def finished(self) -> bool:
        return self.record.is_file()

    def _recorded(self) -> dict:
        return json.loads(self.record.read_text())

    @property
    def wall_time_s(self) -> float:
        return self._recorded()["wall_time_s"]

    @property
    def threads(self) -> int | None:
        """The CPU threads the cell trained with (None in records from before 2026-12-02)."""
        return self._recorded().get("threads")

    @property
    def mesh(self) -> Path:
        return self.paths.mesh(self.config.export.formats[0])


def run_cell(cell: Cell) -> None:
    """Trains one cell (resuming a partial one) and records its wall time: this call's, plus the
    training time of the interrupted calls before it up to the checkpoint it resumed from, and the
    CPU threads it ran with (wall times of 1- and 2-thread runs are not comparable)."""
    resume = cell.paths.config.is_file()
    started = time.perf_counter()
    run, teacher = Run.start(cell.config, root=cell.paths.root)  # a teacher per cell: LoRA may share its U-Net
    trainer = run.train(teacher, resume=resume)
    write_json(cell.record, {"method": cell.method.label, "seed": cell.seed,
                             "wall_time_s": time.perf_counter() - started + trainer.earlier_sessions_s,
                             "threads": torch.get_num_threads()})


def plan_cells(config_path: str, overrides: list[str], methods: list[Method], seeds: list[int]) -> tuple[Config, Path, list[Cell]]:
    """The base config, the comparison folder of its prompt and one cell per method and seed."""
    base = load_config(config_path, overrides)
    root = Path(base.outputs) / "compare" / base.name / prompt_slug(base.prompt)
    cells = [Cell(m, s, RunPaths(root / m.label.replace(":", "-") / f"seed{s}"),
                  load_config(config_path, [*overrides, *m.overrides(base), f"seed={s}"]))
             for m, s in itertools.product(methods, seeds)]
    for cell in cells:
        refuse_stale_cell(cell)
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


def run_missing_cells(cells: list[Cell]) -> None:
    """Trains the cells without a record, resuming a partial one; finished cells are skipped."""
    for cell in cells:
        if cell.finished():
            log.info("%s seed %d: finished, skipped", cell.method.label, cell.seed)
            continue
        log.info("%s seed %d: training", cell.method.label, cell.seed)
        run_cell(cell)


def compare(config_path: str, overrides: list[str], methods: list[Method], seeds: list[int]) -> Path:
    """Runs the missing cells, then writes the grids and tables; returns the comparison folder."""
    base, root, cells = plan_cells(config_path, overrides, methods, seeds)
    log.info("comparison folder: %s", root)
    run_missing_cells(cells)
    write_grids(cells, methods, seeds, root)
    write_tables(cells, methods, base.prompt, root)
    return root


def text_tile(text: str, width: int, height: int) -> np.ndarray:
    """A white [height, width, 3] uint8 tile with ``text`` at its left, centred vertically."""
    tile = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(tile).text((3, max(0, height // 2 - 6)), text, fill="black")
    return np.asarray(tile)


def write_grids(cells: list[Cell], methods: list[Method], seeds: list[int], root: Path) -> None:
    """grid.mp4 and grid.png (its first frame): a header row of seeds, a header column of methods."""
    videos = {(c.method, c.seed): imageio.mimread(c.paths.video, memtest=False) for c in cells}
    frames = min(len(v) for v in videos.values())
    height, width = np.asarray(videos[(methods[0], seeds[0])][0]).shape[:2]
    label_width = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(m.label)) for m in methods) + 8
    header = np.concatenate([text_tile("", label_width, 16)] + [text_tile(f"seed {s}", width, 16) for s in seeds], axis=1)

    def grid(index: int) -> np.ndarray:
        rows = [np.concatenate([text_tile(m.label.replace(":", " "), label_width, height)]
                               + [np.asarray(videos[(m, s)][index])[..., :3] for s in seeds], axis=1) for m in methods]
        return np.concatenate([header, *rows], axis=0)

    imageio.imwrite(root / "grid.png", grid(0))
    write_mp4(root / "grid.mp4", [grid(i) for i in range(frames)], fps=24)


def diversity(meshes: list[trimesh.Trimesh]) -> float | None:
    """Mean pairwise Chamfer distance between the seeds' meshes (None for a single seed)."""
    samples = [surface_samples(mesh, 5000, seed=0)[0] for mesh in meshes]
    pairs = list(itertools.combinations(samples, 2))
    if not pairs:
        return None
    return float(np.mean([chamfer(a, b, cKDTree(b)) for a, b in pairs]))


def write_tables(cells: list[Cell], methods: list[Method], prompt: str, root: Path) -> None:
    evaluator = evaluator_for(prompt)
    rows = []
    for method in methods:
        mine = [c for c in cells if c.method == method]
        meshes = [trimesh.load(c.mesh, force="mesh") for c in mine]
        row = {"method": method.label, "seeds": len(mine),
               "wall_time_s": np.mean([c.wall_time_s for c in mine])}
        if evaluator is not None:
            scores = [evaluator.score(mesh) for mesh in meshes]
            row.update({key: float(np.mean([s[key] for s in scores])) for key in ("chamfer", "iou", "color_error")})
        row["diversity"] = diversity(meshes)
        rows.append(row)
    columns = list(rows[0])
    with open(root / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell_text(value) -> str:
        return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell_text(row[c]) for c in columns) + " |" for row in rows]
    caption = (f"Prompt: {prompt}. Wall time and the evaluator's numbers are means over the seeds; diversity is "
               "the mean pairwise Chamfer distance between the seeds' meshes.")
    (root / "table.md").write_text(caption + "\n\n" + "\n".join(lines) + "\n")
