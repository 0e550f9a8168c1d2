"""Side-by-side comparison of estimators and divergences on one prompt over several seeds.

Every method x seed cell is a run folder (``threed.cells``), so a second call skips the finished cells
and resumes an interrupted one from its checkpoint; the cells run one after another, or as Ray tasks
(``threed.runner``). Then: a turntable grid video and a grid image (rows: methods,
columns: seeds, each cell labelled) and a table (Markdown and CSV) with each method's wall time,
the numbers of a registered evaluator that knows the prompt (ShapeWorld's, for its canon), and the diversity across seeds
(mean pairwise Chamfer distance between the seeds' meshes).
"""
from __future__ import annotations

import csv
import itertools
import logging
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import trimesh
from PIL import Image, ImageDraw
from scipy.spatial import cKDTree

from threed.cells import Cell, Method, plan_cells
from threed.evaluation import evaluator_for
from threed.export import load_mesh
from threed.mesh_metrics import chamfer, surface_samples
from threed.paired_statistics import paired_comparison
from threed.runner import CellRunner
from threed.video import write_mp4

log = logging.getLogger(__name__)


def compare(config_path: str, overrides: list[str], methods: list[Method], seeds: list[int],
            runner: CellRunner = CellRunner(), stages: list[str] = ()) -> Path:
    """Runs the missing cells (through ``runner``), each followed by the mesh ``stages`` (config files), then
    writes the grids and tables of the final runs; returns the comparison folder."""
    base, root, cells = plan_cells(config_path, overrides, methods, seeds, stages)
    log.info("comparison folder: %s", root)
    runner.run(cells)
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
    videos = {(c.method, c.seed): imageio.mimread(c.final.paths.video, memtest=False) for c in cells}
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
    rows, runs = [], []  # a row per method; the evaluator's numbers of each run, for the paired statistics
    for method in methods:
        mine = [c for c in cells if c.method == method]
        meshes = [load_mesh(c.mesh) for c in mine]
        row = {"method": method.label, "seeds": len(mine),
               "wall_time_s": np.mean([c.wall_time_s for c in mine])}
        if evaluator is not None:
            scores = [evaluator.score(mesh) for mesh in meshes]
            row.update({key: float(np.mean([s[key] for s in scores])) for key in ("chamfer", "iou", "color_error")})
            runs += [{"method": method.label, "prompt": prompt, "seed": cell.seed, **score} for cell, score in zip(mine, scores)]
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
    if len(methods) > 1 and runs:
        lines += paired_comparison(runs, [method.label for method in methods])
    (root / "table.md").write_text(caption + "\n\n" + "\n".join(lines) + "\n")
